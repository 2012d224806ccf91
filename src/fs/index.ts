// The filesystem room: partition tables and ext2/3/4 read through an Endpoint, never mounting anything.
export { DiskReader } from './reader.js';
export { FilesystemError, type FilesystemProblem } from './errors.js';
export { detectFilesystem, type FilesystemKind } from './detect.js';
export { readPartitions, type Partition, type PartitionTable } from './partitions.js';
export * from './ext/index.js';
export { diskUsedMap, type DiskMapOptions, type DiskRegion, type DiskUsedMap } from './disk-map.js';
