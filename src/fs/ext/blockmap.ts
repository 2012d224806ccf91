// Where an inode's data lives: extent trees (any depth, uninitialised extents) and ext2/3 block maps (direct to triple indirect), bounded by i_blocks.
import type { Extent } from '../../extent/index.js';
import { crc32cRaw } from '../crc.js';
import { damaged } from '../errors.js';
import type { DiskReader } from '../reader.js';
import { allowedBlocks, EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, inodeCsumSeed, S_IFLNK, S_IFMT, type Inode } from './inode.js';
import { has, RO_COMPAT, type Superblock } from './superblock.js';

/** A run of file blocks: logical block `logical` onwards sits at physical block `physical`. */
export interface MappedRun {
  logical: number;
  physical: number;
  count: number;
  /** An uninitialised (preallocated) extent: allocated, but reads as zeroes. */
  uninit: boolean;
}

export interface InodeMap {
  /** Data runs, in logical order. */
  data: MappedRun[];
  /** Blocks that map the data (extent tree nodes, indirect blocks) and the xattr block, as block runs. */
  meta: Extent[];
  /** Data stored in the inode itself (inline data), none on disk. */
  inline: boolean;
}

const EXTENT_MAGIC = 0xf30a;
/** The kernel's limit on extent tree depth. */
const MAX_DEPTH = 5;
const INIT_MAX_LEN = 32768;

/**
 * The extents of an extent root that is a leaf (depth 0) in the 60 bytes of `iBlock`, as
 * [physical, count] block pairs, without the checks `mapInode` makes; undefined when the root is
 * not such a leaf (no magic, deeper tree, more entries than fit). For a quick "does this inode
 * touch these blocks at all": a hit, or anything undefined, takes `mapInode`.
 */
export function rootLeafRuns(iBlock: Buffer): number[] | undefined {
  const entries = iBlock.readUInt16LE(2);
  if (iBlock.readUInt16LE(0) !== EXTENT_MAGIC || iBlock.readUInt16LE(6) !== 0 || 12 + entries * 12 > iBlock.length) return undefined;
  const out: number[] = [];
  for (let i = 0; i < entries; i++) {
    const e = 12 + i * 12;
    const raw = iBlock.readUInt16LE(e + 4);
    out.push(iBlock.readUInt16LE(e + 6) * 2 ** 32 + iBlock.readUInt32LE(e + 8), raw > INIT_MAX_LEN ? raw - INIT_MAX_LEN : raw);
  }
  return out;
}

export function isFastSymlink(inode: Inode, sb: Superblock): boolean {
  if ((inode.mode & S_IFMT) !== S_IFLNK || inode.flags & (EXT4_EXTENTS_FL | EXT4_INLINE_DATA_FL)) return false;
  const xattrBlocks = inode.fileAcl ? sb.blockSize / 512 : 0;
  return inode.size < 60 && inode.blocks - xattrBlocks === 0;
}

class Budget {
  used = 0;
  constructor(
    private readonly limit: number,
    private readonly where: string,
    private readonly ino: number,
  ) {}
  take(n: number): void {
    this.used += n;
    if (this.used > this.limit) {
      throw damaged(this.where, `inode ${this.ino} maps more blocks than its block count (${this.limit}) allows: corrupt block map or extent tree`);
    }
  }
}

export async function mapInode(sb: Superblock, disk: DiskReader, inode: Inode): Promise<InodeMap> {
  const where = disk.label;
  const data: MappedRun[] = [];
  const meta: Extent[] = [];
  if (inode.flags & EXT4_INLINE_DATA_FL || isFastSymlink(inode, sb)) {
    if (inode.fileAcl) meta.push(checkedRun(sb, where, inode.ino, inode.fileAcl, 1, 'extended attribute block'));
    return { data, meta, inline: true };
  }
  const budget = new Budget(allowedBlocks(inode, sb.blockSize, has(sb.roCompat, RO_COMPAT.huge_file)), where, inode.ino);
  if (inode.fileAcl) {
    meta.push(checkedRun(sb, where, inode.ino, inode.fileAcl, 1, 'extended attribute block'));
    budget.take(1);
  }
  const push = (run: MappedRun) => {
    const last = data[data.length - 1];
    if (last && last.uninit === run.uninit && last.logical + last.count === run.logical && last.physical + last.count === run.physical) {
      last.count += run.count;
    } else data.push(run);
  };
  if (inode.flags & EXT4_EXTENTS_FL) {
    const seed = has(sb.roCompat, RO_COMPAT.metadata_csum) ? inodeCsumSeed(sb.csumSeed, inode.ino, inode.generation) : undefined;
    await walkExtents(sb, disk, inode.ino, inode.iBlock, undefined, new Set(), budget, meta, push, { next: 0, seed });
  } else {
    await walkBlockMap(sb, disk, inode, budget, meta, push);
  }
  return { data, meta, inline: false };
}

