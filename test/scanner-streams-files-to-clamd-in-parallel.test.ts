// The scanner streams several files to clamd at once (one IDSESSION connection per file in flight,
// so every clamd thread is busy) and frames them as clamd reads them: INSTREAM after INSTREAM in a
// session, 4-byte big-endian chunk lengths of at most 1 MiB and a zero-length end. A stand-in clamd
// on a unix socket (the real one shows neither its concurrency nor the framing) holds every answer
// until `concurrency` sessions are open at once: a scanner that sent one file at a time would never
// get one.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint } from '../src/copy/index.js';
import { ClamdClient, runScanJob } from '../src/scan/scanner/index.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { makeFs, MiB } from './support/ext-images.js';
import { lcg, tempDir } from './support/nbd-servers.js';

useCleanup();

let dir: string;
let image: string;
const contents = new Map<string, string>();

beforeAll(async () => {
  const t = tempDir('scanner-parallel');
  onCleanup(() => t.remove());
  dir = t.path;
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  const rnd = lcg(9);
  for (let i = 0; i < 24; i++) {
    const b = Buffer.alloc(i === 3 ? 2 * MiB + 123 : 5000 + i * 977);
    for (let k = 0; k < b.length; k++) b[k] = rnd() >>> 24;
    writeFileSync(join(tree, `f${i}`), b);
  }
  for (const f of readdirSync(tree)) contents.set(`/${f}`, createHash('sha256').update(readFileSync(join(tree, f))).digest('hex'));
  image = join(dir, 'fs.img');
  await makeFs(image, 64 * MiB, ['mkfs.ext4'], tree);
});

interface Stand {
  socket: string;
  maxOpen: number;
  /** Connections accepted in all. */
  connections: number;
  streams: { sha256: string; chunks: number[] }[];
}

/**
 * A clamd stand-in: parses IDSESSION and zINSTREAM framing as clamd does, answers "N: stream: OK"
 * once `hold` sessions have been open at the same time, and ends a session on zEND.
 */
async function standIn(hold: number): Promise<Stand> {
  const st: Stand = { socket: join(dir, `clamd-${Math.random().toString(16).slice(2)}.sock`), maxOpen: 0, connections: 0, streams: [] };
  let open = 0;
  let released = false;
  const waiting: (() => void)[] = [];
  const server = createServer((s: Socket) => {
    open++;
    st.connections++;
    st.maxOpen = Math.max(st.maxOpen, open);
    if (open >= hold && !released) { released = true; waiting.splice(0).forEach((f) => f()); }
    s.on('close', () => { open--; });
    let buf = Buffer.alloc(0);
    let session = false;
    let inStream = false;
    let requests = 0;
    let hash = createHash('sha256');
    let chunks: number[] = [];
    const command = (name: string) => {
      if (buf.length < name.length) return false;
      expect(buf.subarray(0, name.length).toString('latin1')).toBe(name);
      buf = buf.subarray(name.length);
      return true;
    };
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      for (;;) {
        if (!session) {
          if (!command('zIDSESSION\0')) return;
          session = true;
        }
        if (!inStream) {
          if (buf.length >= 5 && buf.subarray(0, 5).toString('latin1') === 'zEND\0') return void s.end();
          if (!command('zINSTREAM\0')) return;
          inStream = true;
          requests++;
          hash = createHash('sha256');
          chunks = [];
        }
        if (buf.length < 4) return;
        const n = buf.readUInt32BE(0);
        if (n === 0) {
          st.streams.push({ sha256: hash.digest('hex'), chunks });
          const id = requests;
          const answer = () => s.write(`${id}: stream: OK\0`);
          if (released) answer(); else waiting.push(answer);
          buf = buf.subarray(4);
          inStream = false;
          continue;
        }
        if (buf.length < 4 + n) return;
        chunks.push(n);
        hash.update(buf.subarray(4, 4 + n));
        buf = buf.subarray(4 + n);
      }
    });
  });
  await new Promise<void>((r) => server.listen(st.socket, r));
  onCleanup(() => new Promise<void>((r) => server.close(() => r())));
  return st;
}

describe('streaming to clamd', () => {
  it('keeps `concurrency` clamd sessions busy at once, each file framed as clamd reads it', async () => {
    const stand = await standIn(4);
    const ep = await FileEndpoint.open(image);
    onCleanup(() => ep.close());
    const result = await runScanJob({ id: 'p1', domain: 'vm1', disks: [{ target: 'vda', uri: 'nbd://unused', size: statSync(image).size }] }, {
      clamd: new ClamdClient(stand.socket, 5_000), nbdTlsDir: '/nonexistent', emit: () => {}, open: async () => ep,
      limits: { maxFileBytes: 64 * MiB, maxFiles: 1000, maxSeconds: 60, streamMaxLength: 64 * MiB, concurrency: 4 },
    });
    expect(result.infected).toEqual([]);
    expect(result.scanned.files).toBe(24);
    expect(result.complete).toBe(true);
    expect(stand.maxOpen).toBe(4);
    // 24 files on 4 sessions: a connection per file would have made 24.
    expect(stand.connections).toBe(4);
    // Every file arrived whole, in chunks of at most 1 MiB.
    expect(stand.streams.map((s) => s.sha256).sort()).toEqual([...contents.values()].sort());
    expect(Math.max(...stand.streams.flatMap((s) => s.chunks))).toBe(MiB);
  });
});
