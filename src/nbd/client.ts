// The typed NBD client: connect by URI, read/write/zero/trim/flush, block status walks, several connections with multi-conn.
import { NbdConnection, type ConnectionOptions } from './connection.js';
import { NbdProtocolError, NbdUnsupportedError } from './errors.js';
import type { BlockSize, ExportInfo, ExportListing, ServerDescription } from './handshake.js';
import type { Extent } from '../extent/index.js';
import type { StatusExtent } from './extents.js';
import {
  DEFAULT_MAX_PAYLOAD, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY, NBD_FLAG_ROTATIONAL, NBD_FLAG_SEND_CACHE, NBD_FLAG_SEND_DF, NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES,
} from './protocol.js';
import type { InflightRequest } from './reply-parser.js';
import { parseNbdUri, type NbdTarget } from './uri.js';

export interface NbdClientOptions extends ConnectionOptions {
  /** Connections to open when the server sets NBD_FLAG_CAN_MULTI_CONN (default 1). */
  connections?: number;
}

/** One BLOCK_STATUS reply: extents from `offset` on, as flat [length, flags, …] pairs. */
export interface ExtentRun {
  offset: number;
  extents: number[];
}

export interface ReadResult {
  /** Ranges the server reported as holes (already zero in the buffer); empty for plain data. */
  holes: readonly Extent[];
}

export interface WriteOptions {
  /** Force unit access: the write is durable when it completes. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Allocate the zeroes rather than punching a hole. */
  noHole?: boolean;
  /** Fail fast (ENOTSUP) instead of writing zeroes slowly. */
  fastZero?: boolean;
}

/** Transmission flags, decoded. */
export interface ExportFlags {
  readOnly: boolean;
  canFlush: boolean;
  canFua: boolean;
  rotational: boolean;
  canTrim: boolean;
  canZero: boolean;
  canDf: boolean;
  canMultiConn: boolean;
  canCache: boolean;
  canFastZero: boolean;
}

export function decodeFlags(f: number): ExportFlags {
  return {
    readOnly: Boolean(f & NBD_FLAG_READ_ONLY),
    canFlush: Boolean(f & NBD_FLAG_SEND_FLUSH),
    canFua: Boolean(f & NBD_FLAG_SEND_FUA),
    rotational: Boolean(f & NBD_FLAG_ROTATIONAL),
    canTrim: Boolean(f & NBD_FLAG_SEND_TRIM),
    canZero: Boolean(f & NBD_FLAG_SEND_WRITE_ZEROES),
    canDf: Boolean(f & NBD_FLAG_SEND_DF),
    canMultiConn: Boolean(f & NBD_FLAG_CAN_MULTI_CONN),
    canCache: Boolean(f & NBD_FLAG_SEND_CACHE),
    canFastZero: Boolean(f & NBD_FLAG_SEND_FAST_ZERO),
  };
}

const NO_HOLES: readonly Extent[] = Object.freeze([]);
/**
 * Length of one BLOCK_STATUS request: just under the 32-bit length limit and a multiple of
 * any block size up to 1 MiB, so QEMU answers a sparse terabyte in about 256 requests.
 */
const BLOCK_STATUS_REQUEST = 2 ** 32 - 2 ** 20;
/** BLOCK_STATUS requests kept in flight while a walk's consumer works on earlier extents. */
const BLOCK_STATUS_WINDOW = 8;
/** WRITE_ZEROES / TRIM length per request: a multiple of every block size below 2^32. */
const ZERO_REQUEST = 2 ** 30;

function toTarget(t: string | NbdTarget): NbdTarget {
  return typeof t === 'string' ? parseNbdUri(t) : t;
}

export class NbdClient implements AsyncDisposable {
  private readonly conns: NbdConnection[];
  readonly info: ExportInfo;
  readonly flags: ExportFlags;
  /** Largest READ/WRITE payload per request (the server's maximum block size, aligned). */
  readonly maxRequest: number;
  private closing: Promise<void> | undefined;

