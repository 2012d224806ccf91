// The checksum of the data a backup copied, computed while copying and again by `verify`.
//
// Definition (manifest `digest.algorithm` = "sha256-segments-v1", `digest.segment` = S = 1 MiB):
// the copied extents are sorted and cut into segments at every multiple of S (a segment is the
// part of one extent inside one S-aligned cell). For each segment in ascending offset order,
// the record offset (u64 big-endian) ‖ length (u64 big-endian) ‖ SHA-256(the segment's bytes)
// is appended; the checksum is the SHA-256 of all records, in hex. Holes read as zero bytes.
//
// Segments let the copy engine's workers finish in any order: each segment is hashed by the one
// worker that copies it (a piece of the copy never splits a segment, because pieces are cut at
// multiples of the request size, itself a multiple of S), and only the 48-byte records wait to be
// folded in order.
import { createHash, type Hash } from 'node:crypto';
import type { CopyExtent, Endpoint, EndpointReadResult } from '../copy/index.js';
import type { StatusExtent } from '../nbd/index.js';

export const DIGEST_ALGORITHM = 'sha256-segments-v1';
export const DIGEST_SEGMENT = 1024 * 1024;

const ZEROES = Buffer.alloc(DIGEST_SEGMENT);

interface Open {
  hash: Hash;
  start: number;
  end: number;
  fed: number;
}

/**
 * Tracks the extents handed to copyExtents (`track`) and sees every byte that reaches the
 * destination (`wrap`); `finish()` gives the checksum once the copy is done.
 */
export class ExtentDigest {
  /** Data extents in the order handed out (sorted, disjoint): also what the manifest lists. */
  readonly extents: [number, number][] = [];
  private open = new Map<number, Open>();
  private done = new Map<number, Buffer>();
  private readonly outer = createHash('sha256');
  /** Next segment to fold: index into extents and offset. */
  private foldExtent = 0;
  private foldAt: number | undefined;
  private failure: Error | undefined;

  /**
   * Passes extents through to the copy engine, recording those that are read (zero-marked ones
   * are known zeroes in a fresh image and are not part of the data copied).
   */
  async *track(source: Iterable<CopyExtent> | AsyncIterable<CopyExtent>): AsyncGenerator<CopyExtent> {
    for await (const e of source as AsyncIterable<CopyExtent>) {
      if (!e.zero && e.length > 0) {
        const last = this.extents[this.extents.length - 1];
        if (last && e.offset < last[0] + last[1]) throw new RangeError(`extents must be sorted and disjoint: ${e.offset} after ${last[0]}+${last[1]}`);
        this.extents.push([e.offset, e.length]);
        if (this.foldAt === undefined && this.foldExtent === this.extents.length - 1) this.foldAt = e.offset;
      }
      yield e;
    }
  }

