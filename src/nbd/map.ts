// `nbdinfo --map` presentation of block status: the description of each extent type per context, and its line format.
import { CONTEXT_ALLOCATION_DEPTH, CONTEXT_BASE_ALLOCATION, CONTEXT_DIRTY_BITMAP_PREFIX } from './protocol.js';
import type { StatusExtent } from './extents.js';

const BASE_ALLOCATION_TYPES = ['data', 'hole', 'zero', 'hole,zero'];
const DIRTY_BITMAP_TYPES = ['clean', 'dirty'];

/** What a type number means in `context`, as nbdinfo words it; undefined when unknown (then omitted). */
export function describeExtentType(context: string, type: number): string | undefined {
  if (context === CONTEXT_BASE_ALLOCATION) return BASE_ALLOCATION_TYPES[type];
  if (context.startsWith(CONTEXT_DIRTY_BITMAP_PREFIX)) return DIRTY_BITMAP_TYPES[type];
  if (context === CONTEXT_ALLOCATION_DEPTH) {
    return type === 0 ? 'absent' : type === 1 ? 'local' : `backing depth ${type}`;
  }
  return undefined;
}

/** One line in nbdinfo --map's columns: offset (10 wide), length (10), type (3), description. */
export function formatMapLine(context: string, e: StatusExtent): string {
  const d = describeExtentType(context, e.flags);
  return `${String(e.offset).padStart(10)}  ${String(e.length).padStart(10)}  ${String(e.flags).padStart(3)}${d === undefined ? '' : `  ${d}`}`;
}

/** One element of nbdinfo --map --json's array. */
export function formatMapJson(context: string, e: StatusExtent): string {
  const d = describeExtentType(context, e.flags);
  return `{ "offset": ${e.offset}, "length": ${e.length}, "type": ${e.flags}${d === undefined ? '' : `, "description": ${JSON.stringify(d)}`}}`;
}

/** Bytes per output block of MapWriter: big enough that a terabyte map takes a few writes. */
const MAP_BLOCK = 1024 * 1024;
/** Longest line: two 16-digit numbers, a 10-digit type, a description, JSON punctuation. */
const MAX_LINE = 256;
const SPACE = 0x20;
/** "00".."99" as byte pairs. */
const DIGITS2 = Uint8Array.from(Array.from({ length: 100 }, (_, i) => [0x30 + Math.floor(i / 10), 0x30 + (i % 10)]).flat());

/** Decimal digits of 0 <= v < 10^9. */
function smallDigits(v: number): number {
  if (v < 10000) return v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : 4;
  return v < 100000 ? 5 : v < 1000000 ? 6 : v < 10000000 ? 7 : v < 100000000 ? 8 : 9;
}

/**
 * Writes `n` (a non-negative integer below 2^53) right-aligned in `width` columns of `b` at
 * `at` (wider numbers take the room they need); returns the position after it. A plain
 * function on locals: it runs twice per map line, mostly before V8 has optimized it.
 */
function putNum(b: Uint8Array, at: number, n: number, width: number): number {
  // Split at 10^8 so the digit loops run on small integers, two digits per step.
  const hi = n >= 1e8 ? Math.floor(n / 1e8) : 0;
  let lo = (n - hi * 1e8) | 0;
  const digits = hi > 0 ? 8 + smallDigits(hi) : smallDigits(lo);
  for (let i = digits; i < width; i++) b[at++] = SPACE;
  const after = at + digits;
  let end = after;
  if (hi > 0) {
    for (let k = 0; k < 4; k++) {
      const r = lo % 100;
      lo = (lo / 100) | 0;
      b[--end] = DIGITS2[2 * r + 1]!;
      b[--end] = DIGITS2[2 * r]!;
    }
    lo = hi;
  }
  while (lo >= 100) {
    const r = lo % 100;
    lo = (lo / 100) | 0;
    b[--end] = DIGITS2[2 * r + 1]!;
    b[--end] = DIGITS2[2 * r]!;
  }
  if (lo >= 10) {
    b[--end] = DIGITS2[2 * lo + 1]!;
    b[--end] = DIGITS2[2 * lo]!;
  } else b[--end] = 0x30 + lo;
  return after;
}

function bytes(s: string): number[] {
  return [...Buffer.from(s, 'latin1')];
}

const JSON_OFFSET = bytes('{ "offset": ');
const JSON_LENGTH = bytes(', "length": ');
const JSON_TYPE = bytes(', "type": ');
const JSON_DESCRIPTION = bytes(', "description": ');

/**
 * Writes map lines (plain nbdinfo columns, or JSON array elements) straight into byte blocks,
 * merging adjacent extents of one type,
 * without a string per line: `nbd map` of a terabyte bitmap prints hundreds of thousands of
 * lines, and a string per line (plus the garbage collection) made it five times slower than
 * nbdinfo. Everything here is plain byte stores, no native calls per line.
 */
