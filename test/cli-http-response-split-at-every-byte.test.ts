// The CLI's HTTP response parser on the bytes a real node:http server (what virtcbtd runs) sends:
// a JSON reply with Content-Length and a chunked stream of JSON lines, split at every byte, give
// the same head and body; a close-delimited body ends at the close; malformed responses are
// errors, never a hang or a wrong body. Then callDaemon against such a server, end to end.
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callDaemon } from '../src/cli/daemon-client.js';
import { HttpProtocolError, HttpResponseParser, type ResponseHead } from '../src/cli/http-response.js';

let dir: string;
let server: Server;
let socket: string;
const events = [{ type: 'start', id: 'nightly-0001' }, { type: 'progress', disk: 'vda', done: 1, text: 'ü日😀' }, { type: 'result', id: 'nightly-0001' }];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'virtcbt-http-'));
  socket = join(dir, 'd.sock');
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url === '/json') {
        const text = JSON.stringify({ ok: true, name: 'vm ü' });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        return res.end(text);
      }
      if (req.url === '/missing') {
        const text = JSON.stringify({ error: 'NotFound', message: 'no such domain', exitCode: 4 });
        res.writeHead(404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        return res.end(text);
      }
      // Streamed as the daemon does: one write per event, chunked.
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      let i = 0;
      const next = () => {
        if (i === events.length) return res.end();
        res.write(JSON.stringify(events[i++]) + '\n');
        setImmediate(next);
      };
      next();
    });
  });
  await new Promise<void>((r) => server.listen(socket, r));
});

afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

/** The raw bytes the server sends for `path`, read to the close. */
function rawResponse(path: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = connect(socket, () => s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
  });
}

function parse(pieces: Buffer[], closeAtEnd = true): { head?: ResponseHead; body: string; ended: boolean } {
  const out: { head?: ResponseHead; body: Buffer[]; ended: boolean } = { body: [], ended: false };
  const p = new HttpResponseParser({ head: (h) => { out.head = h; }, data: (c) => out.body.push(Buffer.from(c)), end: () => { out.ended = true; } });
  for (const c of pieces) p.push(c);
  if (closeAtEnd) p.close();
  return { head: out.head, body: Buffer.concat(out.body).toString('utf8'), ended: out.ended };
}

function splitAt(buf: Buffer, i: number): Buffer[] {
  return [buf.subarray(0, i), buf.subarray(i)];
}

describe('HTTP response parser', () => {
  it('a Content-Length reply, whole and split at every byte', async () => {
    const raw = await rawResponse('/json');
    const whole = parse([raw]);
    expect(whole.head?.status).toBe(200);
    expect(whole.head?.headers['content-type']).toBe('application/json');
    expect(JSON.parse(whole.body)).toEqual({ ok: true, name: 'vm ü' });
    expect(whole.ended).toBe(true);
    for (let i = 0; i <= raw.length; i++) expect(parse(splitAt(raw, i))).toEqual(whole);
    expect(parse([...raw].map((b) => Buffer.from([b])))).toEqual(whole);
  });

  it('a chunked stream of JSON lines, whole and split at every byte', async () => {
    const raw = await rawResponse('/stream');
    expect(raw.toString('latin1')).toMatch(/transfer-encoding: chunked/i);
    const whole = parse([raw]);
    expect(whole.head?.headers['content-type']).toBe('application/x-ndjson');
    expect(whole.body.trim().split('\n').map((l) => JSON.parse(l))).toEqual(events);
    for (let i = 0; i <= raw.length; i++) expect(parse(splitAt(raw, i))).toEqual(whole);
    expect(parse([...raw].map((b) => Buffer.from([b])))).toEqual(whole);
  });

  it('the end of a chunked body is found before the connection closes', async () => {
    const raw = await rawResponse('/stream');
    expect(parse([raw], false).ended).toBe(true);
  });

  it('a body without length or chunking ends at the close', () => {
    const raw = Buffer.from('HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"a":1}');
    expect(parse([raw], false).ended).toBe(false);
    expect(parse([raw])).toMatchObject({ body: '{"a":1}', ended: true });
  });

  it('malformed responses are errors', () => {
    const bad = (s: string, close = false) => () => parse([Buffer.from(s, 'latin1')], close);
    expect(bad('SSH-2.0-OpenSSH_9.2\r\n\r\n')).toThrow(HttpProtocolError);
    expect(bad('HTTP/1.1 200 OK\r\nno colon here\r\n\r\n')).toThrow(/malformed header/);
    expect(bad('HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n')).toThrow(/bad Content-Length/);
    expect(bad('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n')).toThrow(/bad chunk size/);
    expect(bad('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY')).toThrow(/not followed by CRLF/);
    expect(bad('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc', true)).toThrow(/closed in the middle/);
    expect(bad('HTTP/1.1 200', true)).toThrow(/closed before a response/);
    expect(bad(`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(70_000)}`)).toThrow(/too long/);
  });
});

describe('callDaemon over the unix socket', () => {
  it('returns a JSON reply, and the last event of a stream after handing each to the caller', async () => {
    expect(await callDaemon(socket, 'GET', '/json')).toEqual({ ok: true, name: 'vm ü' });
    const seen: unknown[] = [];
    expect(await callDaemon(socket, 'POST', '/stream', { body: { consumer: 'c' }, onEvent: (e) => seen.push(e) })).toEqual(events[2]);
    expect(seen).toEqual(events);
  });

  it('an error reply becomes an error with the daemon\'s message and exit code', async () => {
    await expect(callDaemon(socket, 'GET', '/missing')).rejects.toMatchObject({ message: 'no such domain', exitCode: 4 });
  });

  it('no daemon at the socket: exit code 3 and how to start it', async () => {
    await expect(callDaemon(join(dir, 'none.sock'), 'GET', '/json')).rejects.toMatchObject({ exitCode: 3, message: expect.stringMatching(/not running/) });
  });
});
