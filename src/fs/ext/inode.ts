// Inodes (128/256-byte, extra fields) and their in-inode extended attributes (where inline data continues).
import { crc32cRaw } from '../crc.js';
import { damaged } from '../errors.js';

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;

export const EXT4_ENCRYPT_FL = 0x800;
export const EXT4_INDEX_FL = 0x1000;
export const EXT4_HUGE_FILE_FL = 0x40000;
export const EXT4_EXTENTS_FL = 0x80000;
export const EXT4_INLINE_DATA_FL = 0x10000000;

export interface Inode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  linksCount: number;
  /** i_blocks in 512-byte units (or filesystem blocks with huge_file's per-inode flag), as stored. */
  blocks: number;
  flags: number;
  mtime: number;
  /** When the inode itself last changed: Unix seconds, with the epoch bits and nanoseconds of i_ctime_extra where the inode has them. */
  ctime: number;
  dtime: number;
  /** The 60 bytes of i_block: extent tree root, block pointers, inline data or a fast symlink. */
  iBlock: Buffer;
  /** Extended attribute block (0 when none). */
  fileAcl: number;
  /** The inode's raw bytes (copied), for in-inode attributes. */
  raw: Buffer;
  extraIsize: number;
  generation: number;
}

export function parseInode(ino: number, b: Buffer, inodeSize: number, where: string): Inode {
  const raw = Buffer.from(b.subarray(0, inodeSize));
  const extraIsize = inodeSize > 128 ? raw.readUInt16LE(128) : 0;
  if (inodeSize > 128 && 128 + extraIsize > inodeSize) throw damaged(where, `inode ${ino}: extra size ${extraIsize} larger than the inode`);
  const flags = raw.readUInt32LE(32);
  const blocksHi = raw.readUInt16LE(116);
  return {
    ino,
    mode: raw.readUInt16LE(0),
    uid: raw.readUInt16LE(2) | (raw.readUInt16LE(120) << 16),
    gid: raw.readUInt16LE(24) | (raw.readUInt16LE(122) << 16),
    size: raw.readUInt32LE(4) + raw.readUInt32LE(108) * 2 ** 32,
    linksCount: raw.readUInt16LE(26),
    blocks: raw.readUInt32LE(28) + blocksHi * 2 ** 32,
    flags,
    mtime: raw.readUInt32LE(16),
    // i_ctime is signed; i_ctime_extra's low two bits extend it past 2038, the rest are nanoseconds.
    ctime: raw.readInt32LE(12) + (extraIsize >= 8 ? (raw.readUInt32LE(132) & 3) * 2 ** 32 + (raw.readUInt32LE(132) >>> 2) / 1e9 : 0),
    dtime: raw.readUInt32LE(20),
    iBlock: raw.subarray(40, 100),
    fileAcl: raw.readUInt32LE(104) + raw.readUInt16LE(118) * 2 ** 32,
    raw,
    extraIsize,
    generation: raw.readUInt32LE(100),
  };
}

/** The seed of an inode's own checksums (inode, extent blocks, directory blocks): crc32c over its number and generation. */
export function inodeCsumSeed(fsSeed: number, ino: number, generation: number): number {
  const le = Buffer.alloc(8);
  le.writeUInt32LE(ino, 0);
  le.writeUInt32LE(generation, 4);
  return crc32cRaw(crc32cRaw(fsSeed, le, 0, 4), le, 4, 8);
}

const ZERO2 = Buffer.alloc(2);

/**
 * metadata_csum's inode checksum (low 16 bits at 0x7c, high 16 at 0x82 when the extra fields
 * reach it), computed over the inode with both fields as zeroes, as the kernel's ext4_inode_csum.
 */
export function inodeChecksumOk(raw: Buffer, ino: number, fsSeed: number): boolean {
  const size = raw.length;
  let c = inodeCsumSeed(fsSeed, ino, raw.readUInt32LE(100));
  c = crc32cRaw(c, raw, 0, 0x7c);
  c = crc32cRaw(c, ZERO2);
  c = crc32cRaw(c, raw, 0x7e, 128);
  let hasHi = false;
  if (size > 128) {
    c = crc32cRaw(c, raw, 128, 0x82);
    hasHi = raw.readUInt16LE(128) >= 4;
    let at = 0x82;
    if (hasHi) {
      c = crc32cRaw(c, ZERO2);
      at += 2;
    }
    c = crc32cRaw(c, raw, at, size);
  }
  const stored = raw.readUInt16LE(0x7c) + (hasHi ? raw.readUInt16LE(0x82) * 65536 : 0);
  return (hasHi ? c >>> 0 : c & 0xffff) === stored;
}

export function fileType(mode: number): 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket' | 'unknown' {
  switch (mode & S_IFMT) {
    case S_IFREG: return 'file';
    case S_IFDIR: return 'dir';
    case S_IFLNK: return 'symlink';
    case 0o020000: return 'chardev';
    case 0o060000: return 'blockdev';
    case 0o010000: return 'fifo';
    case 0o140000: return 'socket';
    default: return 'unknown';
  }
}

/** The blocks an inode's i_blocks allows (data and mapping blocks): a bound that keeps a corrupt map from running on. */
export function allowedBlocks(inode: Inode, blockSize: number, hugeFileFeature: boolean): number {
  if (hugeFileFeature && inode.flags & EXT4_HUGE_FILE_FL) return inode.blocks;
  return Math.ceil((inode.blocks * 512) / blockSize);
}

const XATTR_MAGIC = 0xea020000;

/** The value of an in-inode extended attribute (name index + name), or undefined. */
export function inodeXattr(inode: Inode, nameIndex: number, name: string, where: string): Buffer | undefined {
  const start = 128 + inode.extraIsize;
  const raw = inode.raw;
  if (inode.extraIsize === 0 || start + 4 > raw.length || raw.readUInt32LE(start) !== XATTR_MAGIC) return undefined;
  const base = start + 4;
  let at = base;
  // Entries end with four zero bytes; each is 16 bytes plus its name padded to 4.
  while (at + 16 <= raw.length && raw.readUInt32LE(at) !== 0) {
    const nameLen = raw[at];
    const index = raw[at + 1];
    const valueOffs = raw.readUInt16LE(at + 2);
    const valueInum = raw.readUInt32LE(at + 4);
    const valueSize = raw.readUInt32LE(at + 8);
    if (at + 16 + nameLen > raw.length) throw damaged(where, `inode ${inode.ino}: extended attribute entry runs past the inode`);
    const n = raw.toString('latin1', at + 16, at + 16 + nameLen);
    if (index === nameIndex && n === name) {
      if (valueInum !== 0) throw damaged(where, `inode ${inode.ino}: attribute ${name} stored in inode ${valueInum} (unexpected here)`);
      if (base + valueOffs + valueSize > raw.length) throw damaged(where, `inode ${inode.ino}: attribute ${name} runs past the inode`);
      return raw.subarray(base + valueOffs, base + valueOffs + valueSize);
    }
    at += (16 + nameLen + 3) & ~3;
  }
  return undefined;
}
