// The NBD handshake on a real server's bytes: qemu-nbd's side of a negotiation (structured
// replies, two metadata contexts, GO with block sizes, name and description), of `nbd info`
// (INFO, LIST_META_CONTEXT) and of `nbd list` is recorded through a proxy while our client talks
// to it, then fed back to the handshake cut at every byte boundary and one byte at a time. Each
// cut gives what the live client got, sends the same bytes, and reads exactly the server's bytes.
import { execa } from 'execa';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../src/nbd/index.js';
import { describe as describeServer, listExports, negotiate, type HandshakeIo } from '../src/nbd/handshake.js';
import { NBD_OPT_ABORT, NBD_REP_ACK } from '../src/nbd/protocol.js';
import { pollUntil } from '../src/util/abort.js';
import { optionReply } from './support/fake-nbd-server.js';
import { startQemuNbd, tempDir, type RunningServer, type TempDir } from './support/nbd-servers.js';

const EXPORT = 'vda-ü';
const CONTEXTS = ['base:allocation', 'qemu:dirty-bitmap:b0'];

interface Session {
  client: Buffer;
  server: Buffer;
}

let dir: TempDir;
let server: RunningServer | undefined;
let proxy: Server | undefined;
let proxyUri: string;
const sessions: Session[] = [];

/** A unix-socket proxy in front of qemu-nbd that records each connection's bytes both ways. */
async function recordingProxy(upstream: string, path: string): Promise<Server> {
  const s = createServer((down) => {
    const rec = { client: [] as Buffer[], server: [] as Buffer[] };
    const up = connect(upstream);
    let open = 2;
    const closed = () => {
      if (--open === 0) sessions.push({ client: Buffer.concat(rec.client), server: Buffer.concat(rec.server) });
    };
    down.on('data', (d: Buffer) => { rec.client.push(d); up.write(d); });
    up.on('data', (d: Buffer) => { rec.server.push(d); down.write(d); });
    down.on('close', () => { up.end(); closed(); });
    up.on('close', () => { down.end(); closed(); });
    down.on('error', () => {});
    up.on('error', () => {});
  });
  await new Promise<void>((r) => s.listen(path, r));
  return s;
}

/** Waits until the proxy has seen `n` connections close (the client's close ends each). */
const sessionsDone = (n: number) => pollUntil(() => sessions.length >= n, `${n} proxied connections to end`, { timeoutMs: 10_000, intervalMs: 5 });

/**
 * The server's bytes, delivered as `pieces`: a piece arrives only when the handshake waits for
 * bytes it does not have yet (as from a socket). Records what the handshake writes.
 */
function replay(pieces: Buffer[]): { io: HandshakeIo; written(): Buffer; unread(): Buffer } {
  const written: Buffer[] = [];
  let have = Buffer.alloc(0);
  let next = 0;
  return {
    io: {
      async read(n) {
        while (have.length < n) {
          if (next === pieces.length) throw new Error(`the handshake wants ${n} bytes; only ${have.length} are left of the server's`);
          await new Promise((r) => setImmediate(r));
          have = Buffer.concat([have, pieces[next++]!]);
        }
        const out = have.subarray(0, n);
        have = have.subarray(n);
        return out;
      },
      write(b) {
        written.push(Buffer.from(b));
      },
    },
    written: () => Buffer.concat(written),
    unread: () => Buffer.concat([have, ...pieces.slice(next)]),
  };
}

/** Every way of cutting `b` this test feeds: whole, in two at every byte, and byte by byte. */
function* cuts(b: Buffer): Generator<[string, Buffer[]]> {
  yield ['whole', [b]];
  for (let i = 0; i <= b.length; i++) yield [`cut at ${i}`, [b.subarray(0, i), b.subarray(i)]];
  yield ['byte by byte', [...b].map((x) => Buffer.from([x]))];
}

// qemu-nbd answers NBD_OPT_ABORT with an ACK that our client does not wait for (it closes).
const ABORT_ACK = optionReply(NBD_OPT_ABORT, NBD_REP_ACK);

beforeAll(async () => {
  dir = tempDir('nbd-handshake');
  const image = join(dir.path, 'disk.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  await execa('qemu-img', ['bitmap', '--add', image, 'b0']);
  await execa('qemu-img', ['bitmap', '--disable', image, 'b0']);
  server = await startQemuNbd(image, dir.path, { readOnly: true, bitmaps: ['b0'], exportName: EXPORT, extra: ['-D', 'test disk ü 日本'] });
  const path = join(dir.path, 'proxy.sock');
  proxy = await recordingProxy(server.socket, path);
  proxyUri = `nbd+unix:///${encodeURIComponent(EXPORT)}?socket=${path}`;
});

afterAll(async () => {
  await new Promise<void>((r) => (proxy ? proxy.close(() => r()) : r()));
  await server?.stop();
  dir?.remove();
});

describe('NBD handshake split at every byte', () => {
  it('negotiate (structured replies, metadata contexts, GO) on qemu-nbd\'s bytes', async () => {
    const before = sessions.length;
    const live = await NbdClient.connect(proxyUri, { metaContexts: CONTEXTS });
    const info = live.info;
    await live.close();
    await sessionsDone(before + 1);
    const s = sessions[before]!;
    expect(info.metaContexts.size).toBe(2);
    expect(info.description).toBe('test disk ü 日本');
    expect(info.blockSizeStated).toBe(true);
    for (const [what, pieces] of cuts(s.server)) {
      const r = replay(pieces);
      const got = await negotiate(r.io, { exportName: EXPORT, tls: false, metaContexts: CONTEXTS, what: 'qemu-nbd' });
      expect(got, what).toEqual(info);
      // Our side of the conversation is the live client's, up to its NBD_CMD_DISC.
      expect(r.written().equals(s.client.subarray(0, r.written().length)), what).toBe(true);
      expect(s.client.length - r.written().length, what).toBe(28);
      expect(r.unread().length, what).toBe(0);
    }
  });

  it('describe (INFO, LIST_META_CONTEXT) on qemu-nbd\'s bytes', async () => {
    const before = sessions.length;
    const live = await NbdClient.describe(proxyUri);
    await sessionsDone(before + 1);
    const s = sessions[before]!;
    expect(live.contexts).toEqual(expect.arrayContaining(CONTEXTS));
    for (const [what, pieces] of cuts(s.server)) {
      const r = replay(pieces);
      expect(await describeServer(r.io, { exportName: EXPORT, tls: false, what: 'qemu-nbd' }), what).toEqual(live);
      expect(r.written().equals(s.client), what).toBe(true);
      // Nothing read beyond the handshake but the ACK to our parting NBD_OPT_ABORT, if it came in time.
      expect([0, ABORT_ACK.length], what).toContain(r.unread().length);
      if (r.unread().length) expect(r.unread().equals(ABORT_ACK), what).toBe(true);
    }
  });

  it('list (NBD_OPT_LIST) on qemu-nbd\'s bytes', async () => {
    const before = sessions.length;
    const live = await NbdClient.list(proxyUri);
    await sessionsDone(before + 1);
    const s = sessions[before]!;
    expect(live).toEqual([{ name: EXPORT, description: 'test disk ü 日本' }]);
    for (const [what, pieces] of cuts(s.server)) {
      const r = replay(pieces);
      expect(await listExports(r.io, { tls: false, what: 'qemu-nbd' }), what).toEqual(live);
      expect(r.written().equals(s.client), what).toBe(true);
      if (r.unread().length) expect(r.unread().equals(ABORT_ACK), what).toBe(true);
    }
  });
});
