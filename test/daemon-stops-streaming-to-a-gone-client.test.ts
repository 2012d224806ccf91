// A CLI that goes away mid-stream (`virtcbt backup … | head -1`) never reads again: virtcbtd must
// stop streaming to it (ending the event stream, while the job itself goes on) instead of waiting
// for a 'drain' that never comes and holding the stream and its events until it exits.
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { ControlServer } from '../src/daemon/control-server.js';
import { pollUntil } from '../src/util/abort.js';

let server: ControlServer | undefined;
let dir: string | undefined;
afterEach(async () => {
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

it('a client that closes after the first line ends the stream on the daemon side', async () => {
  dir = mkdtempSync(join(tmpdir(), 'virtcbt-stream-'));
  const socket = join(dir, 'd.sock');
  let yielded = 0;
  let ended = false;
  // Events big enough to fill the socket's buffers soon: a writer that ignores backpressure stalls on 'drain'.
  const pad = 'x'.repeat(64 * 1024);
  async function* events() {
    try {
      for (;;) {
        yielded++;
        yield { type: 'progress', n: yielded, pad };
        await new Promise((r) => setImmediate(r));
      }
    } finally {
      ended = true;
    }
  }
  server = new ControlServer();
  server.route('POST', '/v1/stream', async () => ({ stream: events() }));
  await server.listen(socket, { caller: 'root', mode: 0o600 });

  const client = createConnection(socket);
  client.write('POST /v1/stream HTTP/1.1\r\nhost: virtcbtd\r\ncontent-length: 2\r\n\r\n{}');
  // Read until the first event arrived, then stop reading and go away, as `head -1` does.
  await new Promise<void>((resolve) => {
    let text = '';
    client.on('data', (b: Buffer) => {
      text += b.toString();
      if (text.includes('"n":1')) {
        client.pause();
        resolve();
      }
    });
  });
  client.destroy();
  await pollUntil(() => ended, 'the daemon to end the stream of a client that went away', { timeoutMs: 10_000, intervalMs: 20 });
  // A finished generator yields nothing more: the events of the job are no longer pulled.
  expect(yielded).toBeGreaterThan(1);
});
