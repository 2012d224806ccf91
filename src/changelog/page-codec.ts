// Pure run-length codec for one change-log page: the generation of every block in a page as a compact BLOB of runs.
//
// A page holds PAGE_BLOCKS consecutive blocks of one disk. Only blocks that ever changed are stored, as maximal runs
// of equal generation, sorted by start. On disk each run is three unsigned LEB128 varints:
//
//   head = gap * 2 + explicitGeneration   gap = start - end of the previous run (page start for the first)
//   length                                 >= 1
//   generation                             only when explicitGeneration = 1, i.e. it differs from the previous run's;
//                                          stored as the zigzag-encoded difference from the previous run's (the
//                                          first run's "previous" is 0), so it stays one byte as generations grow
//
// With 1% of blocks scattered at random, a run is ~2.5 bytes (gap mostly 1–2 bytes, length 1, generation omitted).

/**
 * Blocks per page. At QEMU's default 64 KiB granularity a page covers 4 GiB, so a 1 TiB disk is 256 rows: few enough
 * that a whole-disk query is one short index scan, many enough that a fold touching a few blocks rewrites one small
 * BLOB rather than the disk's whole history. At 1% scattered dirt a page's BLOB is ~1.7 KB, which SQLite keeps inside
 * a 4 KiB b-tree page (no overflow chain, two rows per page). Offsets inside a page stay below 2^16, so a gap or
 * length never needs more than 3 varint bytes.
 */
export const PAGE_BLOCKS = 65536;

/** A run of blocks inside one page: [start, start + length), page-relative, all last changed in `generation`. */
export interface Run {
  start: number;
  length: number;
  generation: number;
}

/** The BLOB is not a valid run list (truncated, overlapping, or a generation that is 0 or missing). */
export class PageFormatError extends Error {}

// Worst case per run: three varints of a value up to 2^53 (8 bytes each).
const MAX_RUN_BYTES = 24;
let scratch = new Uint8Array(64 * 1024);

