// The NBD room: a client for QEMU's NBD exports (handshake, TLS, structured replies, block status, multi-conn).
export { NbdClient, decodeFlags, type ExportFlags, type ExtentRun, type NbdClientOptions, type ReadResult, type WriteOptions, type ZeroOptions } from './client.js';
export { NbdConnection, type ConnectionOptions, DEFAULT_INFLIGHT, DEFAULT_TIMEOUT_MS } from './connection.js';
export { NbdCommandError, NbdProtocolError, NbdUnsupportedError } from './errors.js';
export { RunMerger, coalesce, coalesceBatches, selectExtents, type StatusExtent } from './extents.js';
export type { BlockSize, ExportInfo, ExportListing, ServerDescription } from './handshake.js';
export {
  CONTEXT_ALLOCATION_DEPTH, CONTEXT_BASE_ALLOCATION, CONTEXT_DIRTY_BITMAP_PREFIX, NBD_ENOSPC, NBD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO,
} from './protocol.js';
export { describeAddress, formatNbdUri, parseNbdUri, NBD_DEFAULT_PORT, type NbdAddress, type NbdTarget } from './uri.js';
export { MapWriter, describeExtentType, formatMapJson, formatMapLine } from './map.js';