export class MapWriter {
  private buf = Buffer.allocUnsafe(MAP_BLOCK);
  private at = 0;
  private lines = 0;
  /** The run being merged, not yet written. */
  private pending = false;
  private pOffset = 0;
  private pLength = 0;
  private pType = 0;
  private readonly descriptions = new Map<number, number[] | null>();
  private readonly tails = new Map<number, Uint8Array>();
  private readonly small: Array<number[] | null | undefined> = new Array(16).fill(undefined);
  private readonly smallTails: Array<Uint8Array | undefined> = new Array(16).fill(undefined);

  constructor(
    private readonly context: string,
    private readonly json: boolean,
    /** Receives full blocks; the writer never reuses a block it handed over. */
    private readonly sink: (block: Buffer) => void,
  ) {
    if (json) this.put(bytes('[\n'));
  }

  private describe(type: number): number[] | null {
    if (type < 16) {
      const c = this.small[type];
      if (c !== undefined) return c;
    }
    let d = this.descriptions.get(type);
    if (d === undefined) {
      const s = describeExtentType(this.context, type);
      d = s === undefined ? null : bytes(this.json ? JSON.stringify(s) : s);
      this.descriptions.set(type, d);
      if (type < 16) this.small[type] = d;
    }
    return d;
  }

  /** The end of a plain line for `type`: two spaces, the type in 3 columns, the description. */
  private tail(type: number): Uint8Array {
    if (type < 16) {
      const c = this.smallTails[type];
      if (c !== undefined) return c;
    }
    let t = this.tails.get(type);
    if (!t) {
      const d = describeExtentType(this.context, type);
      t = Buffer.from(`  ${String(type).padStart(3)}${d === undefined ? '' : `  ${d}`}\n`, 'latin1');
      this.tails.set(type, t);
      if (type < 16) this.smallTails[type] = t;
    }
    return t;
  }

  private put(b: readonly number[]): void {
    const buf = this.buf;
    let at = this.at;
    for (let i = 0; i < b.length; i++) buf[at++] = b[i]!;
    this.at = at;
  }

  line(e: StatusExtent): void {
    this.extent(e.offset, e.length, e.flags);
  }

  /** Adjacent extents of one type are merged into one line, as nbdinfo prints them. */
  extent(offset: number, length: number, type: number): void {
    if (this.pending && this.pType === type && this.pOffset + this.pLength === offset) {
      this.pLength += length;
      return;
    }
    if (this.pending) this.write(this.pOffset, this.pLength, this.pType);
    this.pending = true;
    this.pOffset = offset;
    this.pLength = length;
    this.pType = type;
  }

  /**
   * One BLOCK_STATUS reply at once: extents from `offset` on, as flat [length, type, …] pairs
   * (what NbdClient.blockStatusRuns yields). The same as extent() on each, in one loop.
   */
  run(offset: number, flat: readonly number[]): void {
    let pending = this.pending;
    let pOffset = this.pOffset;
    let pLength = this.pLength;
    let pType = this.pType;
    let pos = offset;
    for (let i = 0; i < flat.length; i += 2) {
      const length = flat[i]!;
      const type = flat[i + 1]!;
      if (pending && pType === type && pOffset + pLength === pos) {
        pLength += length;
      } else {
        if (pending) this.write(pOffset, pLength, pType);
        pending = true;
        pOffset = pos;
        pLength = length;
        pType = type;
      }
      pos += length;
    }
    this.pending = pending;
    this.pOffset = pOffset;
    this.pLength = pLength;
    this.pType = pType;
  }

  private write(offset: number, length: number, type: number): void {
    if (this.at + MAX_LINE > this.buf.length) this.flush();
    const b = this.buf;
    if (this.json) {
      const d = this.describe(type);
      if (this.lines > 0) {
        b[this.at++] = 0x2c; // ,
        b[this.at++] = 0x0a;
      }
      this.put(JSON_OFFSET);
      this.at = putNum(b, this.at, offset, 0);
      this.put(JSON_LENGTH);
      this.at = putNum(b, this.at, length, 0);
      this.put(JSON_TYPE);
      this.at = putNum(b, this.at, type, 0);
      if (d) {
        this.put(JSON_DESCRIPTION);
        this.put(d);
      }
      b[this.at++] = 0x7d; // }
    } else {
      let at = putNum(b, this.at, offset, 10);
      b[at++] = SPACE;
      b[at++] = SPACE;
      at = putNum(b, at, length, 10);
      // "  TYPE  description\n" is the same for every line of a type: copied whole.
      const tail = this.tail(type);
      for (let i = 0; i < tail.length; i++) b[at++] = tail[i]!;
      this.at = at;
    }
    this.lines++;
  }

  private flush(): void {
    if (this.at === 0) return;
    this.sink(this.buf.subarray(0, this.at));
    this.buf = Buffer.allocUnsafe(MAP_BLOCK);
    this.at = 0;
  }

  /** Closes the JSON array (if any) and hands over what is left. */
  end(): void {
    if (this.pending) this.write(this.pOffset, this.pLength, this.pType);
    this.pending = false;
    if (this.json) this.put(bytes(this.lines ? '\n]\n' : ']\n'));
    this.flush();
  }
}
