// QMP wire format as pure code, no sockets: bytes → lines → JSON values → typed messages, and commands → bytes.
import { QmpProtocolError } from './errors.js';

/**
 * Longest line accepted. QEMU writes one JSON object per line; the largest real replies
 * (query-named-block-nodes on a long backing chain, query-qmp-schema) are a few MiB. A peer that
 * sends more than this without a newline is broken or hostile, and buffering it would eat memory.
 */
export const MAX_LINE_BYTES = 64 * 1024 * 1024;

const NEWLINE = 0x0a;

/**
 * Splits a byte stream into newline-terminated lines, across chunk boundaries anywhere.
 * It splits on the byte 0x0A, which never occurs inside a multi-byte UTF-8 sequence, so a
 * character split across chunks is reassembled before anything is decoded.
 */
export class LineSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly maxLineBytes: number = MAX_LINE_BYTES) {}

  /** Calls `onLine` for each complete line (without its newline); keeps the unfinished tail. */
  push(chunk: Uint8Array, onLine: (line: Buffer) => void): void {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let start = 0;
    for (;;) {
      const nl = buf.indexOf(NEWLINE, start);
      if (nl < 0) break;
      const piece = buf.subarray(start, nl);
      this.checkBound(piece.length);
      let line: Buffer;
      if (this.pending.length === 0) {
        line = piece;
      } else {
        this.pending.push(piece);
        line = Buffer.concat(this.pending, this.pendingBytes + piece.length);
        this.pending = [];
        this.pendingBytes = 0;
      }
      start = nl + 1;
      onLine(line);
    }
    if (start < buf.length) {
      const rest = buf.subarray(start);
      this.checkBound(rest.length);
      // Copy: the caller may reuse its chunk buffer after push returns.
      this.pending.push(Buffer.from(rest));
      this.pendingBytes += rest.length;
    }
  }

  /** Bytes received after the last newline. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }

  private checkBound(extra: number): void {
    if (this.pendingBytes + extra > this.maxLineBytes) {
      throw new QmpProtocolError(
        `peer sent a line longer than ${this.maxLineBytes} bytes without a newline`,
        { hint: 'check that the socket belongs to QEMU (QMP) or qemu-guest-agent and not to another program' },
      );
    }
  }
}

// fatal: invalid UTF-8 from the peer is a protocol error, not something to paper over with U+FFFD.
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Parses one line as JSON; returns undefined for a blank line (QEMU may send CRLF or blank keep-alives). */
export function parseJsonLine(line: Uint8Array): unknown {
  let text: string;
  try {
    text = utf8.decode(line);
  } catch (err) {
    throw new QmpProtocolError('peer sent a line that is not valid UTF-8', { cause: err });
  }
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new QmpProtocolError(`peer sent a line that is not JSON: ${preview(text)}`, { cause: err });
  }
}

/** Lines → JSON values. One instance per connection; after it throws, the stream is unusable. */
export class JsonLineDecoder {
  private readonly lines: LineSplitter;

  constructor(maxLineBytes: number = MAX_LINE_BYTES) {
    this.lines = new LineSplitter(maxLineBytes);
  }

  /** Calls `onValue` for each value completed by this chunk, in order; throws QmpProtocolError at the first bad line. */
  push(chunk: Uint8Array, onValue: (value: unknown) => void): void {
    this.lines.push(chunk, (line) => {
      const v = parseJsonLine(line);
      if (v !== undefined) onValue(v);
    });
  }

  get bufferedBytes(): number {
    return this.lines.bufferedBytes;
  }
}

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export type QmpMessage =
  | { kind: 'greeting'; version: QmpVersion; capabilities: string[] }
  | { kind: 'return'; id?: unknown; value: unknown }
  | { kind: 'error'; id?: unknown; error: { class: string; desc: string } }
  | { kind: 'event'; event: string; data: Record<string, unknown>; timestamp: QmpTimestamp };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Sorts a parsed value into greeting / return / error / event; anything else is a protocol error. */
export function classify(value: unknown): QmpMessage {
  if (!isObject(value)) {
    throw new QmpProtocolError(`peer sent a JSON ${Array.isArray(value) ? 'array' : typeof value}, not an object: ${preview(JSON.stringify(value))}`);
  }
  if ('return' in value) {
    return value.id === undefined
      ? { kind: 'return', value: value.return }
      : { kind: 'return', id: value.id, value: value.return };
  }
  if ('error' in value) {
    const e = value.error;
    if (!isObject(e) || typeof e.class !== 'string' || typeof e.desc !== 'string') {
      throw new QmpProtocolError(`peer sent an error reply without class/desc: ${preview(JSON.stringify(value))}`);
    }
    const error = { class: e.class, desc: e.desc };
    return value.id === undefined ? { kind: 'error', error } : { kind: 'error', id: value.id, error };
  }
  if (typeof value.event === 'string') {
    const ts = isObject(value.timestamp) ? value.timestamp : {};
    return {
      kind: 'event',
      event: value.event,
      data: isObject(value.data) ? value.data : {},
      timestamp: {
        seconds: typeof ts.seconds === 'number' ? ts.seconds : 0,
        microseconds: typeof ts.microseconds === 'number' ? ts.microseconds : 0,
      },
    };
  }
  if (isObject(value.QMP)) {
    const q = value.QMP;
    const v = isObject(q.version) ? q.version : {};
    const qemu = isObject(v.qemu) ? v.qemu : {};
    return {
      kind: 'greeting',
      version: {
        qemu: { major: num(qemu.major), minor: num(qemu.minor), micro: num(qemu.micro) },
        package: typeof v.package === 'string' ? v.package : '',
      },
      capabilities: Array.isArray(q.capabilities) ? q.capabilities.filter((c): c is string => typeof c === 'string') : [],
    };
  }
  throw new QmpProtocolError(`peer sent a message that is neither greeting, reply nor event: ${preview(JSON.stringify(value))}`);
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : 0;
}

/** One command as the bytes to write: a JSON object and a newline. */
export function encodeCommand(command: string, args?: Record<string, unknown>, id?: string | number): Buffer {
  const msg: Record<string, unknown> = { execute: command };
  if (args !== undefined) msg.arguments = args;
  if (id !== undefined) msg.id = id;
  return Buffer.from(JSON.stringify(msg) + '\n', 'utf8');
}

// Error messages quote the peer's bytes so the admin can see what answered, but only a little.
function preview(text: string): string {
  const t = text.replace(/\s+/g, ' ').trim();
  return JSON.stringify(t.length > 120 ? `${t.slice(0, 120)}…` : t);
}
