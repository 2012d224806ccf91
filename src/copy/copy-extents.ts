// The copy engine: moves extents from one Endpoint to another, pipelined, in bounded memory, skipping or zeroing holes.
import { abortReason } from '../util/abort.js';
import type { Extent } from '../extent/index.js';
import { CONTEXT_BASE_ALLOCATION, NBD_ENOSPC, NBD_STATE_ZERO, NbdCommandError } from '../nbd/index.js';
import type { CopyExtent, Endpoint } from './endpoint.js';

/**
 * Default request shape: 64 requests of 256 KiB in flight (16 MiB of buffers), nbdcopy's own.
 * The shape mostly moves the server's CPU, not ours: reading 2 GiB from qemu-nbd, 16 × 2 MiB
 * cost qemu-nbd 250–300 ticks and 2.1–2.6 s, 64 × 256 KiB 115–155 ticks and 1.3–1.5 s (larger
 * and smaller requests both did worse; see bench/nbd-read.ts).
 */
export const DEFAULT_REQUEST_SIZE = 256 * 1024;
export const DEFAULT_INFLIGHT = 64;

export interface CopyProgress {
  /** Bytes of the extents handled so far (copied, zeroed or skipped). */
  done: number;
  /** Bytes actually read from the source. */
  read: number;
  /** Bytes written to the destination as data. */
  written: number;
  /** Bytes handled as zeroes (written as zeroes or skipped on a zero-initialized target). */
  zeroed: number;
  /**
   * For extents given in ascending order: every byte of them below this offset has been handled
   * (pieces end out of order; this is the end of the longest finished run from the start). What
   * an interrupted copy can resume from.
   */
  doneBelow: number;
}

export interface CopyOptions {
  requestSize?: number;
  /** Requests in flight (each holds one buffer of requestSize). */
  inflight?: number;
  onProgress?(p: Readonly<CopyProgress>): void;
  /**
   * The job's signal: no new request starts once it aborts, and the copy rejects with its reason
   * once the requests in flight have ended. Give the same signal to the endpoints (NbdEndpoint,
   * serveImage, openImageEndpoint) so that those fail at once instead of running to completion.
   */
  signal?: AbortSignal;
}

/**
 * Copies `extents` (sorted or not; each is read as a whole, cut into requests) from `src` to
 * `dst`. Ranges marked `zero`, and holes the source reports while reading, are not written to
 * a zero-initialized destination and become zero writes otherwise. Resolves with the totals;
 * the destination is not flushed (call dst.flush()).
 */
export async function copyExtents(
  src: Endpoint, dst: Endpoint, extents: Iterable<CopyExtent> | AsyncIterable<CopyExtent>, opts: CopyOptions = {},
): Promise<CopyProgress> {
  const align = Math.max(src.alignment, dst.alignment);
  let requestSize = Math.min(opts.requestSize ?? DEFAULT_REQUEST_SIZE, src.maxRequest, dst.maxRequest);
  requestSize = Math.max(align, requestSize - (requestSize % align));
  const inflight = Math.max(1, opts.inflight ?? DEFAULT_INFLIGHT);
  const progress: CopyProgress = { done: 0, read: 0, written: 0, zeroed: 0, doneBelow: 0 };
  // Pieces handed out and not yet part of the finished run from the start, in the order handed out.
  const pending: { end: number; finished: boolean }[] = [];
  let head = 0;
  const finish = (entry: { end: number; finished: boolean }) => {
    entry.finished = true;
    while (head < pending.length && pending[head]!.finished) progress.doneBelow = pending[head++]!.end;
    if (head > 1024 && head * 2 > pending.length) { pending.splice(0, head); head = 0; }
  };
  const pieces = cut(extents, requestSize, Math.min(src.size, dst.size));
  let failure: unknown;
  const signal = opts.signal;

  const zero = async (offset: number, length: number) => {
    if (!dst.zeroInitialized) await dst.zero(offset, length);
    progress.zeroed += length;
  };

  const discard = dst.discardsData && src.readDiscard ? src.readDiscard.bind(src) : undefined;

  const worker = async () => {
    let buf: Buffer | undefined;
    for (;;) {
      if (failure !== undefined) return;
      if (signal?.aborted) throw abortReason(signal, `copy from ${src.name} to ${dst.name}`);
      const next = await pieces.next();
      if (next.done) return;
      const p = next.value;
      const entry = { end: p.offset + p.length, finished: false };
      pending.push(entry);
      if (p.zero) {
        await zero(p.offset, p.length);
      } else if (discard) {
        // The destination keeps nothing: read through the source's one reused buffer.
        await discard(p.offset, p.length);
        progress.read += p.length;
        progress.written += p.length;
      } else {
        buf ??= Buffer.allocUnsafe(requestSize);
        const view = buf.subarray(0, p.length);
        const { holes } = await src.read(view, p.offset);
        progress.read += p.length;
        if (holes.length === 0) {
          await dst.write(view, p.offset);
          progress.written += p.length;
        } else {
          // Write the data between holes; zero (or skip) the holes.
          let pos = p.offset;
          for (const h of holes) {
            if (h.offset > pos) {
              await dst.write(view.subarray(pos - p.offset, h.offset - p.offset), pos);
              progress.written += h.offset - pos;
            }
            await zero(h.offset, h.length);
            pos = h.offset + h.length;
          }
          if (pos < p.offset + p.length) {
            await dst.write(view.subarray(pos - p.offset), pos);
            progress.written += p.offset + p.length - pos;
          }
        }
      }
      progress.done += p.length;
      finish(entry);
      opts.onProgress?.(progress);
    }
  };

  const run = async () => {
    try {
      await worker();
    } catch (err) {
      failure ??= err;
    }
  };
  await Promise.all(Array.from({ length: inflight }, run));
  // An abort is the reason, whatever the requests it cut short failed with on the way.
  if (signal?.aborted) throw abortReason(signal, `copy from ${src.name} to ${dst.name}`);
  if (failure !== undefined) throw failure;
  return progress;
}