  private constructor(conns: NbdConnection[]) {
    this.conns = conns;
    this.info = conns[0]!.info;
    this.flags = decodeFlags(this.info.flags);
    const bs = this.info.blockSize;
    const max = this.info.blockSizeStated ? bs.max : DEFAULT_MAX_PAYLOAD;
    this.maxRequest = Math.max(bs.min, Math.floor(max / bs.min) * bs.min);
  }

  /** Connects to `nbd…://` URI or a parsed target; with `connections > 1` and multi-conn, opens that many. */
  static async connect(target: string | NbdTarget, opts: NbdClientOptions = {}): Promise<NbdClient> {
    const t = toTarget(target);
    const first = await NbdConnection.open(t, opts);
    const conns = [first];
    const want = Math.max(1, opts.connections ?? 1);
    if (want > 1 && first.info.flags & NBD_FLAG_CAN_MULTI_CONN) {
      const more = await Promise.allSettled(Array.from({ length: want - 1 }, () => NbdConnection.open(t, opts)));
      for (const m of more) if (m.status === 'fulfilled') conns.push(m.value);
      const bad = more.find((m): m is PromiseRejectedResult => m.status === 'rejected');
      if (bad) {
        await Promise.allSettled(conns.map((c) => c.disconnect()));
        throw bad.reason;
      }
    }
    return new NbdClient(conns);
  }

  /** What the export offers (size, flags, block sizes, every metadata context) without entering transmission. */
  static describe(target: string | NbdTarget, opts: ConnectionOptions = {}): Promise<ServerDescription> {
    return NbdConnection.describe(toTarget(target), opts);
  }

  /** The exports a server lists (NBD_OPT_LIST). */
  static list(target: string | NbdTarget, opts: ConnectionOptions = {}): Promise<ExportListing[]> {
    return NbdConnection.list(toTarget(target), opts);
  }

  get size(): number {
    return this.info.size;
  }

  get blockSize(): BlockSize {
    return this.info.blockSize;
  }

  get exportName(): string {
    return this.info.exportName;
  }

  get connections(): number {
    return this.conns.length;
  }

  /** The URI-like description used in messages. */
  get what(): string {
    return this.conns[0]!.what;
  }

  /** Negotiated metadata contexts (name → id). */
  get metaContexts(): ReadonlyMap<string, number> {
    return this.info.metaContexts;
  }

  private pick(): NbdConnection {
    let best = this.conns[0]!;
    for (let i = 1; i < this.conns.length; i++) if (this.conns[i]!.inflight < best.inflight) best = this.conns[i]!;
    return best;
  }

