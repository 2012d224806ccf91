// The checksum of the data a backup copied, computed while copying and again by `verify`.
//
// Definition (manifest `digest.algorithm` = "sha256-segments-v1", `digest.segment` = S = 1 MiB):
// the copied extents are sorted and cut into segments at every multiple of S (a segment is the
// part of one extent inside one S-aligned cell). For each segment in ascending offset order,
// the record offset (u64 big-endian) ‖ length (u64 big-endian) ‖ SHA-256(the segment's bytes)
// is appended; the checksum is the SHA-256 of all records, in hex. Holes read as zero bytes.
//
// Segments let the copy engine's workers finish in any order: a segment's bytes are hashed in
// order (pieces of one segment that arrive early wait, already copied, for the piece before them),
// and only the 48-byte records wait to be folded in order. Requests may be smaller than S.
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { digestingEndpoint, type CopyExtent, type Endpoint } from '../copy/index.js';

export const DIGEST_ALGORITHM = 'sha256-segments-v1';
export const DIGEST_SEGMENT = 1024 * 1024;

/**
 * SHA-256 of the segments runs on a worker thread, so hashing (about 1 GB/s here) overlaps the
 * copy's I/O instead of stalling the event loop: measured on 256 MiB read from a fleecing
 * export, 470 ms with inline hashing against 210 ms without any. The code is inline (eval) so
 * that it runs the same from dist/ and from the TypeScript sources under the test runner.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const zero = Buffer.alloc(${DIGEST_SEGMENT});
const open = new Map();
parentPort.on('message', (m) => {
  const key = m.id + ':' + m.start;
  let h = open.get(key);
  if (!h) { h = createHash('sha256'); open.set(key, h); }
  if (m.buf) h.update(new Uint8Array(m.buf));
  else for (let n = m.zeros; n > 0; n -= zero.length) h.update(zero.subarray(0, Math.min(n, zero.length)));
  const bytes = m.buf ? m.buf.byteLength : 0;
  if (m.last) { open.delete(key); parentPort.postMessage({ id: m.id, start: m.start, digest: h.digest(), bytes }); }
  else parentPort.postMessage({ id: m.id, start: m.start, bytes });
});
`;

interface WorkerReply {
  id: number;
  start: number;
  digest?: Uint8Array;
  bytes: number;
}

/**
 * One hashing thread for every digest in the process (a backup of several disks, verify): a
 * thread per digest would cost a V8 isolate each. Started on first use, never keeps the process
 * alive, and stopped after IDLE_STOP_MS without a digest: its isolate keeps the garbage of every
 * byte it hashed (~100 MiB of virtcbtd's RSS after a full backup of two 1 GiB disks) until then.
 */
interface SharedHasher { worker: Worker; digests: Map<number, ExtentDigest>; pending: number; idleTimer?: NodeJS.Timeout }
let shared: SharedHasher | undefined;
let nextId = 1;
const IDLE_STOP_MS = 5_000;

function sharedWorker(): SharedHasher {
  if (shared) {
    clearTimeout(shared.idleTimer);
    shared.idleTimer = undefined;
    return shared;
  }
  const worker = new Worker(WORKER_SOURCE, { eval: true });
  const s: SharedHasher = { worker, digests: new Map<number, ExtentDigest>(), pending: 0 };
  worker.on('message', (m: WorkerReply) => {
    // Referenced only while it has work: an idle thread must not keep a CLI process alive, a busy one must.
    if (--s.pending === 0) {
      worker.unref();
      stopWhenIdle(s);
    }
    s.digests.get(m.id)?.onReply(m);
  });
  worker.on('error', (err) => {
    for (const d of s.digests.values()) d.onError(err);
    if (shared === s) shared = undefined;
  });
  worker.on('exit', () => { if (shared === s) shared = undefined; });
  worker.unref();
  shared = s;
  return s;
}

/** The shared hashing thread's id while it runs (for tests and diagnostics). */
export function hashingThreadId(): number | undefined {
  return shared?.worker.threadId;
}

/** Stops the shared thread once no digest has used it for IDLE_STOP_MS. */
function stopWhenIdle(s: SharedHasher): void {
  if (s.digests.size > 0 || s.pending > 0 || s.idleTimer) return;
  s.idleTimer = setTimeout(() => {
    if (shared !== s || s.digests.size > 0 || s.pending > 0) return;
    shared = undefined;
    void s.worker.terminate();
  }, IDLE_STOP_MS);
  s.idleTimer.unref();
}

/** Bytes handed to the worker and not hashed yet, above which writers wait (bounds memory). */
const MAX_QUEUED = 16 * 1024 * 1024;

interface Open {
  start: number;
  end: number;
  fed: number;
  /** Pieces that arrived before the bytes in front of them, by offset (copied data, or a zero count). */
  early?: Map<number, Uint8Array | number>;
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
  private readonly id = nextId++;
  private hasherState?: SharedHasher;
  private queued = 0;
  private waiting: (() => void)[] = [];
  private inWorker = 0;
  private idle?: () => void;

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

