// The used-block map of an ext filesystem from its block bitmaps alone (read in large requests), groups without an initialised bitmap computed.
import type { Extent } from '../../extent/index.js';
import { crc32cRaw } from '../crc.js';
import { damaged } from '../errors.js';
import type { DiskReader } from '../reader.js';
import { baseMetaBlocks, BG_BLOCK_UNINIT, groupBlockCount, groupFirstBlock, groupMetadataBlocks, type GroupDesc } from './groups.js';
import { has, RO_COMPAT, type Superblock } from './superblock.js';

/** Bitmap bytes per request: 4 MiB covers 128 TiB of 4 KiB blocks' bitmaps when flex_bg packs them. */
const BITMAP_BATCH = 4 * 1024 * 1024;

/** Appends block runs, merging touching ones; the list stays sorted when runs come in order. */
class RunList {
  readonly runs: Extent[] = [];
  add(start: number, count: number): void {
    if (count <= 0) return;
    const last = this.runs[this.runs.length - 1];
    if (last && start <= last.offset + last.length) {
      last.length = Math.max(last.length, start + count - last.offset);
    } else this.runs.push({ offset: start, length: count });
  }
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, n) => {
  let c = 0;
  for (let x = n; x; x >>= 1) c += x & 1;
  return c;
});

/** Set bits among the first `count` bits (the last group's bitmap is padded with ones past its end). */
function countBits(bits: Uint8Array, count: number): number {
  let n = 0;
  const whole = count >> 3;
  for (let i = 0; i < whole; i++) n += POPCOUNT[bits[i]];
  for (let i = whole * 8; i < count; i++) n += (bits[i >> 3] >> (i & 7)) & 1;
  return n;
}

/** Adds the set bits of `bits` (bit i = block first+i, i < count) as runs. */
function addBitmapRuns(runs: RunList, bits: Uint8Array, first: number, count: number): void {
  let i = 0;
  let runStart = -1;
  while (i < count) {
    const byte = bits[i >> 3];
    // Whole bytes of used or free blocks are the common case: skip them eight at a time.
    if ((i & 7) === 0 && i + 8 <= count && (byte === 0xff || byte === 0)) {
      if (byte === 0xff) {
        if (runStart < 0) runStart = i;
      } else if (runStart >= 0) {
        runs.add(first + runStart, i - runStart);
        runStart = -1;
      }
      i += 8;
      continue;
    }
    if ((byte >> (i & 7)) & 1) {
      if (runStart < 0) runStart = i;
    } else if (runStart >= 0) {
      runs.add(first + runStart, i - runStart);
      runStart = -1;
    }
    i++;
  }
  if (runStart >= 0) runs.add(first + runStart, count - runStart);
}

/**
 * Used blocks as sorted, merged runs of block numbers: the bitmaps of initialised groups, and for
 * a group with BLOCK_UNINIT what the kernel would put in its bitmap (its superblock backup, descriptor
 * blocks and reserve, and whichever bitmaps and inode tables lie in it). Every group's own bitmaps
 * and inode table count as used wherever flex_bg put them, so a bitmap that forgot them does no harm.
 */
export async function usedBlockRuns(sb: Superblock, gds: GroupDesc[], disk: DiskReader): Promise<Extent[]> {
  const where = disk.label;
  const bs = sb.blockSize;
  const bitmapBytes = sb.blocksPerGroup / 8;
  const csum = has(sb.roCompat, RO_COMPAT.metadata_csum);
  const fixed = new RunList();
  // Block 0 of a 1 KiB filesystem is in no group (boot sector); count it as used like the rest of the start.
  fixed.add(0, sb.firstDataBlock);
  const meta = groupMetadataBlocks(sb, gds);
  const runs = new RunList();
  const perBatch = Math.max(1, Math.floor(BITMAP_BATCH / bs));
  for (let g0 = 0; g0 < sb.groupCount; g0 += perBatch) {
    const groups: number[] = [];
    for (let g = g0; g < Math.min(sb.groupCount, g0 + perBatch); g++) groups.push(g);
    const bitmaps = await readBitmaps(sb, gds, disk, groups.filter((g) => !(gds[g].flags & BG_BLOCK_UNINIT)));
    for (const g of groups) {
      const first = groupFirstBlock(sb, g);
      const count = groupBlockCount(sb, g);
      const bits = bitmaps.get(g);
      if (!bits) {
        runs.add(first, Math.min(count, baseMetaBlocks(sb, g)));
        continue;
      }
      if (csum) {
        const sum = crc32cRaw(sb.csumSeed, bits, 0, bitmapBytes);
        const want = sb.descSize >= 64 ? sum >>> 0 : sum & 0xffff;
        if (want !== gds[g].blockBitmapCsum) throw damaged(where, `block bitmap of group ${g} (block ${gds[g].blockBitmap}) checksum mismatch`);
      }
      // The descriptor's free count must agree with the bitmap: a zeroed or stale bitmap would call used blocks free.
      const free = count - countBits(bits, count);
      if (free !== gds[g].freeBlocks) {
        throw damaged(where, `block bitmap of group ${g} shows ${free} free blocks, its descriptor ${gds[g].freeBlocks}`);
      }
      addBitmapRuns(runs, bits, first, count);
    }
  }
  return mergeBlockRuns([...fixed.runs, ...runs.runs, ...meta]);
}

function mergeBlockRuns(list: Extent[]): Extent[] {
  list.sort((a, b) => a.offset - b.offset);
  const out = new RunList();
  for (const r of list) out.add(r.offset, r.length);
  return out.runs;
}

/** Reads the block bitmaps of `groups`, coalescing neighbours on disk (flex_bg packs them) into large requests. */
async function readBitmaps(sb: Superblock, gds: GroupDesc[], disk: DiskReader, groups: number[]): Promise<Map<number, Buffer>> {
  const bs = sb.blockSize;
  const byBlock = groups.map((g) => ({ g, b: gds[g].blockBitmap })).sort((x, y) => x.b - y.b);
  const out = new Map<number, Buffer>();
  const maxRun = Math.max(1, Math.floor(BITMAP_BATCH / bs));
  let i = 0;
  while (i < byBlock.length) {
    let j = i + 1;
    while (j < byBlock.length && byBlock[j].b - byBlock[i].b < maxRun && byBlock[j].b - byBlock[j - 1].b <= 16) j++;
    // Gaps of up to 16 blocks are read through: one request beats several small ones.
    const start = byBlock[i].b;
    const n = byBlock[j - 1].b - start + 1;
    const buf = await disk.read(start * bs, n * bs, 'block bitmaps');
    for (let k = i; k < j; k++) out.set(byBlock[k].g, buf.subarray((byBlock[k].b - start) * bs, (byBlock[k].b - start + 1) * bs));
    i = j;
  }
  return out;
}
