// Fuzz: the sparse page codec (encode, decode, merge, page splitting, extent collection) against a dense per-block model.
import { describe, expect, it } from 'vitest';
import {
  collectExtents, countBlocks, forEachPageSlice, toBlockIntervals,
} from '../src/changelog/extents.js';
import type { Extent } from '../src/extent/index.js';
import {
  decodeRuns, encodeRuns, forEachRun, maxGeneration, mergeRuns, PAGE_BLOCKS, PageFormatError, type Run,
} from '../src/changelog/page-codec.js';
import { int, rng } from './support/random.js';

/** The naive truth: maximal runs of equal non-zero generation in dense[from, to), page-relative. */
function runsFromDense(dense: Uint32Array, from: number, to: number): Run[] {
  const out: Run[] = [];
  let k = from;
  while (k < to) {
    const g = dense[k];
    let e = k + 1;
    while (e < to && dense[e] === g) e++;
    if (g !== 0) out.push({ start: k - from, length: e - k, generation: g });
    k = e;
  }
  return out;
}

/** Byte extents of blocks with generation in (since, upto], from the dense model, clipped to the disk size. */
function extentsFromDense(dense: Uint32Array, since: number, upto: number, blockSize: number, sizeBytes: number): Extent[] {
  const out: Extent[] = [];
  let k = 0;
  while (k < dense.length) {
    if (dense[k] > since && dense[k] <= upto) {
      let e = k + 1;
      while (e < dense.length && dense[e] > since && dense[e] <= upto) e++;
      out.push({ offset: k * blockSize, length: Math.min(e * blockSize, sizeBytes) - k * blockSize });
      k = e;
    } else k++;
  }
  return out;
}

/** A random page of runs: sparse, dense, long runs, or alternating single blocks. */
function randomDensePage(r: () => number, maxGen: number): Uint32Array {
  const page = new Uint32Array(PAGE_BLOCKS);
  const style = int(r, 4);
  const count = style === 3 ? 2000 : 1 + int(r, 200);
  for (let n = 0; n < count; n++) {
    const start = int(r, PAGE_BLOCKS);
    const len = style === 1 ? 1 + int(r, 20_000) : style === 3 ? 1 : 1 + int(r, 30);
    const g = 1 + int(r, maxGen);
    for (let k = start; k < Math.min(PAGE_BLOCKS, start + len); k++) page[k] = g;
  }
  return page;
}