  private hasher(): SharedHasher {
    if (this.hasherState) return this.hasherState;
    const s = sharedWorker();
    s.digests.set(this.id, this);
    this.hasherState = s;
    return s;
  }

  /** @internal A reply from the hashing thread. */
  onReply(m: WorkerReply): void {
    this.inWorker--;
    if (m.digest) {
      const seg = this.open.get(m.start);
      if (seg) {
        this.open.delete(m.start);
        const rec = Buffer.alloc(48);
        rec.writeBigUInt64BE(BigInt(seg.start), 0);
        rec.writeBigUInt64BE(BigInt(seg.end - seg.start), 8);
        Buffer.from(m.digest).copy(rec, 16);
        this.done.set(seg.start, rec);
        this.foldReady();
      }
    }
    this.release(m.bytes);
  }

  /** @internal The hashing thread died. */
  onError(err: Error): void {
    this.fail(err);
    this.inWorker = 0;
    this.release(this.queued);
  }

  private release(bytes: number): void {
    this.queued -= bytes;
    while (this.queued < MAX_QUEUED && this.waiting.length > 0) this.waiting.shift()!();
    if (this.inWorker === 0) this.idle?.();
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

  /**
   * Feeds bytes at `offset` (`buf` undefined: `length` zero bytes); ranges outside tracked
   * extents are ignored. The bytes are copied: `buf` may be reused once this returns. Resolves
   * at once unless the hashing has fallen far behind.
   */
  feed(offset: number, length: number, buf?: Uint8Array): Promise<void> | undefined {
    const w = this.hasher();
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const ext = this.extentAt(pos);
      if (!ext) break; // a zero-marked range: not part of the data copied
      const cell = Math.floor(pos / DIGEST_SEGMENT) * DIGEST_SEGMENT;
      const start = Math.max(ext[0], cell);
      const segEnd = Math.min(ext[0] + ext[1], cell + DIGEST_SEGMENT);
      let seg = this.open.get(start);
      if (!seg) {
        seg = { start, end: segEnd, fed: 0 };
        this.open.set(start, seg);
      }
      const n = Math.min(end, segEnd) - pos;
      let piece: Uint8Array | number = n;
      if (buf) {
        piece = new Uint8Array(n);
        piece.set(buf.subarray(pos - offset, pos - offset + n));
        this.queued += n;
      }
      if (pos < start + seg.fed || seg.early?.has(pos)) {
        this.fail(new Error(`digest: bytes at ${pos} arrived twice (segment ${start} has ${seg.fed} bytes)`));
        return undefined;
      }
      if (pos !== start + seg.fed) {
        (seg.early ??= new Map()).set(pos, piece);
      } else {
        this.post(w, seg, piece);
        for (let next = seg.early?.get(start + seg.fed); next !== undefined; next = seg.early?.get(start + seg.fed)) {
          seg.early!.delete(start + seg.fed);
          this.post(w, seg, next);
        }
      }
      pos += n;
    }
    if (this.queued < MAX_QUEUED) return undefined;
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Hands the next piece of `seg` (in order) to the hashing thread. */
  private post(sh: SharedHasher, seg: Open, piece: Uint8Array | number): void {
    const n = typeof piece === 'number' ? piece : piece.byteLength;
    seg.fed += n;
    const last = seg.start + seg.fed === seg.end;
    this.inWorker++;
    // The thread this digest started on, even if it died since (its error then fails the digest).
    if (sh.pending++ === 0) sh.worker.ref();
    if (typeof piece === 'number') sh.worker.postMessage({ id: this.id, start: seg.start, zeros: piece, last });
    else sh.worker.postMessage({ id: this.id, start: seg.start, buf: piece.buffer, last }, [piece.buffer as ArrayBuffer]);
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

  /** The checksum, once the worker has hashed everything; throws when bytes are missing or arrived out of order. */
  async finish(): Promise<string> {
    try {
      if (this.inWorker > 0 && !this.failure) await new Promise<void>((resolve) => { this.idle = resolve; });
    } finally {
      this.detach();
    }
    if (this.failure) throw this.failure;
    if (this.open.size > 0 || this.done.size > 0 || this.foldExtent < this.extents.length) {
      throw new Error(`digest: ${this.open.size + this.done.size} segments incomplete, ${this.extents.length - this.foldExtent} extents not folded`);
    }
    return this.outer.digest('hex');
  }

  /** Stops the worker without a result (after a failed copy). */
  async abandon(): Promise<void> {
    this.detach();
  }

  /** Stops listening to the shared thread (what it still sends for this digest is dropped). */
  private detach(): void {
    const s = this.hasherState;
    if (!s) return;
    s.digests.delete(this.id);
    this.hasherState = undefined;
    stopWhenIdle(s);
  }

  /** Total bytes of the tracked extents. */
  get bytes(): number {
    return this.extents.reduce((s, [, l]) => s + l, 0);
  }

  /** `dst` with every write and zero seen by the digest first (the copy room's digestingEndpoint). */
  wrap(dst: Endpoint): Endpoint {
    return digestingEndpoint(dst, this);
  }
}
