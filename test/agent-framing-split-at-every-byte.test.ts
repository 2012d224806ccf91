// Guest-agent framing fed with buffers: the bytes a real qemu-ga sends (a complaint about a
// previous client's half request, the 0xFF-delimited sync reply, returns and errors with ids),
// split at every byte boundary, one byte at a time and in random pieces, give the same sync and
// the same replies as the stream read whole — the way the socket transport reads them.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeAgentCommand, encodeSync, isSyncReply, parseAgentReply, type AgentReply } from '../src/guest/framing.js';
import { LineSplitter } from '../src/qmp/index.js';
import { pollUntil } from '../src/util/abort.js';
import { onCleanup, trackChild, useCleanup } from './support/cleanup.js';

useCleanup();
const QEMU_GA = '/usr/sbin/qemu-ga';
/** Read-only commands: qemu-ga runs on this host, so everything else is disabled. */
const ALLOWED = ['guest-sync-delimited', 'guest-sync', 'guest-ping', 'guest-info', 'guest-get-timezone'];
const SYNC_ID = 123456789;

let stream: Buffer;

/** What the transport makes of a stream: lines dropped until the sync reply, then the replies. */
function decode(pieces: Uint8Array[]): { dropped: number; synced: boolean; replies: AgentReply[]; buffered: number } {
  const lines = new LineSplitter();
  const out = { dropped: 0, synced: false, replies: [] as AgentReply[], buffered: 0 };
  for (const p of pieces) {
    lines.push(p, (line) => {
      if (!out.synced) {
        if (isSyncReply(line, SYNC_ID)) out.synced = true;
        else out.dropped++;
        return;
      }
      const r = parseAgentReply(line);
      if (r) out.replies.push(r);
    });
  }
  out.buffered = lines.bufferedBytes;
  return out;
}

/** Starts qemu-ga on a unix socket, sends it a session and returns every byte it answered. */
async function captureFromQemuGa(): Promise<Buffer> {
  const dir = mkdtempSync(join(tmpdir(), 'virtcbt-qga-'));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const everything = (await execa(QEMU_GA, ['-b', 'help'], { reject: false, all: true })).all!.split('\n').map((s) => s.trim()).filter(Boolean);
  const blocked = everything.filter((c) => !ALLOWED.includes(c));
  expect(blocked).toContain('guest-fsfreeze-freeze');
  const sock = join(dir, 'qga.sock');
  const ga = spawn(QEMU_GA, ['-m', 'unix-listen', '-p', sock, '-t', dir, '-f', join(dir, 'pid'), '-l', join(dir, 'log'), '-b', blocked.join(',')], { stdio: 'ignore' });
  const untrack = trackChild(ga.pid!);
  onCleanup(async () => {
    if (ga.exitCode === null && ga.signalCode === null) {
      const gone = new Promise((r) => ga.once('exit', r));
      ga.kill('SIGKILL');
      await gone;
    }
    untrack();
  });
  await pollUntil(() => existsSync(sock), 'qemu-ga to listen', { timeoutMs: 10_000 });
  const s = connect(sock);
  onCleanup(() => s.destroy());
  const got: Buffer[] = [];
  s.on('data', (c: Buffer) => got.push(c));
  await new Promise<void>((r, j) => { s.once('connect', r); s.once('error', j); });
  // A previous client's half-sent request, then a resync, then commands with ids (one unknown, its
  // name in UTF-8; one disabled).
  s.write('{"execute":"guest-pi');
  s.write(encodeSync(SYNC_ID));
  const requests = [
    encodeAgentCommand('guest-ping', undefined, 'a-1'),
    encodeAgentCommand('guest-get-timezone', undefined, 'a-2'),
    encodeAgentCommand('guest-ü日😀-nope', undefined, 'a-3'),
    encodeAgentCommand('guest-info', undefined, 'a-4'),
    encodeAgentCommand('guest-fsfreeze-freeze', undefined, 'a-5'),
  ];
  for (const r of requests) s.write(r);
  // One line for the stray request, the sync reply, one reply per request.
  const lines = 2 + requests.length;
  await pollUntil(() => Buffer.concat(got).toString('latin1').split('\n').length > lines, 'qemu-ga to answer', { timeoutMs: 10_000 });
  return Buffer.concat(got);
}

beforeAll(async () => {
  const real = await captureFromQemuGa();
  // qemu-ga escapes non-ASCII as \uXXXX; raw UTF-8 is valid JSON all the same, and the framing
  // must not depend on the escaping: one reply with characters of 2, 3 and 4 bytes, CRLF-ended.
  const raw = Buffer.from('{"return": {"mountpoint": "/mnt/dätä/日本/😀"}, "id": "a-6"}\r\n', 'utf8');
  stream = Buffer.concat([real, raw]);
});

describe('guest-agent framing', () => {
  it('decodes the stream qemu-ga sent, whole', () => {
    expect(stream.includes(0xff)).toBe(true);
    const whole = decode([stream]);
    expect(whole.dropped).toBe(1);
    expect(whole.synced).toBe(true);
    expect(whole.buffered).toBe(0);
    expect(whole.replies.map((r) => r.id)).toEqual(['a-1', 'a-2', 'a-3', 'a-4', 'a-5', 'a-6']);
    expect(whole.replies[0]).toEqual({ kind: 'return', id: 'a-1', value: {} });
    expect(whole.replies[2]).toEqual({ kind: 'error', id: 'a-3', error: { class: 'CommandNotFound', desc: 'The command guest-ü日😀-nope has not been found' } });
    expect((whole.replies[3] as { value: { version: string } }).value.version).toMatch(/^\d+\.\d+/);
    expect(whole.replies[4]).toMatchObject({ kind: 'error', error: { desc: expect.stringMatching(/guest-fsfreeze-freeze has been disabled/) } });
    expect(whole.replies[5]).toEqual({ kind: 'return', id: 'a-6', value: { mountpoint: '/mnt/dätä/日本/😀' } });
  });

  it('decodes the stream split in two at every byte boundary', () => {
    const whole = decode([stream]);
    for (let i = 0; i <= stream.length; i++) {
      expect(decode([stream.subarray(0, i), stream.subarray(i)]), `split at ${i}`).toEqual(whole);
    }
  });

  it('decodes the stream fed one byte at a time, and in random pieces (seeded)', () => {
    const whole = decode([stream]);
    expect(decode([...stream].map((b) => Buffer.from([b])))).toEqual(whole);
    let seed = 4242;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let round = 0; round < 100; round++) {
      const pieces: Buffer[] = [];
      for (let i = 0; i < stream.length; ) {
        const n = 1 + rnd(64);
        pieces.push(stream.subarray(i, i + n));
        i += n;
      }
      expect(decode(pieces), `round ${round}`).toEqual(whole);
    }
  });

  it('a sync reply cut anywhere is never taken for another id, and a stale one never for this one', () => {
    const sync = Buffer.from(`\xff{"return": ${SYNC_ID}}\n`, 'latin1');
    const stale = Buffer.from(`\xff{"return": ${SYNC_ID + 1}}\n`, 'latin1');
    for (let i = 0; i <= sync.length; i++) {
      expect(decode([stale.subarray(0, i), stale.subarray(i), sync.subarray(0, i), sync.subarray(i)])).toEqual({ dropped: 1, synced: true, replies: [], buffered: 0 });
    }
  });
});
