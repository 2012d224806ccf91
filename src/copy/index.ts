// The copy room: endpoints (NBD, file, null) and the engine that moves extents between them.
export type { CopyExtent, Endpoint, EndpointReadResult } from './endpoint.js';
export { NbdEndpoint, type NbdEndpointOptions } from './nbd-endpoint.js';
export { FileEndpoint, type FileEndpointOptions } from './file-endpoint.js';
export { NullEndpoint } from './null-endpoint.js';
export { copyExtents, dataExtents, isNoSpace, wholeDisk, DEFAULT_INFLIGHT, DEFAULT_REQUEST_SIZE, type CopyOptions, type CopyProgress } from './copy-extents.js';
export { ProgressMeter, type ProgressFigures } from './progress.js';
