// Pure, incremental parser of NBD transmission replies (simple and structured), fed arbitrary chunk
// boundaries; READ payload bytes go straight into the caller's buffer, never into a concatenation.
import { NbdProtocolError } from './errors.js';
import {
  COMMAND_NAMES, MAX_BLOCK_STATUS_CHUNK, MAX_ERROR_MESSAGE, NBD_CMD_BLOCK_STATUS, NBD_CMD_READ,
  NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_BIT,
  NBD_REPLY_TYPE_ERROR_OFFSET, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC, SIMPLE_REPLY_HEADER_SIZE, STRUCTURED_REPLY_HEADER_SIZE,
} from './protocol.js';
import { readU64 } from './serializer.js';

/** The server's error for one request (from a simple reply or an error chunk). */
export interface ReplyError {
  errno: number;
  message?: string;
  /** ERROR_OFFSET chunks name the failing offset. */
  offset?: number;
}

/**
 * One request waiting for its reply. The connection creates it; the parser fills in the
 * result fields as chunks arrive and hands it back through `ReplySink.complete`.
 */
export interface InflightRequest {
  readonly cookie: number;
  readonly command: number;
  readonly offset: number;
  readonly length: number;
  /** READ: destination of `length` bytes (holes are zero-filled in it); none: the data is dropped. */
  buf?: Uint8Array;
  /** BLOCK_STATUS: the metadata context id whose extents we keep (others are checked and dropped). */
  contextId?: number;

  error?: ReplyError;
  /** READ: hole chunks, absolute [offset, length) pairs flattened, in arrival order. */
  holes?: number[];
  /** BLOCK_STATUS: descriptors of `contextId` flattened as length, flags, length, flags… */
  extents?: number[];
  /** Parser bookkeeping: bytes covered contiguously from `offset`, and out-of-order pieces. */
  covered?: number;
  pieces?: number[];
  structured?: boolean;
  seenContexts?: number[];
}

export interface ReplySink {
  /** The request with this cookie, or undefined if none is in flight. */
  lookup(cookie: number): InflightRequest | undefined;
  /** The final reply for `req` arrived; `req.error` is set if the server reported one. */
  complete(req: InflightRequest): void;
}

const enum State {
  Header,
  /** Simple reply payload of a READ, straight into the buffer. */
  SimpleData,
  /** First 8 bytes (offset) of an OFFSET_DATA chunk. */
  DataOffset,
  /** Payload of an OFFSET_DATA chunk, straight into the buffer. */
  Data,
  /** A small chunk payload (hole, error) collected whole. */
  Small,
  /** First 4 bytes (context id) of a BLOCK_STATUS chunk. */
  BsContext,
  /** BLOCK_STATUS descriptors, 8 bytes each, streamed. */
  BsDescriptors,
  Failed,
}

const TWO_32 = 0x1_0000_0000;
/**
 * Out-of-order chunks we track per request before calling the server hostile: QEMU sends
 * chunks in order, and the limit keeps a scattered reply from growing an unbounded list.
 */
const MAX_PIECES = 4096;

function hex(n: number): string {
  return '0x' + (n >>> 0).toString(16).padStart(8, '0');
}

function cmdName(req: InflightRequest): string {
  return COMMAND_NAMES[req.command] ?? `command ${req.command}`;
}

export interface ReplyParserOptions {
  /** Structured replies were negotiated: structured chunks are allowed. */
  structured: boolean;
}

