// Pure NBD serializer: option requests and transmission request headers as bytes, no sockets.
import {
  NBD_IHAVEOPT, NBD_MAX_STRING, NBD_OPT_GO, NBD_OPT_INFO, NBD_REQUEST_MAGIC, REQUEST_HEADER_SIZE,
} from './protocol.js';

const TWO_32 = 0x1_0000_0000;

/** Writes a non-negative safe integer as a big-endian u64 (offsets and cookies stay below 2^53). */
export function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/** Reads a big-endian u64 as a number; values above 2^53 lose precision (callers range-check). */
export function readU64(buf: Uint8Array, at: number): number {
  const hi = ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
  const lo = ((buf[at + 4]! << 24) | (buf[at + 5]! << 16) | (buf[at + 6]! << 8) | buf[at + 7]!) >>> 0;
  return hi * TWO_32 + lo;
}

export function clientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** IHAVEOPT, option number, length, payload. */
export function optionRequest(option: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + payload.length);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(payload.length, 12);
  b.set(payload, 16);
  return b;
}

function checkedString(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > NBD_MAX_STRING) throw new RangeError(`${what} is ${b.length} bytes; NBD allows at most ${NBD_MAX_STRING}`);
  return b;
}

/** NBD_OPT_GO / NBD_OPT_INFO: export name and the NBD_INFO_* items we ask for. */
export function goRequest(option: typeof NBD_OPT_GO | typeof NBD_OPT_INFO, exportName: string, infos: readonly number[]): Buffer {
  const name = checkedString(exportName, 'export name');
  const p = Buffer.alloc(4 + name.length + 2 + 2 * infos.length);
  p.writeUInt32BE(name.length, 0);
  name.copy(p, 4);
  p.writeUInt16BE(infos.length, 4 + name.length);
  infos.forEach((info, i) => p.writeUInt16BE(info, 6 + name.length + 2 * i));
  return optionRequest(option, p);
}

/** NBD_OPT_SET_META_CONTEXT / NBD_OPT_LIST_META_CONTEXT: export name and queries. */
export function metaContextRequest(option: number, exportName: string, queries: readonly string[]): Buffer {
  const name = checkedString(exportName, 'export name');
  const qs = queries.map((q) => checkedString(q, `metadata context "${q}"`));
  const p = Buffer.alloc(4 + name.length + 4 + qs.reduce((n, q) => n + 4 + q.length, 0));
  let at = p.writeUInt32BE(name.length, 0);
  at += name.copy(p, at);
  at = p.writeUInt32BE(qs.length, at);
  for (const q of qs) {
    at = p.writeUInt32BE(q.length, at);
    at += q.copy(p, at);
  }
  return optionRequest(option, p);
}

/** NBD_OPT_EXPORT_NAME (the fallback for servers without NBD_OPT_GO): the bare name. */
export function exportNameRequest(option: number, exportName: string): Buffer {
  return optionRequest(option, checkedString(exportName, 'export name'));
}

/** Fills a 28-byte transmission request header at `at`. */
export function writeRequestHeader(
  buf: Buffer, at: number, flags: number, type: number, cookie: number, offset: number, length: number,
): void {
  buf.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  writeU64(buf, cookie, at + 8);
  writeU64(buf, offset, at + 16);
  buf.writeUInt32BE(length, at + 24);
}

export function requestHeader(flags: number, type: number, cookie: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  writeRequestHeader(b, 0, flags, type, cookie, offset, length);
  return b;
}