  private checkRange(op: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new RangeError(`NBD ${op}: offset ${offset} and length ${length} must be non-negative integers`);
    }
    if (offset + length > this.size) {
      throw new RangeError(`NBD ${op} [${offset}, +${length}) runs past the end of the ${this.size}-byte export ${this.what}`);
    }
    const min = this.info.blockSize.min;
    if (min > 1 && (offset % min || length % min)) {
      throw new RangeError(`NBD ${op} [${offset}, +${length}) is not aligned to the export's minimum block size ${min}`);
    }
  }

  private checkWritable(op: string): void {
    if (this.flags.readOnly) {
      throw new NbdUnsupportedError(`NBD ${op}: export ${this.what} is read-only`, { hint: 'export it writable (qemu-nbd without -r, block-export-add writable:true)' });
    }
  }

  /** Pieces of at most maxRequest bytes, each sent as its own request. */
  private async pieces(offset: number, length: number, max: number, fn: (off: number, len: number, at: number) => Promise<unknown>): Promise<void> {
    if (length <= max) {
      await fn(offset, length, 0);
      return;
    }
    const all: Promise<unknown>[] = [];
    for (let at = 0; at < length; at += max) all.push(fn(offset + at, Math.min(max, length - at), at));
    const results = await Promise.allSettled(all);
    const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (bad) throw bad.reason;
  }

  /** Reads buf.length bytes at `offset` into `buf`. Holes come back zeroed and listed. */
  async pread(buf: Uint8Array, offset: number): Promise<ReadResult> {
    this.checkRange('read', offset, buf.length);
    if (buf.length === 0) return { holes: NO_HOLES };
    let holes: Extent[] | undefined;
    await this.pieces(offset, buf.length, this.maxRequest, async (off, len, at) => {
      const req = await this.pick().request(NBD_CMD_READ, 0, off, len, { buf: buf.subarray(at, at + len) });
      if (req.holes) {
        holes ??= [];
        for (let i = 0; i < req.holes.length; i += 2) holes.push({ offset: req.holes[i]!, length: req.holes[i + 1]! });
      }
    });
    if (!holes) return { holes: NO_HOLES };
    holes.sort((a, b) => a.offset - b.offset);
    return { holes };
  }

  /**
   * Reads [offset, offset+length) and drops the data as it arrives, into one reused buffer:
   * what copying to null: needs (the bytes still cross the socket and are checked), and a way
   * to prove a range readable. Resolves with the holes the server reported.
   */
  async readDiscard(offset: number, length: number): Promise<ReadResult> {
    this.checkRange('read', offset, length);
    if (length === 0) return { holes: NO_HOLES };
    let holes: Extent[] | undefined;
    await this.pieces(offset, length, this.maxRequest, async (off, len) => {
      const req = await this.pick().request(NBD_CMD_READ, 0, off, len);
      if (req.holes) {
        holes ??= [];
        for (let i = 0; i < req.holes.length; i += 2) holes.push({ offset: req.holes[i]!, length: req.holes[i + 1]! });
      }
    });
    if (!holes) return { holes: NO_HOLES };
    holes.sort((a, b) => a.offset - b.offset);
    return { holes };
  }

  /** Writes `buf` at `offset`. Do not change `buf` until this resolves: it is sent without a copy. */
  async pwrite(buf: Uint8Array, offset: number, opts: WriteOptions = {}): Promise<void> {
    this.checkWritable('write');
    this.checkRange('write', offset, buf.length);
    if (buf.length === 0) return;
    const flags = opts.fua && this.flags.canFua ? NBD_CMD_FLAG_FUA : 0;
    await this.pieces(offset, buf.length, this.maxRequest, (off, len, at) =>
      this.pick().request(NBD_CMD_WRITE, flags, off, len, { payload: buf.subarray(at, at + len) }),
    );
  }

  /** Writes zeroes over [offset, offset+length) without sending them (NBD_CMD_WRITE_ZEROES). */
  async writeZeroes(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.checkWritable('write zeroes');
    this.checkRange('write zeroes', offset, length);
    if (!this.flags.canZero) throw new NbdUnsupportedError(`NBD export ${this.what} does not support WRITE_ZEROES`);
    if (opts.fastZero && !this.flags.canFastZero) throw new NbdUnsupportedError(`NBD export ${this.what} does not support fast zero`);
    const flags = (opts.fua && this.flags.canFua ? NBD_CMD_FLAG_FUA : 0) |
      (opts.noHole ? NBD_CMD_FLAG_NO_HOLE : 0) | (opts.fastZero ? NBD_CMD_FLAG_FAST_ZERO : 0);
    if (length === 0) return;
    await this.pieces(offset, length, ZERO_REQUEST, (off, len) => this.pick().request(NBD_CMD_WRITE_ZEROES, flags, off, len));
  }

  /** Discards [offset, offset+length) (NBD_CMD_TRIM); reads of it may then return anything. */
  async trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    this.checkWritable('trim');
    this.checkRange('trim', offset, length);
    if (!this.flags.canTrim) throw new NbdUnsupportedError(`NBD export ${this.what} does not support TRIM`);
    if (length === 0) return;
    const flags = opts.fua && this.flags.canFua ? NBD_CMD_FLAG_FUA : 0;
    await this.pieces(offset, length, ZERO_REQUEST, (off, len) => this.pick().request(NBD_CMD_TRIM, flags, off, len));
  }

  /** Makes completed writes durable. With several connections, one flush covers all (multi-conn). */
  async flush(): Promise<void> {
    if (!this.flags.canFlush) return;
    await this.pick().request(NBD_CMD_FLUSH, 0, 0, 0);
  }

  /**
   * Walks [offset, offset+length) with BLOCK_STATUS on `context`, yielding extents in order
   * and without gaps; requests stay within 32-bit lengths, a few in flight, and a short answer
   * is followed up where it stopped.
   */
  async *blockStatus(context: string, offset = 0, length?: number): AsyncGenerator<StatusExtent> {
    for await (const batch of this.blockStatusBatches(context, offset, length)) yield* batch;
  }

  /** The same walk as blockStatus(), one array per server reply (one await per reply, not per extent). */
  async *blockStatusBatches(context: string, offset = 0, length?: number): AsyncGenerator<StatusExtent[]> {
    for await (const run of this.blockStatusRuns(context, offset, length)) {
      const batch: StatusExtent[] = [];
      const ex = run.extents;
      let pos = run.offset;
      for (let i = 0; i < ex.length; i += 2) {
        batch.push({ offset: pos, length: ex[i]!, flags: ex[i + 1]! });
        pos += ex[i]!;
      }
      yield batch;
    }
  }

  /**
   * The walk at its cheapest: per server reply, the start offset and the descriptors as a flat
   * [length, flags, length, flags…] array, clamped to the range. A terabyte bitmap has hundreds
   * of thousands of extents; `nbd map` reads them this way, without an object per extent, to
   * keep up with nbdinfo.
   */
  async *blockStatusRuns(context: string, offset = 0, length?: number): AsyncGenerator<ExtentRun> {
    const id = this.info.metaContexts.get(context);
    if (id === undefined) {
      throw new NbdUnsupportedError(`NBD metadata context "${context}" was not negotiated with ${this.what}`, {
        hint: `pass it in metaContexts when connecting (negotiated: ${[...this.info.metaContexts.keys()].join(', ') || 'none'})`,
      });
    }
    const len = length ?? this.size - offset;
    this.checkRange('block status', offset, len);
    const end = offset + len;
    const send = (start: number, stop: number) => {
      const p = this.pick().request(NBD_CMD_BLOCK_STATUS, 0, start, stop - start, { contextId: id });
      p.catch(() => {});
      return p;
    };
    const queue: Array<{ start: number; end: number; p: Promise<InflightRequest> }> = [];
    let next = offset;
    const refill = () => {
      while (queue.length < BLOCK_STATUS_WINDOW && next < end) {
        const stop = Math.min(end, (Math.floor(next / BLOCK_STATUS_REQUEST) + 1) * BLOCK_STATUS_REQUEST);
        queue.push({ start: next, end: stop, p: send(next, stop) });
        next = stop;
      }
    };
    refill();
    while (queue.length) {
      const r = queue.shift()!;
      let pos = r.start;
      let p = r.p;
      for (;;) {
        const req = await p;
        refill();
        const ex = req.extents!;
        const start = pos;
        let i = 0;
        for (; i < ex.length && pos < r.end; i += 2) {
          // The last extent may run past what we asked; the protocol allows it, we clamp it.
          if (pos + ex[i]! > r.end) ex[i] = r.end - pos;
          pos += ex[i]!;
        }
        ex.length = i;
        yield { offset: start, extents: ex };
        if (pos >= r.end) break;
        p = send(pos, r.end);
      }
    }
  }

  /** Orderly close of every connection (waits for requests in flight, sends NBD_CMD_DISC). */
  close(): Promise<void> {
    this.closing ??= Promise.allSettled(this.conns.map((c) => c.disconnect())).then(() => undefined);
    return this.closing;
  }

  /** Closes at once, rejecting everything in flight. */
  destroy(reason?: Error): void {
    const err = reason ?? new NbdProtocolError(`NBD connection to ${this.what} closed by the client`);
    for (const c of this.conns) c.fail(err);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
