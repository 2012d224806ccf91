// The snapshot room: point-in-time views of a domain's disks (freeze, one transaction, fleecing,
// thaw), their exports, QEMU's NBD server, and the registry of live snapshots. Backups, pass
// exports, syncs and scans take their views here.
export { Snapshot, cleanupDeadSnapshots, type ExportRequest, type RemoteExportRequest, type OpenOptions, type SnapshotContext, type SnapshotHost, type TakeOptions, type TakeResult, type UnixExport } from './snapshot.js';
export { SnapshotRegistry, type SnapshotRecord } from './registry.js';
export { presetMarker, rotateFrozen, type FreezeMarker, type FreezeOptions, type FreezeOutcome, type Rotate } from './freeze.js';
export {
  Fleece, FLEECE_PREFIX, PASS_MAP_PREFIX, cleanupStaleFleeces, domainFleeceDir, fleeceNodeName, fleeceTags, teardownTag,
  type ExportOptions, type FleeceDisk, type FleeceExport, type FleeceOptions,
} from './fleece.js';
export { buildExtentBitmap, passMapNodeName, type ExtentBitmapSpec } from './extent-bitmap.js';
export { ensureNbdServer, releaseNbdServer, addReadOnlyExport, removeExport, nbdUnixUri, type ExportSpec } from './nbd-server.js';
export { holdStorageDaemon } from './held-images.js';
export { killStaleRemoteExport, remoteExportSettings, startRemoteExport, sweepStaleRemoteExports, type RemoteExport, type RemoteExportEnd, type RemoteExportOptions } from './remote-export.js';
