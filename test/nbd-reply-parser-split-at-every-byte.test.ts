// The NBD reply parser gives the same results however the byte stream is cut, and refuses broken replies.
import { describe, expect, it } from 'vitest';
import { NbdProtocolError } from '../src/nbd/errors.js';
import { ReplyParser, type InflightRequest, type ReplySink } from '../src/nbd/reply-parser.js';
import { NBD_CMD_BLOCK_STATUS, NBD_CMD_FLUSH, NBD_CMD_READ } from '../src/nbd/protocol.js';
import {
  DONE, blockStatusChunk, chunk, dataChunk, errorChunk, holeChunk, noneChunk, simpleReply,
} from './support/nbd-wire.js';

interface Req { cookie: number; command: number; offset: number; length: number; contextId?: number }

const pattern = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));

const REQS: Req[] = [
  { cookie: 1, command: NBD_CMD_READ, offset: 1000, length: 300 },
  { cookie: 2, command: NBD_CMD_BLOCK_STATUS, offset: 0, length: 1 << 20, contextId: 5 },
  { cookie: 3, command: NBD_CMD_FLUSH, offset: 0, length: 0 },
  { cookie: 4, command: NBD_CMD_READ, offset: 0, length: 64 },
  { cookie: 5, command: NBD_CMD_READ, offset: 4096, length: 512 },
  { cookie: 6, command: NBD_CMD_READ, offset: 8192, length: 100 },
];

// Replies interleave requests and put chunks of cookie 6 out of order, as the protocol allows.
const STREAM = Buffer.concat([
  dataChunk(1, 1000, pattern(100, 1)),
  holeChunk(1, 1100, 50),
  blockStatusChunk(2, 7, [[4096, 1], [1 << 19, 0]]),
  dataChunk(6, 8192 + 50, pattern(50, 6)),
  dataChunk(1, 1150, pattern(150, 2), DONE),
  blockStatusChunk(2, 5, [[65536, 0], [65536, 3], [1 << 19, 0]]),
  simpleReply(3),
  noneChunk(2),
  simpleReply(4, 0, pattern(64, 4)),
  errorChunk(5, 5, 'boom', DONE, 4096 + 256),
  dataChunk(6, 8192, pattern(50, 9), DONE),
]);

interface Result { cookie: number; buf?: string; holes?: number[]; extents?: number[]; error?: unknown }

class Sink implements ReplySink {
  readonly table = new Map<number, InflightRequest>();
  readonly done: Result[] = [];
  constructor(reqs: Req[]) {
    for (const r of reqs) {
      this.table.set(r.cookie, { ...r, buf: r.command === NBD_CMD_READ ? Buffer.alloc(r.length, 0xee) : undefined });
    }
  }
  lookup(c: number) { return this.table.get(c); }
  complete(req: InflightRequest) {
    this.table.delete(req.cookie);
    this.done.push({
      cookie: req.cookie,
      buf: req.buf ? Buffer.from(req.buf).toString('hex') : undefined,
      holes: req.holes,
      extents: req.extents,
      error: req.error,
    });
  }
}

function run(pieces: Uint8Array[]): Result[] {
  const sink = new Sink(REQS);
  const p = new ReplyParser(sink, { structured: true });
  for (const piece of pieces) p.feed(piece);
  expect(p.idle).toBe(true);
  expect(sink.table.size).toBe(0);
  return sink.done;
}

function expected(): Result[] {
  return run([STREAM]);
}

