// virtcbt-scanner in its own network namespace reads ext4 images over NBD with TLS and has a real
// clamd scan them: the EICAR-like file is found with its path, signature, size and sha256; a clean
// image is clean and complete; an XFS image is reported as not scanned, never clean; hit limits
// (file size, file count) are reported with the files they skipped. Files reach clamd by path from
// the scanner's spool directory, which is empty again after the job.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import type { ScanJob } from '../src/scan/protocol.js';
import { pollUntil } from '../src/util/abort.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { makeFs, MiB, writeTree } from './support/ext-images.js';
import { tempDir } from './support/nbd-servers.js';
import { EICAR, postScan, scannerWorld, SIGNATURE, startScanner, type RunningScanner, type ScannerWorld } from './support/scanner.js';

useCleanup();

/** writeTree's regular files (407, far.bin among them) and the infected one. */
const FILES_IN_INFECTED = 408;

let w: ScannerWorld;
let scanner: RunningScanner;
const images: Record<'infected' | 'clean' | 'xfs' | 'gpt', string> = {} as never;

beforeAll(async () => {
  const t = tempDir('scanner');
  onCleanup(() => t.remove());
  w = await scannerWorld(t.path);
  const infected = join(t.path, 'infected-tree');
  mkdirSync(join(infected, 'home/user/downloads'), { recursive: true });
  writeTree(infected, 11);
  writeFileSync(join(infected, 'home/user/downloads/invoice.pdf.exe'), `junk before ${EICAR} junk after\n`);
  images.infected = join(t.path, 'infected.img');
  await makeFs(images.infected, 160 * MiB, ['mkfs.ext4'], infected);
  const clean = join(t.path, 'clean-tree');
  mkdirSync(join(clean, 'etc'), { recursive: true });
  for (let i = 0; i < 50; i++) writeFileSync(join(clean, 'etc', `conf-${i}`), `setting ${i} = ${'x'.repeat(i * 100)}\n`);
  writeFileSync(join(clean, 'almost'), 'EICAR-STANDARD-ANTIVIRUS but not the rest\n');
  images.clean = join(t.path, 'clean.img');
  await makeFs(images.clean, 32 * MiB, ['mkfs.ext4'], clean);
  images.xfs = join(t.path, 'xfs.img');
  await execa('truncate', ['-s', String(300 * MiB), images.xfs]);
  await execa('mkfs.xfs', ['-q', '-f', images.xfs]);
  // A GPT disk: partition 1 the clean ext4, partition 2 the XFS.
  images.gpt = join(t.path, 'gpt.img');
  await execa('truncate', ['-s', String(340 * MiB), images.gpt]);
  await execa('sfdisk', ['-q', images.gpt], { input: `label: gpt\nstart=2048, size=${32 * 2048}\nsize=${300 * 2048}\n` });
  await execa('dd', [`if=${images.clean}`, `of=${images.gpt}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
  await execa('dd', [`if=${images.xfs}`, `of=${images.gpt}`, 'bs=1M', 'seek=33', 'conv=notrunc,sparse', 'status=none']);
  scanner = await startScanner(t.path, w.config(), w.ns, 'nobody');
}, 120_000);

async function job(image: string, id: string): Promise<ScanJob> {
  const exp = await w.serve(image);
  const { size } = await import('node:fs').then((f) => f.statSync(image));
  return { id, domain: 'vm1', disks: [{ target: 'vda', uri: exp.uri, size }] };
}

describe('virtcbt-scanner over TLS', () => {
  it('finds the signature in the infected file, with path, signature, size and sha256', async () => {
    // It runs unprivileged (nobody here, its own user in the unit) and needs nothing more.
    expect(readFileSync(`/proc/${scanner.pid}/status`, 'utf8')).toMatch(/^Uid:\t65534\t65534\t65534\t65534$/m);
    expect(scanner.log()).not.toMatch(/runs as root/);
    const r = await postScan(scanner.url, await job(images.infected, 'full-1'), w.hv);
    expect(r.status, r.body).toBe(200);
    expect(r.events[0]).toMatchObject({ type: 'accepted', id: 'full-1', domain: 'vm1' });
    expect(r.events.some((e) => e.type === 'filesystem' && e.kind === 'ext4')).toBe(true);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    const content = Buffer.from(`junk before ${EICAR} junk after\n`);
    expect(res.infected).toEqual([{
      disk: 'vda', partition: 0, path: '/home/user/downloads/invoice.pdf.exe', signature: `${SIGNATURE}.UNOFFICIAL`,
      size: content.length, sha256: createHash('sha256').update(content).digest('hex'),
    }]);
    // The 'found' event came before the verdict.
    expect(r.events.findIndex((e) => e.type === 'found')).toBeLessThan(r.events.findIndex((e) => e.type === 'result'));
    // writeTree's 400 small files and more were all streamed; far.bin (70 MiB, sparse) is over maxFileBytes.
    expect(res.scanned.files).toBe(FILES_IN_INFECTED - 1);
    expect(res.scanned.filesOpened).toBe(res.scanned.files);
    expect(res.skipped).toEqual([{ disk: 'vda', partition: 0, path: '/far.bin', reason: 'size limit', detail: `${70 * MiB + 8} bytes` }]);
    expect(res.limitsHit).toEqual([{ limit: 'maxFileBytes', value: 64 * MiB, files: 1 }]);
    expect(res.complete).toBe(false);
    expect(res.scanned.nbdBytesRead).toBeGreaterThanOrEqual(res.scanned.bytesRead - 30 * MiB);
    // clamd read each file from the scanner's spool (by path, not INSTREAM), and the spool is empty again.
    expect(res.clamdHandoff).toEqual({ spooled: FILES_IN_INFECTED - 1, streamed: 0 });
    expect(readdirSync(join(w.dir, 'spool'))).toEqual([]);
  });

  it('reports a clean image as clean and complete', async () => {
    const r = await postScan(scanner.url, await job(images.clean, 'clean-1'), w.hv);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    expect(res.infected).toEqual([]);
    expect(res.notScanned).toEqual([]);
    expect(res.skipped).toEqual([]);
    expect(res.scanned.files).toBe(51);
    expect(res.complete).toBe(true);
  });

  it('reports an XFS filesystem as not scanned with the reason, never as clean', async () => {
    const r = await postScan(scanner.url, await job(images.xfs, 'xfs-1'), w.hv);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    expect(res.notScanned).toEqual([{ disk: 'vda', partition: 0, offset: 0, length: 300 * MiB, kind: 'xfs', reason: 'xfs is not readable by the scanner' }]);
    expect(res.scanned.files).toBe(0);
    expect(res.complete).toBe(false);
  });

  it('scans an ext4 partition of a GPT disk and reports its XFS partition as not scanned, by number', async () => {
    const r = await postScan(scanner.url, await job(images.gpt, 'gpt-1'), w.hv);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    expect(res.scanned.files).toBe(51);
    expect(res.infected).toEqual([]);
    expect(res.notScanned).toEqual([{ disk: 'vda', partition: 2, offset: 33 * MiB, length: 300 * MiB, kind: 'xfs', reason: 'xfs is not readable by the scanner' }]);
    expect(r.events.filter((e) => e.type === 'filesystem')).toEqual([expect.objectContaining({ partition: 1, kind: 'ext4', files: 51 })]);
    expect(res.complete).toBe(false);
  });

  it('reports the file-count limit when hit, naming the files it skipped', async () => {
    const limited = await startScanner(w.dir, w.config({ limits: { maxFiles: 10, concurrency: 2 } }), w.ns);
    const r = await postScan(limited.url, await job(images.clean, 'count-1'), w.hv);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    expect(res.scanned.files).toBe(10);
    expect(res.limitsHit).toEqual([{ limit: 'maxFiles', value: 10, files: 41 }]);
    expect(res.skipped).toHaveLength(41);
    expect(res.skipped.every((s) => s.reason === 'count limit')).toBe(true);
    expect(res.complete).toBe(false);
  });

  it('reports the time limit when hit: files not started in time are skipped, none reported clean', async () => {
    // One file at a time: 408 files, each its own clamd stream, take well over the 0.1 s allowed.
    const limited = await startScanner(w.dir, w.config({ limits: { maxSeconds: 0.1, concurrency: 1 } }), w.ns);
    const r = await postScan(limited.url, await job(images.infected, 'time-1'), w.hv);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    const hit = res.limitsHit.find((l) => l.limit === 'maxSeconds');
    expect(hit).toMatchObject({ limit: 'maxSeconds', value: 0.1 });
    const timed = res.skipped.filter((s) => s.reason === 'time limit');
    expect(timed.length).toBe(hit!.files);
    // Every file was scanned whole or listed as skipped, or the listing was cut (or never began, on a
    // machine slow enough) and the filesystem says so.
    const listing = res.notScanned.filter((n) => /time limit \(maxSeconds 0.1\) reached (while listing its files|before it was read)/.test(n.reason));
    if (res.scanned.files + res.skipped.length < FILES_IN_INFECTED) expect(listing).toHaveLength(1);
    else expect(listing).toEqual([]);
    expect(timed.length + listing.length).toBeGreaterThan(0);
    expect(res.complete).toBe(false);
  });

  it('ends a job whose hypervisor goes away, and takes the same id again afterwards', async () => {
    const slow = await startScanner(w.dir, w.config({ limits: { concurrency: 1 } }), w.ns);
    const ctl = new AbortController();
    const gone = await postScan(slow.url, await job(images.infected, 'cancel-1'), w.hv, '/v1/scans', {
      signal: ctl.signal, onEvent: (e) => { if (e.type === 'progress') ctl.abort(); },
    }).then(() => 'finished', (e: Error) => e.name);
    expect(gone).toBe('AbortError');
    await pollUntil(() => /info: scan job done job=cancel-1 .*files=(\d+)/.exec(slow.log()) ?? /error: scan job failed job=cancel-1/.test(slow.log()),
      'the job to end', { timeoutMs: 20_000, intervalMs: 20 });
    const done = /info: scan job done job=cancel-1 .*files=(\d+)/.exec(slow.log());
    if (done) expect(Number(done[1])).toBeLessThan(FILES_IN_INFECTED - 1);
    const again = await postScan(slow.url, await job(images.clean, 'cancel-1'), w.hv);
    expect(again.result, again.body).toMatchObject({ complete: true });
  });

  it('reports a disk whose export it cannot read as not scanned', async () => {
    const exp = await w.serve(images.clean);
    await exp.close();
    const r = await postScan(scanner.url, { id: 'gone-1', domain: 'vm1', disks: [{ target: 'vdb', uri: exp.uri, size: 32 * MiB }] }, w.hv);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    expect(res.notScanned).toHaveLength(1);
    expect(res.notScanned[0]).toMatchObject({ disk: 'vdb', kind: 'disk' });
    expect(res.notScanned[0]!.reason).toMatch(/export not readable/);
    expect(res.complete).toBe(false);
  });
});