  /** The extent containing `offset`, by binary search. */
  private extentAt(offset: number): [number, number] | undefined {
    let lo = 0;
    let hi = this.extents.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const [o, l] = this.extents[mid]!;
      if (offset < o) hi = mid - 1;
      else if (offset >= o + l) lo = mid + 1;
      else return this.extents[mid];
    }
    return undefined;
  }

  /** Feeds bytes at `offset` (`buf` undefined: `length` zero bytes). Ranges outside tracked extents are ignored. */
  feed(offset: number, length: number, buf?: Uint8Array): void {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const ext = this.extentAt(pos);
      if (!ext) return; // a zero-marked range: not part of the data copied
      const cell = Math.floor(pos / DIGEST_SEGMENT) * DIGEST_SEGMENT;
      const start = Math.max(ext[0], cell);
      const segEnd = Math.min(ext[0] + ext[1], cell + DIGEST_SEGMENT);
      let seg = this.open.get(start);
      if (!seg) {
        seg = { hash: createHash('sha256'), start, end: segEnd, fed: 0 };
        this.open.set(start, seg);
      }
      if (pos !== start + seg.fed) {
        this.fail(new Error(`digest: bytes at ${pos} arrived out of order (segment ${start} has ${seg.fed} bytes)`));
        return;
      }
      const n = Math.min(end, segEnd) - pos;
      if (buf) seg.hash.update(buf.subarray(pos - offset, pos - offset + n));
      else for (let z = n; z > 0; z -= ZEROES.length) seg.hash.update(ZEROES.subarray(0, Math.min(z, ZEROES.length)));
      seg.fed += n;
      pos += n;
      if (seg.start + seg.fed === seg.end) {
        this.open.delete(start);
        const rec = Buffer.alloc(48);
        rec.writeBigUInt64BE(BigInt(seg.start), 0);
        rec.writeBigUInt64BE(BigInt(seg.end - seg.start), 8);
        seg.hash.digest().copy(rec, 16);
        this.done.set(seg.start, rec);
        this.foldReady();
      }
    }
  }

  private foldReady(): void {
    while (this.foldAt !== undefined) {
      const rec = this.done.get(this.foldAt);
      if (!rec) return;
      this.done.delete(this.foldAt);
      this.outer.update(rec);
      const ext = this.extents[this.foldExtent]!;
      const next = Math.min(ext[0] + ext[1], (Math.floor(this.foldAt / DIGEST_SEGMENT) + 1) * DIGEST_SEGMENT);
      if (next < ext[0] + ext[1]) {
        this.foldAt = next;
      } else {
        this.foldExtent++;
        this.foldAt = this.extents[this.foldExtent]?.[0];
      }
    }
  }

  private fail(err: Error): void {
    this.failure ??= err;
  }

  /** The checksum; throws when bytes are missing or arrived out of order. */
  finish(): string {
    if (this.failure) throw this.failure;
    if (this.open.size > 0 || this.done.size > 0 || this.foldExtent < this.extents.length) {
      throw new Error(`digest: ${this.open.size + this.done.size} segments incomplete, ${this.extents.length - this.foldExtent} extents not folded`);
    }
    return this.outer.digest('hex');
  }

  /** Total bytes of the tracked extents. */
  get bytes(): number {
    return this.extents.reduce((s, [, l]) => s + l, 0);
  }

  /** `dst` with every write and zero seen by the digest first (zeroes reach `dst` only if it needs them). */
  wrap(dst: Endpoint): Endpoint {
    return new DigestingEndpoint(dst, this);
  }
}

class DigestingEndpoint implements Endpoint {
  // The engine must hand us every hole, so that the digest sees it: we never claim zero-initialized.
  readonly zeroInitialized = false;

  constructor(private readonly inner: Endpoint, private readonly digest: ExtentDigest) {}

  get name() { return this.inner.name; }
  get size() { return this.inner.size; }
  get alignment() { return this.inner.alignment; }
  get maxRequest() {
    // Pieces must not split a digest segment: requests are whole multiples of the segment size.
    const m = this.inner.maxRequest;
    return m >= DIGEST_SEGMENT ? m - (m % DIGEST_SEGMENT) : m;
  }

  read(buf: Uint8Array, offset: number): Promise<EndpointReadResult> {
    return this.inner.read(buf, offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.digest.feed(offset, buf.length, buf);
    await this.inner.write(buf, offset);
  }

  async zero(offset: number, length: number): Promise<void> {
    this.digest.feed(offset, length);
    if (!this.inner.zeroInitialized) await this.inner.zero(offset, length);
  }

  flush() { return this.inner.flush(); }
  close() { return this.inner.close(); }
  extents(context: string, offset?: number, length?: number): AsyncIterable<StatusExtent> {
    if (!this.inner.extents) throw new Error(`${this.inner.name} has no block status`);
    return this.inner.extents(context, offset, length);
  }
  hasExtents(context: string): boolean {
    return this.inner.hasExtents?.(context) ?? false;
  }
}
