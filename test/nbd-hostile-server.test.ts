// A hostile fake NBD server gets a clear protocol error and a closed connection: never a hang, a crash,
// or a buffer the size of a bogus length.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient, NbdProtocolError } from '../src/nbd/index.js';
import { TimeoutError } from '../src/util/errors.js';
import { DONE, blockStatusChunk, chunk, dataChunk, noneChunk, simpleReply } from './support/nbd-wire.js';
import { optionReply, startFakeServer, type FakeScript, type FakeServer } from './support/fake-nbd-server.js';
import { tempDir, type TempDir } from './support/nbd-servers.js';

let dir: TempDir;
let server: FakeServer | undefined;

beforeAll(() => {
  dir = tempDir('nbd-hostile');
});

afterEach(async () => {
  await server?.stop();
  server = undefined;
});

afterAll(() => dir?.remove());

async function fake(script: FakeScript): Promise<FakeServer> {
  server = await startFakeServer(dir.path, script);
  return server;
}

/** Connects, runs `op`, and expects it to fail with `re` within the test timeout, the connection closed. */
async function expectBroken(s: FakeServer, op: (c: NbdClient) => Promise<unknown>, re: RegExp, errorClass: Function = NbdProtocolError) {
  const c = await NbdClient.connect(s.uri, { timeoutMs: 500, metaContexts: ['base:allocation'] });
  const before = process.memoryUsage().arrayBuffers;
  const err = await op(c).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(errorClass);
  expect((err as Error).message).toMatch(re);
  // The same error for anything after it: the connection is gone.
  await expect(c.pread(Buffer.alloc(512), 0)).rejects.toThrow();
  await s.clientClosed();
  await c.close();
  // Nothing near the size of a bogus length was allocated.
  expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * 1024 * 1024);
}

const read = (c: NbdClient, len = 4096, off = 0) => c.pread(Buffer.alloc(len), off);

