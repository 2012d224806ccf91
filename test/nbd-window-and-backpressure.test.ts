// The bounded window and backpressure: never more requests in flight than allowed, and a server that
// stops reading our writes makes them wait (bounded), then time out, instead of buffering without end.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../src/nbd/index.js';
import { TimeoutError } from '../src/util/errors.js';
import { DONE, dataChunk, simpleReply } from './support/nbd-wire.js';
import { startFakeServer, type FakeServer } from './support/fake-nbd-server.js';
import { tempDir, type TempDir } from './support/nbd-servers.js';

let dir: TempDir;
let server: FakeServer | undefined;

beforeAll(() => {
  dir = tempDir('nbd-window');
});
afterEach(async () => {
  await server?.stop();
  server = undefined;
});
afterAll(() => dir?.remove());

describe('NBD window and backpressure', () => {
  it('keeps at most `inflight` requests outstanding at the server', async () => {
    let outstanding = 0;
    let most = 0;
    server = await startFakeServer(dir.path, {
      size: 64 << 20,
      onRequest: (r, sock) => {
        outstanding++;
        most = Math.max(most, outstanding);
        // Answer a little later, so requests pile up if the client lets them.
        setTimeout(() => {
          outstanding--;
          sock.write(dataChunk(r.cookie, r.offset, Buffer.alloc(r.length, 7), DONE));
        }, 2);
      },
    });
    const c = await NbdClient.connect(server.uri, { inflight: 3, timeoutMs: 5000 });
    const bufs = Array.from({ length: 40 }, () => Buffer.alloc(4096));
    await Promise.all(bufs.map((b, i) => c.pread(b, i * 4096)));
    expect(most).toBe(3);
    expect(bufs.every((b) => b.every((x) => x === 7))).toBe(true);
    await c.close();
  });

  it('write payloads wait for the socket to drain, and time out if the server never reads', async () => {
    server = await startFakeServer(dir.path, {
      size: 256 << 20,
      flags: 0x1 | 0x4,
      handshakeThenStall: true,
    });
    const c = await NbdClient.connect(server.uri, { inflight: 64, timeoutMs: 600 });
    const payload = Buffer.alloc(4 << 20, 1);
    const before = process.memoryUsage().arrayBuffers;
    const writes = Array.from({ length: 48 }, (_, i) => c.pwrite(payload, i * payload.length).then(() => 'ok', (e: unknown) => e));
    const results = await Promise.all(writes);
    // Everything failed with the timeout; nothing succeeded against a server that reads nothing.
    for (const r of results) expect(r).toBeInstanceOf(TimeoutError);
    // The same payload object was queued, never copied 48 times.
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 << 20);
    await c.close();
  });

  it('a server that answers a flush with an error leaves the connection usable', async () => {
    server = await startFakeServer(dir.path, {
      flags: 0x1 | 0x4,
      onRequest: (r, sock) => sock.write(r.type === 3 ? simpleReply(r.cookie, 5) : dataChunk(r.cookie, r.offset, Buffer.alloc(r.length), DONE)),
    });
    const c = await NbdClient.connect(server.uri, { timeoutMs: 2000 });
    await expect(c.flush()).rejects.toThrow(/NBD FLUSH .* failed: EIO/);
    await c.pread(Buffer.alloc(512), 0);
    await c.close();
  });
});