describe('change-log page codec', () => {
  it('round-trips run lists, including huge generations and gaps', () => {
    const r = rng(1);
    for (let round = 0; round < 300; round++) {
      const runs: Run[] = [];
      let pos = int(r, 10);
      while (runs.length < 1 + int(r, 100)) {
        const length = 1 + (r() < 0.1 ? int(r, 70_000) : int(r, 5));
        const generation = r() < 0.05 ? 2 ** 40 + int(r, 1000) : 1 + int(r, 4);
        runs.push({ start: pos, length, generation });
        pos += length + (r() < 0.5 ? 0 : int(r, r() < 0.1 ? 100_000 : 200));
      }
      const blob = encodeRuns(runs);
      expect(decodeRuns(blob)).toEqual(runs);
      expect(maxGeneration(runs)).toBe(Math.max(...runs.map((x) => x.generation)));
    }
    expect(encodeRuns([]).length).toBe(0);
    expect(decodeRuns(new Uint8Array(0))).toEqual([]);
  });

  it('omits a repeated generation: a scattered single-block run costs about 2–3 bytes', () => {
    const runs: Run[] = [];
    for (let k = 0; k < 600; k++) runs.push({ start: k * 100, length: 1, generation: 7 });
    const blob = encodeRuns(runs);
    // First run: head, length, generation; every other: 2-byte head (gap 99 → 199) and 1-byte length.
    expect(blob.length).toBe(3 + 599 * 3);
  });

  it('refuses malformed BLOBs instead of guessing', () => {
    const good = encodeRuns([{ start: 5, length: 300, generation: 9 }, { start: 400, length: 1, generation: 9 }]);
    for (let cut = 1; cut < good.length; cut++) {
      // Every strict prefix ends inside a run; some prefixes end exactly at a run boundary and are valid.
      try {
        const runs = decodeRuns(good.subarray(0, cut));
        expect(runs.length).toBe(1);
      } catch (err) {
        expect(err).toBeInstanceOf(PageFormatError);
      }
    }
    // A first run that claims to repeat a generation it has none to repeat.
    expect(() => decodeRuns(Uint8Array.of(2 * 3, 1))).toThrow(PageFormatError);
    expect(() => decodeRuns(Uint8Array.of(0x80))).toThrow(PageFormatError);
    expect(() => decodeRuns(Uint8Array.of(1, 0, 5))).toThrow(PageFormatError);
    expect(() => encodeRuns([{ start: 3, length: 2, generation: 1 }, { start: 4, length: 1, generation: 2 }])).toThrow(RangeError);
    expect(() => encodeRuns([{ start: 0, length: 1, generation: 0 }])).toThrow(RangeError);
  });

  it('merges into a page exactly like max() over a dense page, canonically', () => {
    const r = rng(2);
    for (let round = 0; round < 60; round++) {
      const dense = randomDensePage(r, 6);
      const oldRuns = runsFromDense(dense, 0, PAGE_BLOCKS);
      // Round-trip the old page through the codec, as a fold does.
      const stored = decodeRuns(encodeRuns(oldRuns));
      expect(stored).toEqual(oldRuns);
      // Add sorted, disjoint runs, some adjacent to each other, with generations above and below what is there.
      const add: Run[] = [];
      let pos = int(r, 50);
      while (pos < PAGE_BLOCKS && add.length < 1 + int(r, 300)) {
        const length = Math.min(PAGE_BLOCKS - pos, 1 + (r() < 0.1 ? int(r, 5000) : int(r, 10)));
        add.push({ start: pos, length, generation: 1 + int(r, 8) });
        pos += length + (r() < 0.3 ? 0 : int(r, 400));
      }
      for (const a of add) for (let k = a.start; k < a.start + a.length; k++) dense[k] = Math.max(dense[k], a.generation);
      const merged = mergeRuns(stored, add);
      const truth = runsFromDense(dense, 0, PAGE_BLOCKS);
      expect(merged).toEqual(truth);
      expect(Buffer.from(encodeRuns(merged)).equals(Buffer.from(encodeRuns(truth)))).toBe(true);
    }
  });

  it('folds random byte extents across page boundaries and the disk end like a dense model', () => {
    const r = rng(3);
    const blockSize = 512;
    // 3.4 pages, and a size that is not a multiple of the block size: the last block is short.
    const blockCount = Math.floor(PAGE_BLOCKS * 3.4);
    const sizeBytes = (blockCount - 1) * blockSize + 200;
    const dense = new Uint32Array(blockCount);
    const pages = new Map<number, Uint8Array>();
    let gen = 1;

    const checkPages = (which: Iterable<number>) => {
      for (const p of which) {
        const from = p * PAGE_BLOCKS;
        const truth = runsFromDense(dense, from, Math.min(blockCount, from + PAGE_BLOCKS));
        const blob = pages.get(p);
        expect(blob ? decodeRuns(blob) : [], `page ${p}`).toEqual(truth);
      }
    };

    for (let fold = 0; fold < 150; fold++) {
      if (r() < 0.3) gen++;
      // Mostly folds at the current generation; sometimes a late fold of an older bitmap.
      const g = r() < 0.15 ? Math.max(1, gen - 1 - int(r, 3)) : gen;
      const extents: Array<[number, number] | { offset: number; length: number }> = [];
      const n = 1 + int(r, 60);
      for (let k = 0; k < n; k++) {
        const kind = r();
        let offset: number;
        let length: number;
        if (kind < 0.2) {
          // Straddle a page boundary.
          const boundary = (1 + int(r, 3)) * PAGE_BLOCKS * blockSize;
          offset = boundary - 1 - int(r, 5000);
          length = 2 + int(r, 10_000);
        } else if (kind < 0.3) {
          // Run up to the very end of the disk.
          length = 1 + int(r, 100_000);
          offset = sizeBytes - length;
        } else if (kind < 0.35) {
          // Longer than a page.
          offset = int(r, sizeBytes / 2);
          length = PAGE_BLOCKS * blockSize + int(r, 1e6);
        } else {
          offset = int(r, sizeBytes - 1);
          length = 1 + int(r, 20_000);
        }
        length = Math.min(length, sizeBytes - offset);
        extents.push(r() < 0.5 ? [offset, length] : { offset, length });
        if (r() < 0.05) extents.push([offset, 0]);
      }
      // The reader's order is not trusted: sometimes unsorted, overlapping.
      if (r() < 0.3) extents.reverse();

      for (const e of extents) {
        const [o, l] = Array.isArray(e) ? e : [e.offset, e.length];
        if (l === 0) continue;
        for (let b = Math.floor(o / blockSize); b < Math.ceil((o + l) / blockSize); b++) dense[b] = Math.max(dense[b], g);
      }
      const intervals = toBlockIntervals(extents, blockSize, sizeBytes);
      for (let k = 2; k < intervals.length; k += 2) expect(intervals[k]).toBeGreaterThan(intervals[k - 1]);
      expect(intervals[intervals.length - 1]).toBeLessThanOrEqual(blockCount);
      const touched: number[] = [];
      let sliced = 0;
      forEachPageSlice(intervals, g, (pageNo, add) => {
        touched.push(pageNo);
        for (const a of add) {
          expect(a.start + a.length).toBeLessThanOrEqual(PAGE_BLOCKS);
          sliced += a.length;
        }
        const old = pages.get(pageNo);
        pages.set(pageNo, encodeRuns(mergeRuns(old ? decodeRuns(old) : [], add)));
      });
      expect(sliced).toBe(countBlocks(intervals));
      expect(touched).toEqual([...new Set(touched)].sort((a, b) => a - b));
      checkPages(touched);
    }
    checkPages(Array.from({ length: Math.ceil(blockCount / PAGE_BLOCKS) }, (_, k) => k));

    // Queries over every window of generations, against the model.
    const ordered = [...pages.keys()].sort((a, b) => a - b).map((pageNo) => ({ pageNo, runs: pages.get(pageNo)! }));
    for (let since = 0; since <= gen; since++) {
      for (const upto of [since + 1, gen, gen + 5]) {
        expect(collectExtents(ordered, since, upto, blockSize, sizeBytes), `(${since}, ${upto}]`)
          .toEqual(extentsFromDense(dense, since, upto, blockSize, sizeBytes));
      }
    }
    // The last extent of an all-inclusive query ends at the disk's end exactly when the short last block changed.
    const all = collectExtents(ordered, 0, Infinity, blockSize, sizeBytes);
    const lastEnd = all[all.length - 1].offset + all[all.length - 1].length;
    expect(lastEnd <= sizeBytes).toBe(true);
    expect(dense[blockCount - 1] !== 0).toBe(lastEnd === sizeBytes);
  });

  it('rounds extents outward to blocks and refuses ones past the disk end', () => {
    // Touching intervals join: [0,1) and [1,3) are one interval.
    expect(toBlockIntervals([[100, 1], [4096, 4096], [8191, 2]], 4096, 1 << 20)).toEqual([0, 3]);
    expect(toBlockIntervals([[100, 1], [8192, 1]], 4096, 1 << 20)).toEqual([0, 1, 2, 3]);
    expect(toBlockIntervals([[8192, 10], [0, 10], [4000, 200]], 4096, 1 << 20)).toEqual([0, 3]);
    expect(() => toBlockIntervals([[1 << 20, 1]], 4096, 1 << 20)).toThrow(/past the disk's end/);
    expect(() => toBlockIntervals([[-1, 1]], 4096, 1 << 20)).toThrow(/non-negative integers/);
    expect(() => toBlockIntervals([[0.5, 1]], 4096, 1 << 20)).toThrow(/non-negative integers/);
  });

  it('visits runs without allocating objects and stops on the first bad byte', () => {
    const blob = encodeRuns([{ start: 0, length: 2, generation: 3 }, { start: 10, length: 1, generation: 3 }]);
    const seen: number[][] = [];
    forEachRun(blob, (s, l, g) => seen.push([s, l, g]));
    expect(seen).toEqual([[0, 2, 3], [10, 1, 3]]);
  });
});