describe('NBD reply parser split at every byte', () => {
  it('parses the reference stream whole', () => {
    const r = expected();
    expect(r.map((x) => x.cookie)).toEqual([1, 3, 2, 4, 5, 6]);
    const read1 = Buffer.from(r[0]!.buf!, 'hex');
    expect(read1.subarray(0, 100)).toEqual(pattern(100, 1));
    expect(read1.subarray(100, 150)).toEqual(Buffer.alloc(50));
    expect(read1.subarray(150)).toEqual(pattern(150, 2));
    expect(r[0]!.holes).toEqual([1100, 50]);
    expect(r[2]!.extents).toEqual([65536, 0, 65536, 3, 1 << 19, 0]);
    expect(Buffer.from(r[3]!.buf!, 'hex')).toEqual(pattern(64, 4));
    expect(r[4]!.error).toEqual({ errno: 5, message: 'boom', offset: 4096 + 256 });
    const read6 = Buffer.from(r[5]!.buf!, 'hex');
    expect(read6).toEqual(Buffer.concat([pattern(50, 9), pattern(50, 6)]));
  });

  it('gives the same result for every single cut', () => {
    const want = expected();
    for (let i = 1; i < STREAM.length; i++) {
      expect(run([STREAM.subarray(0, i), STREAM.subarray(i)])).toEqual(want);
    }
  });

  it('gives the same result byte by byte and for every pair of cuts 1..40 bytes apart', () => {
    const want = expected();
    expect(run([...STREAM].map((b) => Uint8Array.of(b)))).toEqual(want);
    for (let i = 1; i < STREAM.length; i += 3) {
      for (let gap = 1; gap <= 40 && i + gap < STREAM.length; gap += 7) {
        expect(run([STREAM.subarray(0, i), STREAM.subarray(i, i + gap), STREAM.subarray(i + gap)])).toEqual(want);
      }
    }
  });

  it('gives the same result when payload is read straight into the destination', () => {
    const want = expected();
    for (let seed = 1; seed < 200; seed++) {
      const sink = new Sink(REQS);
      const p = new ReplyParser(sink, { structured: true });
      let pos = 0;
      let rnd = seed;
      while (pos < STREAM.length) {
        rnd = (rnd * 1103515245 + 12345) & 0x7fffffff;
        const want = 1 + (rnd % 90);
        const direct = p.directTarget(1);
        if (direct) {
          const n = Math.min(want, direct.length, STREAM.length - pos);
          direct.set(STREAM.subarray(pos, pos + n));
          p.advanceDirect(n);
          pos += n;
        } else {
          const n = Math.min(want, STREAM.length - pos);
          p.feed(STREAM.subarray(pos, pos + n));
          pos += n;
        }
      }
      expect(sink.done).toEqual(want);
    }
  });

  const bad: Array<[string, Req[], Buffer, RegExp]> = [
    ['a bad magic', REQS, Buffer.from('deadbeef00000000000000000000000000000000', 'hex'), /bad reply magic/],
    ['an unknown cookie', REQS, simpleReply(99), /cookie 99, which is not in flight/],
    ['a chunk after the final one', [REQS[0]!], Buffer.concat([dataChunk(1, 1000, pattern(300, 1), DONE), holeChunk(1, 1000, 10)]), /not in flight/],
    ['data past the request', [REQS[0]!], dataChunk(1, 1200, pattern(200, 1), DONE), /outside READ/],
    ['data longer than the request', [REQS[0]!], dataChunk(1, 1000, pattern(301, 1), DONE), /data chunk of 301 bytes/],
    ['a hole past the request', [REQS[0]!], holeChunk(1, 1250, 51, DONE), /outside READ/],
    ['overlapping chunks', [REQS[0]!], Buffer.concat([dataChunk(1, 1000, pattern(100, 1)), dataChunk(1, 1050, pattern(100, 1))]), /overlap/],
    ['a final chunk before all data', [REQS[0]!], dataChunk(1, 1000, pattern(100, 1), DONE), /only 100 of 300 bytes/],
    ['a bogus 4 GiB block status length', [REQS[1]!], chunk(2, 5, 0, Buffer.alloc(0), 0xfffffff4), /block status chunk of \d+ bytes.*limit/],
    ['a zero-length extent', [REQS[1]!], blockStatusChunk(2, 5, [[0, 0]], DONE), /zero-length extent/],
    ['an unknown chunk type', REQS, chunk(1, 77, 0, Buffer.alloc(4)), /unknown reply chunk type 77/],
    ['a NONE chunk without DONE', REQS, chunk(3, 0, 0, Buffer.alloc(0)), /NONE chunk without the DONE flag/],
    ['a data chunk for BLOCK_STATUS', REQS, dataChunk(2, 0, pattern(8, 1)), /data chunk for BLOCK_STATUS/],
    ['an error chunk with a wrong message length', REQS, chunk(1, 0x8001, DONE, Buffer.from('0000000500ff41', 'hex')), /error chunk length/],
    ['a huge error chunk', REQS, chunk(1, 0x8001, DONE, Buffer.alloc(0), 0x7fffffff), /error chunk of length/],
  ];
  for (const [name, reqs, bytes, msg] of bad) {
    it(`refuses ${name}`, () => {
      const sink = new Sink(reqs);
      const p = new ReplyParser(sink, { structured: true });
      let err: unknown;
      try {
        for (const b of bytes) p.feed(Uint8Array.of(b));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(NbdProtocolError);
      expect((err as Error).message).toMatch(msg);
      // A failed parser stays failed.
      expect(() => p.feed(Uint8Array.of(0))).toThrow(NbdProtocolError);
    });
  }

  it('refuses structured chunks when they were not negotiated', () => {
    const p = new ReplyParser(new Sink(REQS), { structured: false });
    expect(() => p.feed(noneChunk(3))).toThrow(/not negotiated/);
  });
});
