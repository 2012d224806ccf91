// The scanner streams several files to clamd at once (one INSTREAM connection each, so every clamd
// thread is busy) and frames them as clamd reads them: 4-byte big-endian chunk lengths of at most
// 1 MiB and a zero-length end. A stand-in clamd on a unix socket (the real one shows neither its
// concurrency nor the framing) holds every answer until `concurrency` streams are open at once:
// a scanner that sent one file at a time would never get one.
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
  streams: { sha256: string; chunks: number[] }[];
}

/** A clamd stand-in: parses zINSTREAM framing, answers "stream: OK" once `hold` streams have been open at the same time. */
async function standIn(hold: number): Promise<Stand> {
  const st: Stand = { socket: join(dir, `clamd-${Math.random().toString(16).slice(2)}.sock`), maxOpen: 0, streams: [] };
  let open = 0;
  let released = false;
  const waiting: (() => void)[] = [];
  const server = createServer((s: Socket) => {
    open++;
    st.maxOpen = Math.max(st.maxOpen, open);
    if (open >= hold && !released) { released = true; waiting.splice(0).forEach((f) => f()); }
    s.on('close', () => { open--; });
    let buf = Buffer.alloc(0);
    let started = false;
    const hash = createHash('sha256');
    const chunks: number[] = [];
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (!started) {
        if (buf.length < 10) return;
        expect(buf.subarray(0, 10).toString('latin1')).toBe('zINSTREAM\0');
        buf = buf.subarray(10);
        started = true;
      }
      while (buf.length >= 4) {
        const n = buf.readUInt32BE(0);
        if (n === 0) {
          st.streams.push({ sha256: hash.digest('hex'), chunks });
          const answer = () => s.end('stream: OK\0');
          if (released) answer(); else waiting.push(answer);
          buf = Buffer.alloc(0);
          return;
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
  it('keeps `concurrency` INSTREAM connections busy at once, each file framed as clamd reads it', async () => {
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
    // Every file arrived whole, in chunks of at most 1 MiB.
    expect(stand.streams.map((s) => s.sha256).sort()).toEqual([...contents.values()].sort());
    expect(Math.max(...stand.streams.flatMap((s) => s.chunks))).toBe(MiB);
  });
});
