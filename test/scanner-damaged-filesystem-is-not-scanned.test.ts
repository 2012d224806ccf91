// A guest filesystem damaged on purpose (superblock, extent tree, directory entries) is never
// reported clean: the scanner says which filesystem or file it could not read and why, scans what
// it still can, and returns its verdict quickly (no crash, no hang).
import { closeSync, copyFileSync, mkdirSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { ScanResult } from '../src/scan/protocol.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { debugfs, makeFs, MiB, writeTree } from './support/ext-images.js';
import { tempDir } from './support/nbd-servers.js';
import { EICAR, postScan, scannerWorld, startScanner, type RunningScanner, type ScannerWorld } from './support/scanner.js';

useCleanup();

let w: ScannerWorld;
let scanner: RunningScanner;
let base: string;
let n = 0;

function patch(image: string, offset: number, f: (b: Buffer) => void, length = 4096): void {
  const fd = openSync(image, 'r+');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    f(b);
    writeSync(fd, b, 0, length, offset);
  } finally {
    closeSync(fd);
  }
}

beforeAll(async () => {
  const t = tempDir('scanner-damaged');
  onCleanup(() => t.remove());
  w = await scannerWorld(t.path);
  const tree = join(t.path, 'tree');
  writeTree(tree, 5);
  mkdirSync(join(tree, 'tmp'));
  writeFileSync(join(tree, 'tmp', 'x.bin'), `x ${EICAR}\n`);
  base = join(t.path, 'base.img');
  await makeFs(base, 160 * MiB, ['mkfs.ext4', '-b', '4096'], tree);
  scanner = await startScanner(t.path, w.config({ limits: { maxFileBytes: 64 * MiB } }), w.ns);
}, 120_000);

async function damagedCopy(f: (image: string) => Promise<void> | void): Promise<string> {
  const p = join(w.dir, `damaged-${n++}.img`);
  copyFileSync(base, p);
  await f(p);
  return p;
}

async function scan(image: string): Promise<ScanResult> {
  const r = await postScan(scanner.url, await w.job(image, `d${n}`), w.hv);
  expect(r.result, r.body).toBeDefined();
  return r.result!;
}

describe('a damaged filesystem', { timeout: 60_000 }, () => {
  it('superblock: the filesystem is not scanned, with the reason', async () => {
    // One byte of the reserved-blocks count: the superblock's checksum no longer matches.
    const img = await damagedCopy((p) => patch(p, 1024, (b) => { b[8] ^= 0x55; }, 1024));
    const res = await scan(img);
    expect(res.notScanned).toEqual([expect.objectContaining({ disk: 'vda', partition: 0, kind: 'ext4' })]);
    expect(res.notScanned[0]!.reason).toMatch(/^ext4 not readable: .*superblock/);
    expect(res.scanned.files).toBe(0);
    expect(res.infected).toEqual([]);
    expect(res.complete).toBe(false);
  });

  it('extent tree: that file is skipped as unreadable, the rest is scanned and the infected file still found', async () => {
    const img = await damagedCopy(async (p) => {
      const leaf = Number(/\(ETB0\):(\d+)/.exec(await debugfs(p, 'stat /islands.bin'))![1]);
      patch(p, leaf * 4096, (b) => { b.fill(0xa5, 12, 200); });
    });
    const res = await scan(img);
    // far.bin (70 MiB) is over clamd's StreamMaxLength here: skipped for that, as reported.
    expect(res.skipped.filter((s) => s.path !== '/far.bin')).toEqual([expect.objectContaining({ path: '/islands.bin', reason: 'unreadable' })]);
    expect(res.skipped.find((s) => s.path === '/islands.bin')!.detail).toMatch(/^vm1 vda: inode \d+: extent tree block \d+ checksum mismatch$/);
    expect(res.infected.map((f) => f.path)).toEqual(['/tmp/x.bin']);
    expect(res.scanned.files).toBeGreaterThan(400);
    expect(res.complete).toBe(false);
  });

  it('directory entries: the filesystem is reported not (fully) scanned, what was found before is scanned', async () => {
    const img = await damagedCopy(async (p) => {
      const block = Number(/\(0\):(\d+)/.exec(await debugfs(p, 'stat /big-dir'))![1]);
      patch(p, block * 4096, (b) => { b.fill(0x5a, 0, 64); });
    });
    const res = await scan(img);
    expect(res.notScanned).toEqual([expect.objectContaining({ disk: 'vda', partition: 0, kind: 'ext4' })]);
    expect(res.notScanned[0]!.reason).toMatch(/directory tree damaged/);
    expect(res.complete).toBe(false);
  });
});
