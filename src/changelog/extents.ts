// Byte extents ⇄ block intervals ⇄ page runs for the change log: rounding outward, splitting at page boundaries, and
// turning stored runs back into sorted, merged byte extents clipped to the disk's end. Pure: no SQLite here.
import type { Extent } from '../extent/index.js';
import { PAGE_BLOCKS, RunReader, type Run } from './page-codec.js';

/** What `fold` accepts: the extent room's `{ offset, length }`, or the `[offset, length]` pairs of the control API. */
export type ExtentInput = readonly [number, number] | Readonly<Extent>;

/** An extent that cannot be folded: negative, not an integer, or past the disk's end. */
export class ExtentRangeError extends RangeError {}

/**
 * Byte extents → sorted, merged block intervals as a flat array [start0, end0, start1, end1, ...]. Each extent is
 * rounded outward to whole blocks: a write to part of a block changed the block. Empty extents are skipped.
 * Extents past the disk's end are refused rather than clipped: they mean the log's idea of the disk size is stale,
 * and clipping would drop real changes.
 */
export function toBlockIntervals(extents: readonly ExtentInput[], blockSize: number, sizeBytes: number): number[] {
  const raw: number[] = [];
  let sorted = true;
  let prevStart = -1;
  for (const e of extents) {
    const offset = Array.isArray(e) ? (e as readonly [number, number])[0] : (e as { offset: number }).offset;
    const length = Array.isArray(e) ? (e as readonly [number, number])[1] : (e as { length: number }).length;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new ExtentRangeError(`extent [${offset}, ${length}] is not a pair of non-negative integers`);
    }
    if (length === 0) continue;
    if (offset + length > sizeBytes) {
      throw new ExtentRangeError(`extent [${offset}, ${length}] ends at byte ${offset + length}, past the disk's end at ${sizeBytes}`);
    }
    const s = Math.floor(offset / blockSize);
    const en = Math.ceil((offset + length) / blockSize);
    if (s < prevStart) sorted = false;
    prevStart = s;
    raw.push(s, en);
  }
  let pairs = raw;
  if (!sorted) {
    const order = Array.from({ length: raw.length / 2 }, (_, k) => k);
    order.sort((a, b) => raw[2 * a] - raw[2 * b]);
    pairs = [];
    for (const k of order) pairs.push(raw[2 * k], raw[2 * k + 1]);
  }
  const out: number[] = [];
  for (let k = 0; k < pairs.length; k += 2) {
    const s = pairs[k];
    const e = pairs[k + 1];
    const n = out.length;
    // Overlapping or touching intervals become one.
    if (n > 0 && s <= out[n - 1]) {
      if (e > out[n - 1]) out[n - 1] = e;
    } else {
      out.push(s, e);
    }
  }
  return out;
}

/** Number of blocks in a flat interval list. */
export function countBlocks(intervals: readonly number[]): number {
  let n = 0;
  for (let k = 0; k < intervals.length; k += 2) n += intervals[k + 1] - intervals[k];
  return n;
}

/**
 * Splits sorted block intervals at page boundaries and calls `fn` once per touched page, in page order, with the
 * page-relative runs tagged `generation`. Cost O(intervals + pages touched).
 */
export function forEachPageSlice(
  intervals: readonly number[],
  generation: number,
  fn: (pageNo: number, runs: Run[]) => void,
): void {
  let page = -1;
  let runs: Run[] = [];
  for (let k = 0; k < intervals.length; k += 2) {
    let s = intervals[k];
    const e = intervals[k + 1];
    while (s < e) {
      const p = Math.floor(s / PAGE_BLOCKS);
      const base = p * PAGE_BLOCKS;
      const chunkEnd = Math.min(e, base + PAGE_BLOCKS);
      if (p !== page) {
        if (runs.length > 0) fn(page, runs);
        page = p;
        runs = [];
      }
      runs.push({ start: s - base, length: chunkEnd - s, generation });
      s = chunkEnd;
    }
  }
  if (runs.length > 0) fn(page, runs);
}

/**
 * Collects the byte extents of every block whose generation is in (since, upto], from page BLOBs given in ascending
 * page order. Adjacent extents merge, also across pages; the last one is clipped to `sizeBytes` (a disk whose size is
 * not a multiple of the block size has a short last block). Throws the codec's PageFormatError on a bad BLOB.
 */
export function collectExtents(
  pages: Iterable<{ pageNo: number; runs: Uint8Array }>,
  since: number,
  upto: number,
  blockSize: number,
  sizeBytes: number,
): Extent[] {
  const out: Extent[] = [];
  // The extent being built is kept in two numbers and pushed when it ends: one array per extent, no rewrites.
  let off = -1;
  let end = -1;
  for (const { pageNo, runs } of pages) {
    const base = pageNo * PAGE_BLOCKS;
    const r = new RunReader(runs);
    while (r.next()) {
      const gen = r.generation;
      if (gen <= since || gen > upto) continue;
      const s = (base + r.start) * blockSize;
      let e = (base + r.start + r.length) * blockSize;
      if (e > sizeBytes) e = sizeBytes;
      if (e <= s) continue;
      if (s === end) {
        end = e;
      } else {
        if (off >= 0) out.push({ offset: off, length: end - off });
        off = s;
        end = e;
      }
    }
  }
  if (off >= 0) out.push({ offset: off, length: end - off });
  return out;
}
