// QMP framing fed with buffers: a stream split at every byte boundary (and in random pieces) decodes to the same messages.
import { describe, expect, it } from 'vitest';
import {
  JsonLineDecoder,
  LineSplitter,
  QmpProtocolError,
  classify,
  encodeCommand,
  parseJsonLine,
} from '../src/qmp/index.js';

const greeting = {
  QMP: { version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'Debian 1:7.2+dfsg-7' }, capabilities: ['oob'] },
};
const messages: unknown[] = [
  greeting,
  { return: {}, id: 1 },
  // Multi-byte UTF-8 (2, 3 and 4 bytes) so that chunk boundaries fall inside characters.
  { return: [{ device: '', qdev: '/machine/peripheral/vda/virtio-backend', file: 'ü/日本/😀.qcow2' }], id: 2 },
  { timestamp: { seconds: 1700000000, microseconds: 12 }, event: 'STOP' },
  { id: 3, error: { class: 'GenericError', desc: "Bitmap 'b1' already exists" } },
  { return: 'text with \\n escaped newline\n and "quotes"', id: 4 },
];
// QEMU separates objects with "\n"; CRLF and blank lines must be tolerated too.
const stream = Buffer.from(
  messages.map((m, i) => JSON.stringify(m) + (i === 2 ? '\r\n\r\n' : '\n')).join(''),
  'utf8',
);

function decodeChunks(chunks: Buffer[]): unknown[] {
  const d = new JsonLineDecoder();
  const out: unknown[] = [];
  for (const c of chunks) d.push(c, (v) => out.push(v));
  expect(d.bufferedBytes).toBe(0);
  return out;
}

describe('QMP framing', () => {
  it('decodes the whole stream in one chunk', () => {
    expect(decodeChunks([stream])).toEqual(messages);
  });

  it('decodes the stream split into two at every byte boundary', () => {
    for (let i = 0; i <= stream.length; i++) {
      expect(decodeChunks([stream.subarray(0, i), stream.subarray(i)]), `split at ${i}`).toEqual(messages);
    }
  });

  it('decodes the stream fed one byte at a time', () => {
    const chunks: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) chunks.push(stream.subarray(i, i + 1));
    expect(decodeChunks(chunks)).toEqual(messages);
  });

  it('decodes the stream cut into random pieces (seeded)', () => {
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let round = 0; round < 200; round++) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < stream.length; ) {
        const n = 1 + rnd(40);
        chunks.push(stream.subarray(i, i + n));
        i += n;
      }
      expect(decodeChunks(chunks)).toEqual(messages);
    }
  });

  it('does not keep a reference to the caller\'s chunk buffer', () => {
    const d = new JsonLineDecoder();
    const out: unknown[] = [];
    const chunk = Buffer.from('{"return": 1, "id"');
    d.push(chunk, (v) => out.push(v));
    chunk.fill(0x20); // caller reuses its buffer
    d.push(Buffer.from(': 9}\n'), (v) => out.push(v));
    expect(out).toEqual([{ return: 1, id: 9 }]);
  });

  it('delivers the values before a bad line, then throws QmpProtocolError quoting it', () => {
    const d = new JsonLineDecoder();
    const out: unknown[] = [];
    const bad = Buffer.from('{"return": {}, "id": 1}\n{"return": oops}\n{"return": {}, "id": 2}\n');
    expect(() => d.push(bad, (v) => out.push(v))).toThrow(QmpProtocolError);
    expect(out).toEqual([{ return: {}, id: 1 }]);
    expect(() => parseJsonLine(Buffer.from('{"return": oops}'))).toThrow(/not JSON: "\{\\"return\\": oops\}"/);
  });

  it('rejects invalid UTF-8 instead of replacing it', () => {
    expect(() => parseJsonLine(Buffer.from([0x7b, 0xff, 0x7d]))).toThrow(/not valid UTF-8/);
  });

  it('refuses a line longer than its bound, counting bytes across chunks', () => {
    const s = new LineSplitter(100);
    s.push(Buffer.alloc(60, 0x61), () => {});
    expect(() => s.push(Buffer.alloc(41, 0x61), () => {})).toThrow(/longer than 100 bytes/);
    // Exactly at the bound is fine, newline excluded.
    const ok = new LineSplitter(100);
    const lines: Buffer[] = [];
    ok.push(Buffer.alloc(50, 0x61), (l) => lines.push(l));
    ok.push(Buffer.concat([Buffer.alloc(50, 0x61), Buffer.from('\n')]), (l) => lines.push(l));
    expect(lines.map((l) => l.length)).toEqual([100]);
    // A long line that arrives in one chunk is refused too.
    expect(() => new LineSplitter(10).push(Buffer.from('{"return": 12345}\n'), () => {})).toThrow(QmpProtocolError);
  });

  it('classifies greeting, return, error and event', () => {
    expect(classify(greeting)).toEqual({
      kind: 'greeting',
      version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'Debian 1:7.2+dfsg-7' },
      capabilities: ['oob'],
    });
    expect(classify({ return: {}, id: 1 })).toEqual({ kind: 'return', id: 1, value: {} });
    expect(classify({ return: 5 })).toEqual({ kind: 'return', value: 5 });
    expect(classify({ id: 'x', error: { class: 'CommandNotFound', desc: 'The command nope has not been found' } })).toEqual({
      kind: 'error',
      id: 'x',
      error: { class: 'CommandNotFound', desc: 'The command nope has not been found' },
    });
    expect(classify({ event: 'JOB_STATUS_CHANGE', data: { id: 'j', status: 'running' }, timestamp: { seconds: 1, microseconds: 2 } })).toEqual({
      kind: 'event',
      event: 'JOB_STATUS_CHANGE',
      data: { id: 'j', status: 'running' },
      timestamp: { seconds: 1, microseconds: 2 },
    });
  });

  it('refuses messages of no known kind', () => {
    expect(() => classify([1, 2])).toThrow(/JSON array, not an object/);
    expect(() => classify(42)).toThrow(QmpProtocolError);
    expect(() => classify({ hello: 'world' })).toThrow(/neither greeting, reply nor event/);
    expect(() => classify({ error: 'bad' })).toThrow(/without class\/desc/);
  });

  it('encodes a command as one line with arguments and id', () => {
    const b = encodeCommand('block-dirty-bitmap-add', { node: 'data', name: 'ü' }, 7);
    expect(b.toString('utf8')).toBe('{"execute":"block-dirty-bitmap-add","arguments":{"node":"data","name":"ü"},"id":7}\n');
    expect(encodeCommand('query-status').toString()).toBe('{"execute":"query-status"}\n');
  });
});
