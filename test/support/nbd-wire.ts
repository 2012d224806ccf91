// Test helpers that encode NBD server replies by hand, for the parser test and the fake hostile server.
export const SIMPLE_MAGIC = 0x67446698;
export const STRUCTURED_MAGIC = 0x668e33ef;
export const DONE = 1;

function u64(b: Buffer, v: number, at: number): void {
  b.writeUInt32BE(Math.floor(v / 2 ** 32), at);
  b.writeUInt32BE(v >>> 0, at + 4);
}

export function simpleReply(cookie: number, errno = 0, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + payload.length);
  b.writeUInt32BE(SIMPLE_MAGIC, 0);
  b.writeUInt32BE(errno, 4);
  u64(b, cookie, 8);
  b.set(payload, 16);
  return b;
}

export function chunk(cookie: number, type: number, flags: number, payload: Uint8Array, lengthOverride?: number): Buffer {
  const b = Buffer.alloc(20 + payload.length);
  b.writeUInt32BE(STRUCTURED_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  u64(b, cookie, 8);
  b.writeUInt32BE(lengthOverride ?? payload.length, 16);
  b.set(payload, 20);
  return b;
}

export function dataChunk(cookie: number, offset: number, data: Uint8Array, flags = 0): Buffer {
  const p = Buffer.alloc(8 + data.length);
  u64(p, offset, 0);
  p.set(data, 8);
  return chunk(cookie, 1, flags, p);
}

export function holeChunk(cookie: number, offset: number, length: number, flags = 0): Buffer {
  const p = Buffer.alloc(12);
  u64(p, offset, 0);
  p.writeUInt32BE(length, 8);
  return chunk(cookie, 2, flags, p);
}

export function blockStatusChunk(cookie: number, contextId: number, extents: Array<[number, number]>, flags = 0): Buffer {
  const p = Buffer.alloc(4 + 8 * extents.length);
  p.writeUInt32BE(contextId, 0);
  extents.forEach(([len, fl], i) => {
    p.writeUInt32BE(len, 4 + 8 * i);
    p.writeUInt32BE(fl, 8 + 8 * i);
  });
  return chunk(cookie, 5, flags, p);
}

export function errorChunk(cookie: number, errno: number, message: string, flags = DONE, offset?: number): Buffer {
  const m = Buffer.from(message);
  const p = Buffer.alloc(6 + m.length + (offset === undefined ? 0 : 8));
  p.writeUInt32BE(errno, 0);
  p.writeUInt16BE(m.length, 4);
  m.copy(p, 6);
  if (offset !== undefined) u64(p, offset, 6 + m.length);
  return chunk(cookie, offset === undefined ? 0x8001 : 0x8002, flags, p);
}

export function noneChunk(cookie: number): Buffer {
  return chunk(cookie, 0, DONE, Buffer.alloc(0));
}
