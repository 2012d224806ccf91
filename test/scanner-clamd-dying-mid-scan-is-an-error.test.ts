// clamd killed in the middle of a scan (a restart of clamav-daemon, the OOM killer): the job ends in
// an error that names clamd and says what to do, never in a result (the files after the kill were
// not scanned); the scanner keeps serving, and once clamd is back the next job is whole.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { ScanEvent } from '../src/scan/protocol.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { makeFs, MiB } from './support/ext-images.js';
import { tempDir } from './support/nbd-servers.js';
import { postScan, scannerWorld, startClamd, startScanner, type ScannerWorld } from './support/scanner.js';

useCleanup();

let w: ScannerWorld;
let dir: string;
let image: string;
const FILES = 1500;

beforeAll(async () => {
  const t = tempDir('scanner-clamd-dies');
  onCleanup(() => t.remove());
  dir = t.path;
  w = await scannerWorld(dir);
  const tree = join(dir, 'tree');
  for (let d = 0; d < 15; d++) {
    mkdirSync(join(tree, `d${d}`), { recursive: true });
    for (let i = 0; i < FILES / 15; i++) writeFileSync(join(tree, `d${d}`, `f${i}`), randomBytes(16_384 + ((i * 977) % 16_384)));
  }
  image = join(dir, 'fs.img');
  await makeFs(image, 96 * MiB, ['mkfs.ext4'], tree);
}, 180_000);

describe('clamd dying mid-scan', () => {
  it('ends the job in an error naming clamd, never a result; the scanner scans whole again once clamd is back', async () => {
    const cdir = join(dir, 'clamd-mortal');
    let clamd = await startClamd(cdir);
    const base = w.config() as { clamd: Record<string, unknown>; limits: Record<string, number> };
    // One file at a time: the scan lasts well past the first progress event (500 ms) on any machine.
    const scanner = await startScanner(dir, { ...base, clamd: { ...base.clamd, socket: clamd.socket }, limits: { ...base.limits, concurrency: 1 } }, w.ns, 'nobody');
    let killed = false;
    const onEvent = (e: ScanEvent) => {
      if (!killed && e.type === 'progress' && (e as { files?: number }).files! > 0) {
        killed = true;
        void clamd.stop();
      }
    };
    const r = await postScan(scanner.url, await w.job(image, 'dies'), w.hv, '/v1/scans', { onEvent });
    expect(killed, r.body).toBe(true);
    expect(r.result, r.body).toBeUndefined();
    expect(r.events.at(-1)).toMatchObject({ type: 'error', id: 'dies', message: expect.stringMatching(/^clamd on .* closed the connection/), hint: expect.stringMatching(/clamd's log/) });
    // The workers' spool files went with their clamd connections.
    expect(readdirSync(join(dir, 'spool'))).toEqual([]);
    clamd = await startClamd(cdir);
    const again = await postScan(scanner.url, await w.job(image, 'back'), w.hv);
    expect(again.result, again.body).toMatchObject({ complete: true, scanned: { files: FILES } });
  });
});
