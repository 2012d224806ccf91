// The copy room: endpoints (NBD, image files through qemu-nbd, raw file, null), wrappers, and the engine that moves extents between them.
export type { CopyExtent, Endpoint, EndpointReadResult } from './endpoint.js';
export { NbdEndpoint, type NbdEndpointOptions } from './nbd-endpoint.js';
export { FileEndpoint, type FileEndpointOptions } from './file-endpoint.js';
export { NullEndpoint } from './null-endpoint.js';
export { copyExtents, dataExtents, isNoSpace, wholeDisk, DEFAULT_INFLIGHT, DEFAULT_REQUEST_SIZE, type CopyOptions, type CopyProgress } from './copy-extents.js';
export { ProgressMeter, type ProgressFigures } from './progress.js';
export { serveImage, qemuNbdFiles, type ServeOptions, type ServedImage } from './qemu-nbd.js';
export { openImageEndpoint, prepareImageFile, type ImageEndpoint, type ImageEndpointOptions, type ImageFormat } from './image-file.js';
export { flushingEndpoint } from './flushing-endpoint.js';
export { withWrite } from './with-write.js';
export { digestingEndpoint, type ByteDigest } from './digesting-endpoint.js';