/** Serializes extents into request-sized pieces for concurrent workers (one `next()` at a time). */
function cut(extents: Iterable<CopyExtent> | AsyncIterable<CopyExtent>, size: number, limit: number): { next(): Promise<IteratorResult<CopyExtent>> } {
  const it = (Symbol.asyncIterator in extents ? extents[Symbol.asyncIterator]() : (extents as Iterable<CopyExtent>)[Symbol.iterator]()) as
    AsyncIterator<CopyExtent> | Iterator<CopyExtent>;
  let cur: CopyExtent | undefined;
  let pos = 0;
  let chain: Promise<unknown> = Promise.resolve();
  const step = async (): Promise<IteratorResult<CopyExtent>> => {
    for (;;) {
      if (cur && pos < cur.offset + cur.length) {
        // Zero ranges need no buffer: hand them out whole.
        const end = cur.zero ? cur.offset + cur.length : Math.min(cur.offset + cur.length, (Math.floor(pos / size) + 1) * size);
        const piece: CopyExtent = { offset: pos, length: end - pos, zero: cur.zero };
        pos = end;
        return { done: false, value: piece };
      }
      const r = await it.next();
      if (r.done) return { done: true, value: undefined };
      const e = r.value;
      if (e.offset < 0 || e.length < 0 || e.offset + e.length > limit) {
        throw new RangeError(`extent [${e.offset}, +${e.length}) lies outside the ${limit} bytes both endpoints have`);
      }
      cur = e;
      pos = e.offset;
    }
  };
  return {
    next() {
      const p = chain.then(step);
      chain = p.catch(() => {});
      return p;
    },
  };
}

/**
 * The whole of `src` as copy extents: from base:allocation when the source offers it (zero
 * ranges marked, so they are not read), else one data extent.
 */
export async function* wholeDisk(src: Endpoint): AsyncGenerator<CopyExtent> {
  if (!src.extents || !src.hasExtents?.(CONTEXT_BASE_ALLOCATION)) {
    yield { offset: 0, length: src.size };
    return;
  }
  let last: CopyExtent | undefined;
  for await (const e of src.extents(CONTEXT_BASE_ALLOCATION)) {
    const zero = Boolean(e.flags & NBD_STATE_ZERO);
    if (last && last.zero === zero && last.offset + last.length === e.offset) {
      last.length += e.length;
      continue;
    }
    if (last) yield last;
    last = { offset: e.offset, length: e.length, zero };
  }
  if (last) yield last;
}

/** Plain extents (e.g. dirty ranges) as copy extents that must all be read. */
export function dataExtents(extents: Iterable<Extent>): CopyExtent[] {
  return [...extents].map((e) => ({ offset: e.offset, length: e.length }));
}

/** True when `err` (or a cause) says the disk is full: NBD ENOSPC from qemu-nbd, or a file system ENOSPC. */
export function isNoSpace(err: unknown): boolean {
  for (let e: unknown = err, i = 0; e && i < 8; e = (e as { cause?: unknown }).cause, i++) {
    if (e instanceof NbdCommandError && e.errno === NBD_ENOSPC) return true;
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC') return true;
    if (/No space left on device|ENOSPC/i.test((e as Error).message ?? '')) return true;
  }
  return false;
}