export class ReplyParser {
  private state = State.Header;
  private readonly hdr = Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE);
  private hdrHave = 0;
  private hdrNeed = 4;
  /** Small payloads: hole (12), error (<= 6 + 4096 + 8), data offset (8), context id (4), descriptor (8). */
  private readonly small = Buffer.alloc(6 + MAX_ERROR_MESSAGE + 8);
  private smallHave = 0;
  private smallNeed = 0;

  private req: InflightRequest | undefined;
  private chunkFlags = 0;
  private chunkType = 0;
  /** Bytes of the current chunk payload still to come (for BLOCK_STATUS: descriptor bytes). */
  private remaining = 0;
  /** Where the next data byte goes in req.buf. */
  private destPos = 0;
  /** BLOCK_STATUS chunk being parsed belongs to the wanted context. */
  private keepExtents = false;
  private failure: NbdProtocolError | undefined;

  constructor(private readonly sink: ReplySink, private readonly opts: ReplyParserOptions) {}

  /** True between replies: a close now loses no partial reply. */
  get idle(): boolean {
    return this.state === State.Header && this.hdrHave === 0;
  }

  /**
   * If the next bytes on the wire are READ payload, the part of the caller's buffer they go to
   * (at least `min` bytes long), so a socket can read into it directly.
   */
  directTarget(min: number): Uint8Array | undefined {
    if ((this.state === State.Data || this.state === State.SimpleData) && this.remaining >= min && this.req?.buf) {
      return this.req.buf.subarray(this.destPos, this.destPos + this.remaining);
    }
    return undefined;
  }

  /** `n` bytes were read straight into the buffer returned by directTarget(). */
  advanceDirect(n: number): void {
    this.destPos += n;
    this.remaining -= n;
    if (this.remaining === 0) this.endPayload();
  }

  /** Parses `chunk`; throws NbdProtocolError (and stays failed) when the server breaks the protocol. */
  feed(chunk: Uint8Array): void {
    if (this.state === State.Failed) throw this.failure!;
    try {
      this.parse(chunk);
    } catch (err) {
      this.state = State.Failed;
      this.failure = err instanceof NbdProtocolError ? err : new NbdProtocolError(`NBD reply parser: ${String(err)}`, { cause: err });
      throw this.failure;
    }
  }

  private fail(message: string): never {
    throw new NbdProtocolError(`NBD server broke the protocol: ${message}`, {
      hint: 'the connection was closed; check the server (qemu-nbd, QEMU) log and retry',
    });
  }

  private parse(chunk: Uint8Array): void {
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      switch (this.state) {
        case State.Header: {
          const n = Math.min(this.hdrNeed - this.hdrHave, end - pos);
          this.hdr.set(chunk.subarray(pos, pos + n), this.hdrHave);
          this.hdrHave += n;
          pos += n;
          if (this.hdrHave === 4 && this.hdrNeed === 4) {
            const magic = this.hdr.readUInt32BE(0);
            if (magic === NBD_SIMPLE_REPLY_MAGIC) this.hdrNeed = SIMPLE_REPLY_HEADER_SIZE;
            else if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
              if (!this.opts.structured) this.fail('structured reply chunk although structured replies were not negotiated');
              this.hdrNeed = STRUCTURED_REPLY_HEADER_SIZE;
            } else this.fail(`bad reply magic ${hex(magic)}`);
          }
          if (this.hdrHave === this.hdrNeed && this.hdrNeed > 4) {
            if (this.hdrNeed === SIMPLE_REPLY_HEADER_SIZE) this.simpleHeader();
            else this.structuredHeader();
          }
          break;
        }
        case State.SimpleData:
        case State.Data: {
          const n = Math.min(this.remaining, end - pos);
          const buf = this.req!.buf;
          if (buf) buf.set(chunk.subarray(pos, pos + n), this.destPos);
          this.destPos += n;
          this.remaining -= n;
          pos += n;
          if (this.remaining === 0) this.endPayload();
          break;
        }
        case State.DataOffset:
        case State.Small:
        case State.BsContext:
        case State.BsDescriptors: {
          if (this.state === State.BsDescriptors && this.smallHave === 0 && end - pos >= 8) {
            // Fast path: whole descriptors straight from the input, no copying (bitmaps of a
            // terabyte disk come as hundreds of thousands of them).
            pos = this.descriptors(chunk, pos, end);
            break;
          }
          const n = Math.min(this.smallNeed - this.smallHave, end - pos);
          this.small.set(chunk.subarray(pos, pos + n), this.smallHave);
          this.smallHave += n;
          pos += n;
          if (this.smallHave === this.smallNeed) this.smallComplete();
          break;
        }
        case State.Failed:
          throw this.failure!;
      }
    }
  }

  /** Parses whole 8-byte descriptors from chunk[pos..end); returns the new position. */
  private descriptors(chunk: Uint8Array, pos: number, end: number): number {
    const req = this.req!;
    const out = this.keepExtents ? req.extents! : undefined;
    let n = Math.min(this.remaining, end - pos);
    n -= n % 8;
    const stop = pos + n;
    for (; pos < stop; pos += 8) {
      const len = ((chunk[pos]! << 24) | (chunk[pos + 1]! << 16) | (chunk[pos + 2]! << 8) | chunk[pos + 3]!) >>> 0;
      if (len === 0) this.fail(`zero-length extent in block status for ${cmdName(req)} cookie ${req.cookie}`);
      if (out) out.push(len, ((chunk[pos + 4]! << 24) | (chunk[pos + 5]! << 16) | (chunk[pos + 6]! << 8) | chunk[pos + 7]!) >>> 0);
    }
    this.remaining -= n;
    if (this.remaining === 0) this.endPayload();
    return pos;
  }

  private lookup(cookie: number, kind: string): InflightRequest {
    const req = this.sink.lookup(cookie);
    if (!req) this.fail(`${kind} for cookie ${cookie}, which is not in flight (a reply after the final one, or a cookie never sent)`);
    return req;
  }

  private cookieAt(at: number): number {
    const hi = this.hdr.readUInt32BE(at);
    // Our cookies stay far below 2^32; a high word means a cookie we never sent.
    if (hi !== 0) this.fail(`reply for cookie ${hi * TWO_32 + this.hdr.readUInt32BE(at + 4)}, which we never sent`);
    return this.hdr.readUInt32BE(at + 4);
  }

  private resetHeader(): void {
    this.state = State.Header;
    this.hdrHave = 0;
    this.hdrNeed = 4;
  }

  private simpleHeader(): void {
    const errno = this.hdr.readUInt32BE(4);
    const req = this.lookup(this.cookieAt(8), 'simple reply');
    if (req.structured) this.fail(`simple reply to ${cmdName(req)} cookie ${req.cookie} after structured chunks`);
    this.req = req;
    if (errno !== 0) {
      req.error = { errno };
      this.finish(req);
      return;
    }
    if (req.command === NBD_CMD_READ) {
      // A simple reply to READ carries exactly the requested length.
      this.addCoverage(req, req.offset, req.length);
      this.state = State.SimpleData;
      this.destPos = 0;
      this.remaining = req.length;
      if (this.remaining === 0) this.endPayload();
      return;
    }
    if (req.command === NBD_CMD_BLOCK_STATUS) this.fail('simple reply to BLOCK_STATUS without an error');
    this.finish(req);
  }

  private structuredHeader(): void {
    this.chunkFlags = this.hdr.readUInt16BE(4);
    this.chunkType = this.hdr.readUInt16BE(6);
    const req = this.lookup(this.cookieAt(8), `reply chunk type ${this.chunkType}`);
    const length = this.hdr.readUInt32BE(16);
    req.structured = true;
    this.req = req;
    const type = this.chunkType;
    const what = `${cmdName(req)} cookie ${req.cookie}`;
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        if (length !== 0) this.fail(`NONE chunk with length ${length} for ${what}`);
        if (!(this.chunkFlags & NBD_REPLY_FLAG_DONE)) this.fail(`NONE chunk without the DONE flag for ${what}`);
        this.endPayload();
        return;
      case NBD_REPLY_TYPE_OFFSET_DATA:
        if (req.command !== NBD_CMD_READ) this.fail(`data chunk for ${what}`);
        if (length <= 8) this.fail(`data chunk of length ${length} for ${what}`);
        if (length - 8 > req.length) this.fail(`data chunk of ${length - 8} bytes for ${what} of ${req.length} bytes`);
        this.remaining = length - 8;
        this.startSmall(State.DataOffset, 8);
        return;
      case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (req.command !== NBD_CMD_READ) this.fail(`hole chunk for ${what}`);
        if (length !== 12) this.fail(`hole chunk of length ${length} for ${what} (must be 12)`);
        this.startSmall(State.Small, 12);
        return;
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        if (req.command !== NBD_CMD_BLOCK_STATUS) this.fail(`block status chunk for ${what}`);
        if (length < 12 || (length - 4) % 8 !== 0) this.fail(`block status chunk of length ${length} for ${what}`);
        if (length > MAX_BLOCK_STATUS_CHUNK) this.fail(`block status chunk of ${length} bytes for ${what} (limit ${MAX_BLOCK_STATUS_CHUNK})`);
        this.remaining = length - 4;
        this.startSmall(State.BsContext, 4);
        return;
      default:
        if (type & NBD_REPLY_TYPE_ERROR_BIT) {
          const max = 6 + MAX_ERROR_MESSAGE + (type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0);
          if (length < 6 || length > max) this.fail(`error chunk of length ${length} for ${what}`);
          this.startSmall(State.Small, length);
          return;
        }
        this.fail(`unknown reply chunk type ${type} for ${what}`);
    }
  }

  private startSmall(state: State, need: number): void {
    this.state = state;
    this.smallHave = 0;
    this.smallNeed = need;
  }

  private smallComplete(): void {
    const req = this.req!;
    const what = `${cmdName(req)} cookie ${req.cookie}`;
    const s = this.small;
    switch (this.state) {
      case State.DataOffset: {
        const off = readU64(s, 0);
        if (off < req.offset || off + this.remaining > req.offset + req.length) {
          this.fail(`data chunk [${off}, +${this.remaining}) outside ${what} [${req.offset}, +${req.length})`);
        }
        this.addCoverage(req, off, this.remaining);
        this.destPos = off - req.offset;
        this.state = State.Data;
        return;
      }
      case State.BsContext: {
        const id = s.readUInt32BE(0);
        const seen = (req.seenContexts ??= []);
        if (seen.includes(id)) this.fail(`second block status chunk for context ${id} in ${what}`);
        seen.push(id);
        this.keepExtents = id === req.contextId;
        if (this.keepExtents) req.extents ??= [];
        this.startSmall(State.BsDescriptors, 8);
        return;
      }
      case State.BsDescriptors: {
        const len = s.readUInt32BE(0);
        if (len === 0) this.fail(`zero-length extent in block status for ${what}`);
        if (this.keepExtents) req.extents!.push(len, s.readUInt32BE(4));
        this.remaining -= 8;
        if (this.remaining === 0) this.endPayload();
        else this.smallHave = 0;
        return;
      }
      case State.Small:
        if (this.chunkType === NBD_REPLY_TYPE_OFFSET_HOLE) {
          const off = readU64(s, 0);
          const len = s.readUInt32BE(8);
          if (len === 0) this.fail(`zero-length hole in ${what}`);
          if (off < req.offset || off + len > req.offset + req.length) {
            this.fail(`hole [${off}, +${len}) outside ${what} [${req.offset}, +${req.length})`);
          }
          this.addCoverage(req, off, len);
          if (req.buf) req.buf.fill(0, off - req.offset, off - req.offset + len);
          (req.holes ??= []).push(off, len);
        } else {
          const errno = s.readUInt32BE(0);
          const msgLen = s.readUInt16BE(4);
          const extra = this.chunkType === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
          if (errno === 0) this.fail(`error chunk with errno 0 for ${what}`);
          if (this.chunkType === NBD_REPLY_TYPE_ERROR || this.chunkType === NBD_REPLY_TYPE_ERROR_OFFSET) {
            if (6 + msgLen + extra !== this.smallNeed) this.fail(`error chunk length ${this.smallNeed} does not match its message length ${msgLen} for ${what}`);
          } else if (6 + msgLen > this.smallNeed) {
            this.fail(`error chunk message length ${msgLen} exceeds the chunk for ${what}`);
          }
          const message = s.toString('utf8', 6, 6 + msgLen);
          const err: ReplyError = { errno, message: message || undefined };
          if (extra) {
            err.offset = readU64(s, 6 + msgLen);
            if (err.offset < req.offset || err.offset >= req.offset + req.length) {
              this.fail(`error offset ${err.offset} outside ${what} [${req.offset}, +${req.length})`);
            }
          }
          req.error ??= err;
        }
        this.endPayload();
        return;
      default:
        this.fail('internal parser state error');
    }
  }

  /** The current payload (or chunk) is complete. */
  private endPayload(): void {
    const req = this.req!;
    const simple = this.state === State.SimpleData;
    this.resetHeader();
    if (simple || this.chunkFlags & NBD_REPLY_FLAG_DONE) this.finish(req);
  }

  private finish(req: InflightRequest): void {
    this.resetHeader();
    this.req = undefined;
    this.chunkFlags = 0;
    if (!req.error) {
      if (req.command === NBD_CMD_READ && (req.covered ?? 0) !== req.length) {
        this.fail(`final reply to READ cookie ${req.cookie} after only ${req.covered ?? 0} of ${req.length} bytes`);
      }
      if (req.command === NBD_CMD_BLOCK_STATUS && !req.extents?.length) {
        this.fail(`final reply to BLOCK_STATUS cookie ${req.cookie} without extents for context ${req.contextId}`);
      }
    }
    this.sink.complete(req);
  }

  /** Records that [start, start+len) of req arrived; overlapping chunks are a protocol error. */
  private addCoverage(req: InflightRequest, start: number, len: number): void {
    const rel = start - req.offset;
    const covered = req.covered ?? 0;
    const overlap = () => this.fail(`chunks overlap at offset ${start} in ${cmdName(req)} cookie ${req.cookie}`);
    if (rel < covered) overlap();
    if (rel === covered) {
      let c = covered + len;
      const p = req.pieces;
      if (p) {
        // Absorb out-of-order pieces that now join the contiguous prefix.
        while (p.length && p[0]! <= c) {
          if (p[0]! < c) overlap();
          c = p[1]!;
          p.splice(0, 2);
        }
      }
      req.covered = c;
      return;
    }
    // Out of order: keep sorted [start, end) pairs relative to req.offset.
    const p = (req.pieces ??= []);
    const e = rel + len;
    let i = 0;
    while (i < p.length && p[i]! < rel) i += 2;
    if (i > 0 && p[i - 1]! > rel) overlap();
    if (i < p.length && p[i]! < e) overlap();
    // Join neighbours so an in-order run that merely started late stays one piece.
    const joinsPrev = i > 0 && p[i - 1] === rel;
    const joinsNext = i < p.length && p[i] === e;
    if (joinsPrev && joinsNext) p.splice(i - 1, 2);
    else if (joinsPrev) p[i - 1] = e;
    else if (joinsNext) p[i] = rel;
    else p.splice(i, 0, rel, e);
    if (p.length > 2 * MAX_PIECES) this.fail(`more than ${MAX_PIECES} disjoint chunks in ${cmdName(req)} cookie ${req.cookie}`);
  }
}