function checkedRun(sb: Superblock, where: string, ino: number, start: number, count: number, what: string): Extent {
  if (start <= sb.firstDataBlock || start + count > sb.blocksCount || count <= 0) {
    throw damaged(where, `inode ${ino}: ${what} at block ${start} (+${count}) lies outside the filesystem's ${sb.blocksCount} blocks`);
  }
  return { offset: start, length: count };
}

async function walkExtents(
  sb: Superblock,
  disk: DiskReader,
  ino: number,
  node: Buffer,
  depth: number | undefined,
  seen: Set<number>,
  budget: Budget,
  meta: Extent[],
  push: (r: MappedRun) => void,
  order: { next: number; seed?: number },
): Promise<void> {
  const where = disk.label;
  const bad = (what: string) => damaged(where, `inode ${ino}: extent tree ${what}`);
  if (node.readUInt16LE(0) !== EXTENT_MAGIC) throw bad('node without its magic number');
  const entries = node.readUInt16LE(2);
  const max = node.readUInt16LE(4);
  const d = node.readUInt16LE(6);
  if (12 + max * 12 > node.length || entries > max) throw bad(`node claims ${entries}/${max} entries, more than fit`);
  if (d > MAX_DEPTH || (depth !== undefined && d !== depth)) throw bad(`node at depth ${d} where ${depth ?? `at most ${MAX_DEPTH}`} belongs`);
  for (let i = 0; i < entries; i++) {
    const e = 12 + i * 12;
    const logical = node.readUInt32LE(e);
    if (logical < order.next) throw bad(`entries out of order (logical block ${logical} after ${order.next})`);
    if (d === 0) {
      const raw = node.readUInt16LE(e + 4);
      const uninit = raw > INIT_MAX_LEN;
      const count = uninit ? raw - INIT_MAX_LEN : raw;
      const physical = node.readUInt16LE(e + 6) * 2 ** 32 + node.readUInt32LE(e + 8);
      if (count === 0) continue;
      checkedRun(sb, where, ino, physical, count, `extent for logical block ${logical}`);
      budget.take(count);
      order.next = logical + count;
      push({ logical, physical, count, uninit });
    } else {
      const child = node.readUInt16LE(e + 8) * 2 ** 32 + node.readUInt32LE(e + 4);
      checkedRun(sb, where, ino, child, 1, 'extent tree node');
      if (seen.has(child)) throw bad(`loops back to block ${child}`);
      seen.add(child);
      budget.take(1);
      meta.push({ offset: child, length: 1 });
      const block = await disk.readCached(child * sb.blockSize, sb.blockSize, 'extent tree node');
      if (order.seed !== undefined) {
        // The tail checksum follows the node's entry slots (eh_max of them).
        const tail = 12 + block.readUInt16LE(4) * 12;
        if (tail + 4 <= block.length && crc32cRaw(order.seed, block, 0, tail) !== block.readUInt32LE(tail)) {
          throw bad(`block ${child} checksum mismatch`);
        }
      }
      await walkExtents(sb, disk, ino, block, d - 1, seen, budget, meta, push, order);
    }
  }
}

async function walkBlockMap(
  sb: Superblock,
  disk: DiskReader,
  inode: Inode,
  budget: Budget,
  meta: Extent[],
  push: (r: MappedRun) => void,
): Promise<void> {
  const per = sb.blockSize / 4;
  const ptr = (b: Buffer, i: number) => b.readUInt32LE(i * 4);
  const data = (logical: number, p: number) => {
    checkedRun(sb, disk.label, inode.ino, p, 1, `block pointer for logical block ${logical}`);
    budget.take(1);
    push({ logical, physical: p, count: 1, uninit: false });
  };
  for (let i = 0; i < 12; i++) {
    const p = ptr(inode.iBlock, i);
    if (p) data(i, p);
  }
  // Indirect levels 1..3 start at logical blocks 12, 12+per, 12+per+per^2.
  let base = 12;
  for (let level = 1; level <= 3; level++) {
    const root = ptr(inode.iBlock, 11 + level);
    if (root) await indirect(root, level, base);
    base += per ** level;
  }

  async function indirect(block: number, level: number, first: number): Promise<void> {
    checkedRun(sb, disk.label, inode.ino, block, 1, `level-${level} indirect block`);
    budget.take(1);
    meta.push({ offset: block, length: 1 });
    // Copied: the cache may drop the chunk while deeper levels are read.
    const b = Buffer.from(await disk.readCached(block * sb.blockSize, sb.blockSize, 'indirect block'));
    const span = per ** (level - 1);
    for (let i = 0; i < per; i++) {
      const p = ptr(b, i);
      if (!p) continue;
      if (level === 1) data(first + i, p);
      else await indirect(p, level - 1, first + i * span);
    }
  }
}
