// ext2/3/4, read without mounting: see filesystem.ts.
export { ChunkRing, ExtFilesystem, ROOT_INO, type BlockOwner, type ExtOpenOptions, type Ownership, type WalkEntry } from './filesystem.js';
export type { DirEntry } from './dir.js';
export type { Inode } from './inode.js';
export { fileType } from './inode.js';
export type { InodeMap, MappedRun } from './blockmap.js';
export type { Superblock } from './superblock.js';
export { OwnerIndex, OwnerIndexTooLarge } from './owner-index.js';
export { DIGEST_GRANULE, GranuleDigestSession, wholeGranules, type GranuleDigests } from './granule-digests.js';