function putVarint(buf: Uint8Array, pos: number, v: number): number {
  while (v >= 0x80) {
    // `v & 0x7f` keeps the low 7 bits even above 2^31 (ToInt32 is modulo 2^32); the division keeps the rest exact.
    buf[pos++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[pos++] = v;
  return pos;
}

/** Encodes runs exactly as given (they must be sorted, disjoint, length >= 1, generation >= 1). */
export function encodeRuns(runs: readonly Run[]): Uint8Array {
  const need = runs.length * MAX_RUN_BYTES;
  if (scratch.length < need) scratch = new Uint8Array(Math.max(need, scratch.length * 2));
  const buf = scratch;
  let pos = 0;
  let prevEnd = 0;
  let prevGen = 0;
  for (const r of runs) {
    if (!(r.length >= 1) || !(r.generation >= 1) || !(r.start >= prevEnd) || !Number.isSafeInteger(r.start + r.length)) {
      throw new RangeError(`run {start ${r.start}, length ${r.length}, generation ${r.generation}} is empty, overlaps the previous run or has no generation`);
    }
    const explicit = r.generation !== prevGen;
    pos = putVarint(buf, pos, (r.start - prevEnd) * 2 + (explicit ? 1 : 0));
    pos = putVarint(buf, pos, r.length);
    if (explicit) {
      // Zigzag delta from the previous run's generation: neighbours' generations are close even when both are large.
      const d = r.generation - prevGen;
      pos = putVarint(buf, pos, d > 0 ? d * 2 : -d * 2 - 1);
    }
    prevEnd = r.start + r.length;
    prevGen = r.generation;
  }
  return buf.slice(0, pos);
}

/**
 * Reads a page BLOB run by run without allocating: `next()` advances and fills start/length/generation. The hot
 * path of `changes` queries (hundreds of thousands of runs per query). Throws PageFormatError on a malformed BLOB.
 */
export class RunReader {
  start = 0;
  length = 0;
  generation = 0;
  private pos = 0;
  private prevEnd = 0;

  constructor(private readonly blob: Uint8Array) {}

  next(): boolean {
    const blob = this.blob;
    const n = blob.length;
    let pos = this.pos;
    if (pos >= n) return false;
    // Inline varint reads: a helper call per field costs more than the decoding itself.
    let b = blob[pos++];
    let head = b & 0x7f;
    let mul = 128;
    while (b & 0x80) {
      if (pos >= n) throw new PageFormatError('truncated varint in run head');
      b = blob[pos++];
      head += (b & 0x7f) * mul;
      mul *= 128;
    }
    if (pos >= n) throw new PageFormatError('run without a length');
    b = blob[pos++];
    let length = b & 0x7f;
    mul = 128;
    while (b & 0x80) {
      if (pos >= n) throw new PageFormatError('truncated varint in run length');
      b = blob[pos++];
      length += (b & 0x7f) * mul;
      mul *= 128;
    }
    if (head % 2 === 1) {
      if (pos >= n) throw new PageFormatError('run without its generation');
      b = blob[pos++];
      let z = b & 0x7f;
      mul = 128;
      while (b & 0x80) {
        if (pos >= n) throw new PageFormatError('truncated varint in run generation');
        b = blob[pos++];
        z += (b & 0x7f) * mul;
        mul *= 128;
      }
      if (z === 0) throw new PageFormatError('explicit generation equal to the previous one');
      this.generation += z % 2 === 0 ? z / 2 : -(z + 1) / 2;
    }
    if (this.generation < 1) throw new PageFormatError('run with generation below 1, or with no generation to repeat');
    if (length === 0) throw new PageFormatError('run of length 0');
    this.start = this.prevEnd + Math.floor(head / 2);
    this.length = length;
    this.prevEnd = this.start + length;
    this.pos = pos;
    return true;
  }
}

/** Calls `fn` for every run in a page BLOB, in order. Throws PageFormatError on a malformed BLOB. */
export function forEachRun(blob: Uint8Array, fn: (start: number, length: number, generation: number) => void): void {
  const r = new RunReader(blob);
  while (r.next()) fn(r.start, r.length, r.generation);
}

export function decodeRuns(blob: Uint8Array): Run[] {
  const out: Run[] = [];
  forEachRun(blob, (start, length, generation) => { out.push({ start, length, generation }); });
  return out;
}

/** Largest generation in a run list (0 for none): stored beside the BLOB so queries can skip old pages. */
export function maxGeneration(runs: readonly Run[]): number {
  let m = 0;
  for (const r of runs) if (r.generation > m) m = r.generation;
  return m;
}

/**
 * Overlays `add` on `old`: every block covered by `add` gets max(old generation, added generation) — a block's
 * generation never goes down. Both inputs sorted and disjoint; the result is canonical (maximal runs, adjacent runs
 * of equal generation joined), so encoding it gives the same bytes as encoding the dense truth.
 * Cost O(old.length + add.length).
 */
export function mergeRuns(old: readonly Run[], add: readonly Run[]): Run[] {
  const out: Run[] = [];
  const emit = (s: number, e: number, gen: number): void => {
    if (e <= s || gen === 0) return;
    const last = out[out.length - 1];
    if (last && last.start + last.length === s && last.generation === gen) last.length += e - s;
    else out.push({ start: s, length: e - s, generation: gen });
  };
  let i = 0;
  let j = 0;
  let pos = 0;
  for (;;) {
    while (i < old.length && old[i].start + old[i].length <= pos) i++;
    while (j < add.length && add[j].start + add[j].length <= pos) j++;
    if (i >= old.length && j >= add.length) break;
    const o = old[i];
    const a = add[j];
    const inOld = o !== undefined && o.start <= pos;
    const inAdd = a !== undefined && a.start <= pos;
    if (!inOld && !inAdd) {
      // Jump over a stretch that neither list covers.
      pos = Math.min(o ? o.start : Infinity, a ? a.start : Infinity);
      continue;
    }
    const oldNext = o === undefined ? Infinity : inOld ? o.start + o.length : o.start;
    const addNext = a === undefined ? Infinity : inAdd ? a.start + a.length : a.start;
    const end = Math.min(oldNext, addNext);
    const og = inOld ? o.generation : 0;
    const ag = inAdd ? a.generation : 0;
    emit(pos, end, og > ag ? og : ag);
    pos = end;
  }
  return out;
}