describe('NBD client against a hostile server', () => {
  it('a short read: the server closes in the middle of a data chunk', async () => {
    const s = await fake({
      onRequest: (r, sock) => {
        const full = dataChunk(r.cookie, r.offset, Buffer.alloc(r.length, 1), DONE);
        sock.end(full.subarray(0, 20 + 8 + 1000));
      },
    });
    await expectBroken(s, (c) => read(c, 65536), /closed the connection in the middle of a reply with 1 requests in flight/);
  });

  it('a reply with the wrong handle (cookie)', async () => {
    const s = await fake({ onRequest: (r, sock) => sock.write(simpleReply(r.cookie + 1000)) });
    await expectBroken(s, (c) => c.flush().then(() => read(c)), /cookie \d+, which is not in flight/);
  });

  it('data past the end of the request', async () => {
    const s = await fake({ onRequest: (r, sock) => sock.write(dataChunk(r.cookie, r.offset + 4096, Buffer.alloc(512), DONE)) });
    await expectBroken(s, (c) => read(c), /outside READ/);
  });

  it('a data chunk longer than the request', async () => {
    const s = await fake({ onRequest: (r, sock) => sock.write(dataChunk(r.cookie, r.offset, Buffer.alloc(r.length + 1), DONE)) });
    await expectBroken(s, (c) => read(c), /data chunk of 4097 bytes for READ cookie \d+ of 4096 bytes/);
  });

  it('a chunk after the final flag', async () => {
    const s = await fake({
      onRequest: (r, sock) => {
        sock.write(dataChunk(r.cookie, r.offset, Buffer.alloc(r.length), DONE));
        sock.write(noneChunk(r.cookie));
      },
    });
    const c = await NbdClient.connect(s.uri, { timeoutMs: 500 });
    // The first read completes; the stray chunk then breaks the connection.
    await read(c);
    await s.clientClosed();
    await expect(read(c)).rejects.toThrow(/not in flight/);
    await c.close();
  });

  it('a bogus 4 GiB data chunk length is refused from the header alone', async () => {
    const s = await fake({ onRequest: (r, sock) => sock.write(chunk(r.cookie, 1, DONE, Buffer.alloc(8), 0xfffffff0)) });
    await expectBroken(s, (c) => read(c), /data chunk of \d+ bytes for READ/);
  });

  it('a bogus block status length is refused from the header alone', async () => {
    const s = await fake({ onRequest: (r, sock) => sock.write(chunk(r.cookie, 5, DONE, Buffer.alloc(12), 0xfffffff4)) });
    await expectBroken(s, async (c) => { for await (const _ of c.blockStatus('base:allocation')) void _; }, /block status chunk of \d+ bytes.*limit/);
  });

  it('block status for a context never negotiated only: no extents is an error', async () => {
    const s = await fake({ onRequest: (r, sock) => sock.write(blockStatusChunk(r.cookie, 9, [[4096, 0]], DONE)) });
    await expectBroken(s, async (c) => { for await (const _ of c.blockStatus('base:allocation')) void _; }, /without extents for context 1/);
  });

  it('a server that stops answering: every request in flight fails with a timeout', async () => {
    const s = await fake({ onRequest: () => {} });
    const c = await NbdClient.connect(s.uri, { timeoutMs: 400 });
    const t0 = Date.now();
    const all = await Promise.allSettled([read(c), read(c, 512, 4096), c.flush()]);
    expect(Date.now() - t0).toBeLessThan(5000);
    for (const r of all) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(TimeoutError);
      expect(String((r as PromiseRejectedResult).reason.message)).toMatch(/sent nothing for \d+ ms with 3 requests in flight/);
    }
    await s.clientClosed();
    await c.close();
  });

  it('a server that stalls in the middle of a simple read reply', async () => {
    const s = await fake({ onRequest: (r, sock) => sock.write(simpleReply(r.cookie, 0, Buffer.alloc(100))) });
    await expectBroken(s, (c) => read(c), /sent nothing for/, TimeoutError);
  });

  it('the handshake: a bogus option reply length is refused without allocating it', async () => {
    const s = await fake({
      handshake: (sock) => {
        sock.write(Buffer.concat([Buffer.from('NBDMAGICIHAVEOPT'), Buffer.from([0, 3])]));
        sock.once('data', () => sock.write(optionReply(8, 1, Buffer.alloc(0), 0xffffff00)));
      },
    });
    await expect(NbdClient.connect(s.uri, { timeoutMs: 2000 })).rejects.toThrow(/option reply of \d+ bytes .*limit/);
    await s.clientClosed();
  });

  it('the handshake: not an NBD server, and a server that says nothing', async () => {
    let s = await fake({ handshake: (sock) => sock.write('HTTP/1.1 400 Bad Request\r\n\r\n') });
    await expect(NbdClient.connect(s.uri, { timeoutMs: 2000 })).rejects.toThrow(/not an NBD server/);
    await s.stop();
    s = await fake({ handshake: () => {} });
    const t0 = Date.now();
    await expect(NbdClient.connect(s.uri, { timeoutMs: 300 })).rejects.toThrow(TimeoutError);
    expect(Date.now() - t0).toBeLessThan(3000);
    await s.clientClosed();
  });

  it('a server that hangs up during the handshake', async () => {
    const s = await fake({ handshake: (sock) => sock.end(Buffer.from('NBDMAGIC')) });
    await expect(NbdClient.connect(s.uri, { timeoutMs: 2000 })).rejects.toThrow(/closed the connection during the handshake/);
  });

  it('an out-of-order reply for one request does not disturb the others', async () => {
    // Sanity check of the fake itself: replies in reverse order are legal and must work.
    const pending: Array<() => void> = [];
    const s = await fake({
      onRequest: (r, sock) => {
        pending.push(() => sock.write(dataChunk(r.cookie, r.offset, Buffer.alloc(r.length, r.offset / 4096 + 1), DONE)));
        if (pending.length === 4) for (const f of pending.reverse()) f();
      },
    });
    const c = await NbdClient.connect(s.uri, { timeoutMs: 2000 });
    const bufs = [0, 1, 2, 3].map(() => Buffer.alloc(4096));
    await Promise.all(bufs.map((b, i) => c.pread(b, i * 4096)));
    bufs.forEach((b, i) => expect(b.every((x) => x === i + 1)).toBe(true));
    await c.close();
  });
});
