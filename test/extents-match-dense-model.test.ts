// Fuzz: the extent room's merge, intersect, subtract, align, coarsen, totalBytes and pair converters against a
// dense byte model (one flag per byte), with random, unsorted, overlapping and empty extents.
import { describe, expect, it } from 'vitest';
import { align, coarsen, fromPairs, intersect, merge, split, subtract, toPairs, totalBytes, type Extent } from '../src/extent/index.js';
import { int, rng } from './support/random.js';

/** Random extents inside [0, size): in any order, overlapping, touching, some empty. */
function randomExtents(r: () => number, size: number): Extent[] {
  const out: Extent[] = [];
  for (let n = int(r, 12); n > 0; n--) {
    const offset = int(r, size);
    const length = r() < 0.1 ? 0 : 1 + int(r, Math.max(1, Math.min(size - offset, r() < 0.3 ? 4 : size / 3)));
    out.push({ offset, length: Math.min(length, size - offset) });
    // Touching neighbours, the case a merge most easily gets wrong.
    if (r() < 0.2 && offset + length < size) out.push({ offset: offset + length, length: 1 + int(r, Math.max(1, size - offset - length)) });
  }
  return r() < 0.5 ? out : out.sort((x, y) => x.offset - y.offset);
}

function dense(extents: readonly Extent[], size: number): Uint8Array {
  const d = new Uint8Array(size);
  for (const e of extents) d.fill(1, e.offset, e.offset + e.length);
  return d;
}

/** The naive truth: maximal runs of set bytes. */
function runs(d: Uint8Array): Extent[] {
  const out: Extent[] = [];
  let k = 0;
  while (k < d.length) {
    if (!d[k]) { k++; continue; }
    let e = k + 1;
    while (e < d.length && d[e]) e++;
    out.push({ offset: k, length: e - k });
    k = e;
  }
  return out;
}

const SEEDS = 3000;

describe('extents match a dense byte model', () => {
  it(`merge, intersect, subtract, align, coarsen, totalBytes over ${SEEDS} random cases (seeded)`, () => {
    for (let seed = 1; seed <= SEEDS; seed++) {
      const r = rng(seed);
      const size = 1 + int(r, r() < 0.5 ? 64 : 2000);
      const rawA = randomExtents(r, size);
      const rawB = randomExtents(r, size);
      const da = dense(rawA, size);
      const db = dense(rawB, size);
      const what = `seed ${seed} (size ${size}, a ${JSON.stringify(toPairs(rawA))}, b ${JSON.stringify(toPairs(rawB))})`;
      const a = merge(rawA);
      const b = merge(rawB);
      expect(a, `merge: ${what}`).toEqual(runs(da));
      expect(totalBytes(a), `totalBytes: ${what}`).toBe(da.reduce((s, x) => s + x, 0));
      expect(intersect(a, b), `intersect: ${what}`).toEqual(runs(da.map((x, i) => x & db[i]!)));
      expect(subtract(a, b), `subtract: ${what}`).toEqual(runs(da.map((x, i) => x & (db[i]! ^ 1))));
      const g = 1 + int(r, 16);
      const widened = new Uint8Array(size);
      for (let c = 0; c < size; c += g) if (da.subarray(c, c + g).some((x) => x)) widened.fill(1, c, c + g);
      expect(align(rawA, g, size), `align to ${g}: ${what}`).toEqual(runs(widened));
      expect(fromPairs(toPairs(a)), `pairs: ${what}`).toEqual(a);
      const max = 1 + int(r, 32);
      const pieces = [...split(a, max)];
      expect(merge(pieces), `split by ${max}: ${what}`).toEqual(a);
      for (const p of pieces) expect(Math.floor(p.offset / max), `split by ${max}: ${what}`).toBe(Math.floor((p.offset + p.length - 1) / max));
      // coarsen: at most `limit` extents, covering every byte of a, only filling gaps between them.
      const limit = 1 + int(r, 6);
      const c = coarsen(rawA, limit);
      expect(c.length, `coarsen to ${limit}: ${what}`).toBeLessThanOrEqual(Math.max(limit, a.length > 0 ? 1 : 0));
      expect(subtract(a, c), `coarsen to ${limit} covers: ${what}`).toEqual([]);
      if (a.length > 0) expect(c[0]!.offset === a[0]!.offset && c.at(-1)!.offset + c.at(-1)!.length === a.at(-1)!.offset + a.at(-1)!.length, `coarsen to ${limit} spans: ${what}`).toBe(true);
      if (a.length <= limit) expect(c, `coarsen to ${limit} keeps: ${what}`).toEqual(a);
    }
  });

  it('merge leaves its input alone and keeps an unsorted input\'s order out of the result', () => {
    const input = [{ offset: 10, length: 5 }, { offset: 0, length: 10 }, { offset: 30, length: 0 }];
    const copy = structuredClone(input);
    expect(merge(input)).toEqual([{ offset: 0, length: 15 }]);
    expect(input).toEqual(copy);
  });

  it('align clips at the end of a disk whose size is not a multiple of the granularity', () => {
    const K64 = 65_536;
    expect(align([{ offset: 3 * K64 + 5, length: 1 }, { offset: 5000, length: 1 }], K64, 3 * K64 + 100)).toEqual([
      { offset: 0, length: K64 }, { offset: 3 * K64, length: 100 },
    ]);
    expect(align([{ offset: 3 * K64 + 100, length: 1 }], K64, 3 * K64 + 100)).toEqual([]);
  });
});
