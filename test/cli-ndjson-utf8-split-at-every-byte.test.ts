// The CLI's reader of virtcbtd's event stream (JSON lines) gets every multi-byte UTF-8 character
// whole however the stream is cut: a server sends the same events as HTTP chunks cut at every
// byte of the body (inside "ü", "日" and an emoji too), and callDaemon hands the caller the same events.
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callDaemon } from '../src/cli/daemon-client.js';

const events = [
  { type: 'start', domain: 'vm-ü', consumer: 'nightly' },
  { type: 'progress', disk: 'vda', done: 1, total: 2, note: 'copying 😀 日本' },
  { type: 'result', domain: 'vm-ü', id: 'nightly-0001' },
];
const body = Buffer.from(events.map((e) => JSON.stringify(e) + '\n').join(''), 'utf8');

let dir: string;
let server: Server;
let socket: string;

/** The body as HTTP chunks cut at the given offsets (each chunk one write: the parser hands them on one by one). */
function respond(sock: Socket, cuts: number[]): void {
  sock.write('HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n');
  const bounds = [0, ...cuts.filter((c) => c > 0 && c < body.length), body.length];
  const out: Buffer[] = [];
  for (let k = 1; k < bounds.length; k++) {
    const piece = body.subarray(bounds[k - 1], bounds[k]);
    out.push(Buffer.from(`${piece.length.toString(16)}\r\n`, 'latin1'), piece, Buffer.from('\r\n', 'latin1'));
  }
  out.push(Buffer.from('0\r\n\r\n', 'latin1'));
  sock.end(Buffer.concat(out));
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'virtcbt-ndjson-'));
  socket = join(dir, 'd.sock');
  server = createServer((sock) => {
    let head = '';
    sock.on('error', () => {});
    sock.on('data', (c: Buffer) => {
      head += c.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      // The path says where to cut: /cut/5 or /every-byte.
      const path = /^\S+ (\S+)/.exec(head)![1]!;
      sock.removeAllListeners('data');
      sock.resume();
      if (path === '/every-byte') return respond(sock, [...body.keys()]);
      respond(sock, [Number(path.split('/')[2])]);
    });
  });
  await new Promise<void>((r) => server.listen(socket, r));
});

afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

async function stream(path: string): Promise<{ result: unknown; seen: unknown[] }> {
  const seen: unknown[] = [];
  const result = await callDaemon(socket, 'POST', path, { body: {}, onEvent: (e) => seen.push(e) });
  return { result, seen };
}

describe('the CLI\'s JSON-lines reader', () => {
  it('the body has characters of 2, 3 and 4 bytes to cut through', () => {
    for (const ch of ['ü', '日', '😀']) expect(body.includes(Buffer.from(ch, 'utf8')), ch).toBe(true);
  });

  it('gives the same events with the stream cut at every byte', async () => {
    for (let i = 0; i <= body.length; i++) {
      const r = await stream(`/cut/${i}`);
      expect(r.seen, `cut at byte ${i}`).toEqual(events);
      expect(r.result, `cut at byte ${i}`).toEqual(events[2]);
    }
  });

  it('gives the same events with every byte a chunk of its own', async () => {
    const r = await stream('/every-byte');
    expect(r.seen).toEqual(events);
    expect(r.result).toEqual(events[2]);
  });
});
