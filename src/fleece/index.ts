// The fleecing room: point-in-time read-only views of running disks (backup, sync, scan, pass exports).
export {
  Fleece, FLEECE_PREFIX, PASS_MAP_PREFIX, cleanupStaleFleeces, domainFleeceDir, fleeceNodeName, fleeceTags, teardownTag,
  type ExportOptions, type FleeceDisk, type FleeceExport, type FleeceOptions,
} from './fleece.js';
export { buildExtentBitmap, passMapNodeName, type ExtentBitmapSpec } from './extent-bitmap.js';
