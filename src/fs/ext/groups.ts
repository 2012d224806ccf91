// Block group descriptors (32/64 bytes, meta_bg, checksums) and where each group's fixed metadata lies.
import { crc16, crc32cRaw } from '../crc.js';
import { damaged } from '../errors.js';
import type { Extent } from '../../extent/index.js';
import type { DiskReader } from '../reader.js';
import { COMPAT, has, INCOMPAT, RO_COMPAT, type Superblock } from './superblock.js';

export const BG_INODE_UNINIT = 0x1;
export const BG_BLOCK_UNINIT = 0x2;

export interface GroupDesc {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  freeBlocks: number;
  freeInodes: number;
  flags: number;
  itableUnused: number;
  blockBitmapCsum: number;
  inodeBitmapCsum: number;
}

export function isPowerOf(n: number, base: number): boolean {
  if (n < 1) return false;
  while (n % base === 0) n /= base;
  return n === 1;
}

/** Groups holding a superblock backup (and with it the descriptor table and its reserve). */
export function groupHasSuper(sb: Superblock, g: number): boolean {
  if (g === 0) return true;
  if (has(sb.compat, COMPAT.sparse_super2)) return g === sb.backupBgs[0] || g === sb.backupBgs[1];
  if (g <= 1 || !has(sb.roCompat, RO_COMPAT.sparse_super)) return true;
  if (g % 2 === 0) return false;
  return isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7);
}

export function descPerBlock(sb: Superblock): number {
  return sb.blockSize / sb.descSize;
}

export function gdtBlocks(sb: Superblock): number {
  return Math.ceil(sb.groupCount / descPerBlock(sb));
}

export function groupFirstBlock(sb: Superblock, g: number): number {
  return sb.firstDataBlock + g * sb.blocksPerGroup;
}

export function groupBlockCount(sb: Superblock, g: number): number {
  return Math.min(sb.blocksPerGroup, sb.blocksCount - groupFirstBlock(sb, g));
}

/** Blocks at the start of group g taken by a superblock (backup), descriptor blocks and reserved GDT blocks (ext4_num_base_meta_clusters). */
export function baseMetaBlocks(sb: Superblock, g: number): number {
  const metaBg = has(sb.incompat, INCOMPAT.meta_bg);
  const dpb = descPerBlock(sb);
  let n = groupHasSuper(sb, g) ? 1 : 0;
  if (!metaBg || g < sb.firstMetaBg * dpb) {
    if (n) n += (metaBg ? sb.firstMetaBg : gdtBlocks(sb)) + sb.reservedGdtBlocks;
  } else {
    const first = Math.floor(g / dpb) * dpb;
    if (g === first || g === first + 1 || g === first + dpb - 1) n += 1;
  }
  return n;
}

/** Block number of descriptor block i (the primary copy). */
function descBlock(sb: Superblock, i: number): number {
  if (!has(sb.incompat, INCOMPAT.meta_bg) || i < sb.firstMetaBg) return sb.firstDataBlock + 1 + i;
  const g = i * descPerBlock(sb);
  return groupFirstBlock(sb, g) + (groupHasSuper(sb, g) ? 1 : 0);
}

