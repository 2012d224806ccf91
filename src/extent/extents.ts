// Byte extents, the one shape every room passes around ({ offset, length }, half-open), and the set
// operations on lists of them. Pure. The operations that take two lists want them sorted and merged
// (as `merge` returns them) and run in O(n + m); `merge` sorts only when its input is not sorted.

/** Bytes [offset, offset + length). */
export interface Extent {
  offset: number;
  length: number;
}

/** An extent as the control API and the manifests write it: `[offset, length]`. */
export type ExtentPair = [offset: number, length: number];

/** `extents` sorted by offset, overlapping or touching ones made one, empty ones dropped. New objects. */
export function merge(extents: Iterable<Extent>): Extent[] {
  let list = [...extents];
  for (let i = 1; i < list.length; i++) {
    if (list[i]!.offset < list[i - 1]!.offset) {
      list = list.sort((a, b) => a.offset - b.offset);
      break;
    }
  }
  const out: Extent[] = [];
  let last: Extent | undefined;
  for (const e of list) {
    if (e.length <= 0) continue;
    if (last && e.offset <= last.offset + last.length) {
      const end = e.offset + e.length;
      if (end > last.offset + last.length) last.length = end - last.offset;
    } else {
      last = { offset: e.offset, length: e.length };
      out.push(last);
    }
  }
  return out;
}

/** The bytes in both `a` and `b` (both sorted and merged); the result is sorted and merged. */
export function intersect(a: readonly Extent[], b: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i]!;
    const y = b[j]!;
    const xEnd = x.offset + x.length;
    const yEnd = y.offset + y.length;
    const start = Math.max(x.offset, y.offset);
    const end = Math.min(xEnd, yEnd);
    if (start < end) out.push({ offset: start, length: end - start });
    // The one that ends first can meet nothing further on in the other list.
    if (xEnd <= yEnd) i++;
    else j++;
  }
  return out;
}

/** The bytes of `a` that are not in `b` (both sorted and merged); the result is sorted and merged. */
export function subtract(a: readonly Extent[], b: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  let j = 0;
  for (const x of a) {
    let at = x.offset;
    const end = x.offset + x.length;
    // Extents of b that end before this one of a cannot touch any later one of a either.
    while (j < b.length && b[j]!.offset + b[j]!.length <= at) j++;
    let k = j;
    while (at < end && k < b.length && b[k]!.offset < end) {
      const y = b[k]!;
      if (y.offset > at) out.push({ offset: at, length: y.offset - at });
      at = Math.max(at, y.offset + y.length);
      k++;
    }
    if (at < end) out.push({ offset: at, length: end - at });
  }
  return out;
}

/**
 * At most `max` extents covering all of `extents` (sorted, merged): the smallest gaps between
 * neighbours are filled until few enough remain. A superset, for lists that must stay bounded
 * (what is carried from one scan to the next) where covering more is safe and dropping is not.
 */
export function coarsen(extents: readonly Extent[], max: number): Extent[] {
  const m = merge(extents);
  if (m.length <= max) return m;
  const gaps = m.slice(1).map((e, i) => e.offset - (m[i]!.offset + m[i]!.length)).sort((a, b) => a - b);
  // Gaps up to this size are filled: that leaves at most `max` extents (ties may fill a few more).
  const fill = gaps[m.length - Math.max(1, max) - 1]!;
  const out: Extent[] = [];
  for (const e of m) {
    const last = out[out.length - 1];
    if (last && e.offset - (last.offset + last.length) <= fill) last.length = e.offset + e.length - last.offset;
    else out.push({ ...e });
  }
  return out;
}

/**
 * `extents` widened outward to whole multiples of `granularity` (a write to part of a cluster
 * changed the cluster), clipped to `size`, merged. Sorted input stays O(n).
 */
export function align(extents: Iterable<Extent>, granularity: number, size: number): Extent[] {
  if (!(granularity > 0)) throw new RangeError(`granularity ${granularity} is not positive`);
  const widened: Extent[] = [];
  for (const e of extents) {
    if (e.length <= 0 || e.offset >= size) continue;
    const start = e.offset - (e.offset % granularity);
    const end = Math.min(size, Math.ceil((e.offset + e.length) / granularity) * granularity);
    widened.push({ offset: start, length: end - start });
  }
  return merge(widened);
}

/** Cuts extents into pieces of at most `max` bytes, cut at multiples of `max` from 0 so requests stay aligned. */
export function* split(extents: Iterable<Extent>, max: number): Generator<Extent> {
  for (const e of extents) {
    let off = e.offset;
    const end = e.offset + e.length;
    while (off < end) {
      const next = Math.min(end, (Math.floor(off / max) + 1) * max);
      yield { offset: off, length: next - off };
      off = next;
    }
  }
}

/** The bytes the extents cover, counting overlaps twice: sum of the lengths (merge first for the union). */
export function totalBytes(extents: Iterable<Extent>): number {
  let n = 0;
  for (const e of extents) n += e.length;
  return n;
}

/** `[offset, length]` pairs, for the control API's JSON and the manifests. */
export function toPairs(extents: Iterable<Extent>): ExtentPair[] {
  const out: ExtentPair[] = [];
  for (const e of extents) out.push([e.offset, e.length]);
  return out;
}

/** Extents from `[offset, length]` pairs. */
export function fromPairs(pairs: Iterable<readonly [number, number]>): Extent[] {
  const out: Extent[] = [];
  for (const [offset, length] of pairs) out.push({ offset, length });
  return out;
}

/** The index of the first of sorted, merged extents that ends after `at` (q.length when none does). */
export function firstEndingAfter(q: readonly Extent[], at: number): number {
  let lo = 0;
  let hi = q.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (q[mid]!.offset + q[mid]!.length <= at) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** For sorted, merged extents `q`: whether [start, end) meets any of them. */
export function hitTest(q: readonly Extent[]): (start: number, end: number) => boolean {
  return (start, end) => {
    const i = firstEndingAfter(q, start);
    return i < q.length && q[i]!.offset < end;
  };
}