export async function readGroupDescs(sb: Superblock, disk: DiskReader): Promise<GroupDesc[]> {
  const where = disk.label;
  const bs = sb.blockSize;
  const nBlocks = gdtBlocks(sb);
  const raw = Buffer.alloc(nBlocks * bs);
  // Without meta_bg the table is one contiguous run: one request.
  if (!has(sb.incompat, INCOMPAT.meta_bg)) {
    (await disk.read((sb.firstDataBlock + 1) * bs, nBlocks * bs, 'group descriptors')).copy(raw);
  } else {
    for (let i = 0; i < nBlocks; i++) {
      const blk = descBlock(sb, i);
      if (blk >= sb.blocksCount) throw damaged(where, `group descriptor block ${i} would be at block ${blk}, past the end`);
      (await disk.readCached(blk * bs, bs, 'group descriptors')).copy(raw, i * bs);
    }
  }
  const metaCsum = has(sb.roCompat, RO_COMPAT.metadata_csum);
  const gdtCsum = has(sb.roCompat, RO_COMPAT.uninit_bg);
  const wide = has(sb.incompat, INCOMPAT['64bit']) && sb.descSize >= 64;
  const out: GroupDesc[] = [];
  const le32 = Buffer.alloc(4);
  for (let g = 0; g < sb.groupCount; g++) {
    const d = raw.subarray(g * sb.descSize, (g + 1) * sb.descSize);
    if (metaCsum || gdtCsum) {
      const stored = d.readUInt16LE(0x1e);
      le32.writeUInt32LE(g);
      let sum: number;
      if (metaCsum) {
        let c = crc32cRaw(sb.csumSeed, le32);
        c = crc32cRaw(c, d, 0, 0x1e);
        c = crc32cRaw(c, Buffer.alloc(2));
        c = crc32cRaw(c, d, 0x20, sb.descSize);
        sum = c & 0xffff;
      } else {
        let c = crc16(0xffff, sb.uuid);
        c = crc16(c, le32);
        c = crc16(c, d, 0, 0x1e);
        if (sb.descSize > 0x20) c = crc16(c, d, 0x20, sb.descSize);
        sum = c;
      }
      if (sum !== stored) throw damaged(where, `group descriptor ${g} checksum mismatch (stored 0x${stored.toString(16)}, computed 0x${sum.toString(16)})`);
    }
    const hi = (at: number, bytes: 2 | 4) => (wide ? (bytes === 4 ? d.readUInt32LE(at) : d.readUInt16LE(at)) : 0);
    const gd: GroupDesc = {
      blockBitmap: d.readUInt32LE(0) + hi(0x20, 4) * 2 ** 32,
      inodeBitmap: d.readUInt32LE(4) + hi(0x24, 4) * 2 ** 32,
      inodeTable: d.readUInt32LE(8) + hi(0x28, 4) * 2 ** 32,
      freeBlocks: d.readUInt16LE(0xc) + hi(0x2c, 2) * 65536,
      freeInodes: d.readUInt16LE(0xe) + hi(0x2e, 2) * 65536,
      // Without group checksums the kernel ignores these flags: so does this reader.
      flags: metaCsum || gdtCsum ? d.readUInt16LE(0x12) : 0,
      itableUnused: metaCsum || gdtCsum ? d.readUInt16LE(0x1c) + hi(0x32, 2) * 65536 : 0,
      blockBitmapCsum: d.readUInt16LE(0x18) + (sb.descSize >= 0x3c ? hi(0x38, 2) * 65536 : 0),
      inodeBitmapCsum: d.readUInt16LE(0x1a) + (sb.descSize >= 0x3c ? hi(0x3a, 2) * 65536 : 0),
    };
    const itBlocks = inodeTableBlocks(sb);
    // Block firstDataBlock holds the superblock itself: no bitmap or table can be there or before it.
    const inFs = (b: number, n: number) => b > sb.firstDataBlock && b + n <= sb.blocksCount;
    if (!inFs(gd.blockBitmap, 1) || !inFs(gd.inodeBitmap, 1) || !inFs(gd.inodeTable, itBlocks)) {
      throw damaged(where, `group descriptor ${g} points outside the filesystem (block bitmap ${gd.blockBitmap}, inode bitmap ${gd.inodeBitmap}, inode table ${gd.inodeTable}, ${sb.blocksCount} blocks)`);
    }
    if (gd.freeBlocks > sb.blocksPerGroup || gd.freeInodes > sb.inodesPerGroup || gd.itableUnused > sb.inodesPerGroup) {
      throw damaged(where, `group descriptor ${g} has impossible counts (free blocks ${gd.freeBlocks}, free inodes ${gd.freeInodes})`);
    }
    out.push(gd);
  }
  return out;
}

export function inodeTableBlocks(sb: Superblock): number {
  return Math.ceil((sb.inodesPerGroup * sb.inodeSize) / sb.blockSize);
}

/**
 * Every group's fixed metadata as block runs: the superblock copy, descriptors and their reserve at
 * its start, its block and inode bitmaps, its inode table (wherever flex_bg put them).
 */
export function groupMetadataBlocks(sb: Superblock, gds: readonly GroupDesc[]): Extent[] {
  const itBlocks = inodeTableBlocks(sb);
  const out: Extent[] = [];
  gds.forEach((gd, g) => {
    const base = baseMetaBlocks(sb, g);
    if (base > 0) out.push({ offset: groupFirstBlock(sb, g), length: base });
    out.push({ offset: gd.blockBitmap, length: 1 }, { offset: gd.inodeBitmap, length: 1 }, { offset: gd.inodeTable, length: itBlocks });
  });
  return out;
}
