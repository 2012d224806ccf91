// The scanner's hand-off to clamd by path (clamd.spoolDir) falls back to INSTREAM, and says why,
// whenever the path way cannot work: a clamd that cannot see the spool directory (here: clamd in a
// mount namespace of its own with an empty tmpfs over it, as a clamd whose user or AppArmor profile
// may not read it), a spool too small for a file (that file is read again and streamed), and a file
// larger than clamd.spoolMaxFileBytes. A
// killed scanner's spool files are removed when the next one starts; a running one's are not. A
// clamd that comes up after the scanner is probed by the next GET /v1/status, not only by a job.
import { spawn } from 'node:child_process';
import { chownSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { makeFs, MiB } from './support/ext-images.js';
import { tempDir } from './support/nbd-servers.js';
import { EICAR, getScannerStatus, postScan, scannerWorld, SIGNATURE, startClamd, startScanner, type ScannerWorld } from './support/scanner.js';

useCleanup();

let w: ScannerWorld;
let dir: string;
let image: string;
let nobody: { uid: number; gid: number };
let treeBytes = 0;
/** Regular files in the image: 20 small, one of 1 MiB with the signature at its end. */
const FILES = 21;

beforeAll(async () => {
  const t = tempDir('scanner-spool');
  onCleanup(() => t.remove());
  dir = t.path;
  w = await scannerWorld(dir);
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  for (let i = 0; i < 20; i++) writeFileSync(join(tree, `small-${i}`), `file ${i} `.repeat(500 + i * 50));
  writeFileSync(join(tree, 'big.bin'), Buffer.concat([Buffer.alloc(MiB, 0x41), Buffer.from(` ${EICAR}\n`)]));
  for (const f of readdirSync(tree)) treeBytes += statSync(join(tree, f)).size;
  image = join(dir, 'fs.img');
  await makeFs(image, 32 * MiB, ['mkfs.ext4'], tree);
  nobody = { uid: Number((await execa('id', ['-u', 'nobody'])).stdout), gid: Number((await execa('id', ['-g', 'nobody'])).stdout) };
}, 120_000);

/** A spool directory the scanner (nobody) owns, as the unit's RuntimeDirectory. */
function spoolDir(name: string): string {
  const d = join(dir, name);
  mkdirSync(d, { mode: 0o750 });
  chownSync(d, nobody.uid, nobody.gid);
  return d;
}

const found = [{ disk: 'vda', partition: 0, path: '/big.bin', signature: `${SIGNATURE}.UNOFFICIAL` }];

describe('virtcbt-scanner hand-off to clamd', () => {
  it('streams every file while clamd cannot read the spool, finds the signature all the same, and says why once', async () => {
    const spool = spoolDir('spool-hidden');
    // clamd sees an empty tmpfs where the spool is.
    const blind = await startClamd(join(dir, 'clamd-blind'), {
      wrap: ['unshare', '-m', '--propagation', 'private', 'sh', '-c', `mount -t tmpfs -o size=1m blind '${spool}' && exec "$0" "$@"`],
    });
    const scanner = await startScanner(dir, { ...w.config(), clamd: { socket: blind.socket, timeoutSeconds: 60, spoolDir: spool } }, w.ns, 'nobody');
    // Said at start, before any job.
    await pollUntil(() => /files go to clamd by INSTREAM/.test(scanner.log()), 'the spool warning at start', { timeoutMs: 20_000, intervalMs: 20 });
    for (const id of ['blind-1', 'blind-2']) {
      const r = await postScan(scanner.url, await w.job(image, id), w.hv);
      const res = r.result!;
      expect(res, r.body).toBeDefined();
      expect(res.infected).toMatchObject(found);
      expect(res.scanned.files).toBe(FILES);
      expect(res.complete).toBe(true);
      expect(res.clamdHandoff).toEqual({ spooled: 0, streamed: FILES, why: expect.stringMatching(new RegExp(`^clamd cannot read files in ${spool}: .*No such file`)) });
    }
    // The warning names the way out, once for both jobs.
    const warnings = scanner.log().split('\n').filter((l) => /files go to clamd by INSTREAM/.test(l));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/usermod -aG virtcbt-scanner clamav/);
    expect(JSON.parse(await getScannerStatus(w.hv, scanner.url)).clamdHandoff).toMatchObject({ mode: 'instream', dir: spool, why: expect.stringMatching(/cannot read files/) });
    // Nothing of the guest's is left behind in the spool.
    expect(readdirSync(spool)).toEqual([]);
  });

  it('streams a file the spool has no room for (read again from the snapshot), and spools the others', async () => {
    const spool = spoolDir('spool-small');
    await execa('mount', ['-t', 'tmpfs', '-o', `size=256k,mode=0750,uid=${nobody.uid},gid=${nobody.gid}`, 'virtcbt-test-spool', spool]);
    onCleanup(() => execa('umount', [spool]).then(() => undefined));
    // One worker: the files before big.bin in walk order are spooled, big.bin and the rest streamed.
    const scanner = await startScanner(dir, { ...w.config({ limits: { concurrency: 1 } }), clamd: { socket: w.clamd.socket, timeoutSeconds: 60, spoolDir: spool } }, w.ns, 'nobody');
    const r = await postScan(scanner.url, await w.job(image, 'small-spool'), w.hv);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    expect(res.infected).toMatchObject(found);
    expect(res.scanned.files).toBe(FILES);
    // big.bin counted once, though read twice.
    expect(res.scanned.bytesRead).toBe(treeBytes);
    expect(res.complete).toBe(true);
    expect(res.clamdHandoff!.spooled + res.clamdHandoff!.streamed).toBe(FILES);
    expect(res.clamdHandoff!.streamed).toBeGreaterThan(0);
    expect(res.clamdHandoff!.why).toMatch(/cannot write the spool file .*: ENOSPC/);
    expect(readdirSync(spool)).toEqual([]);
  });

  it('streams the files larger than clamd.spoolMaxFileBytes and says so; spools the rest', async () => {
    const spool = spoolDir('spool-bounded');
    const scanner = await startScanner(dir, { ...w.config(), clamd: { socket: w.clamd.socket, timeoutSeconds: 60, spoolDir: spool, spoolMaxFileBytes: 100_000 } }, w.ns, 'nobody');
    const r = await postScan(scanner.url, await w.job(image, 'bounded'), w.hv);
    const res = r.result!;
    expect(res, r.body).toBeDefined();
    expect(res.infected).toMatchObject(found);
    expect(res.clamdHandoff).toEqual({ spooled: FILES - 1, streamed: 1, why: 'files larger than 100000 bytes (clamd.spoolMaxFileBytes) go by INSTREAM' });
  });

  it('removes the spool files of a scanner no longer running when it starts, and leaves a running one\'s', async () => {
    const spool = spoolDir('spool-leftovers');
    const gone = spawn('true');
    const deadPid = await new Promise<number>((resolve) => gone.once('exit', () => resolve(gone.pid!)));
    const hex = 'ab'.repeat(12);
    const dead = [`s-${deadPid}-${hex}`, `probe-${deadPid}-${hex}`];
    const live = `s-${process.pid}-${hex}`;
    for (const f of [...dead, live, 'notes.txt']) writeFileSync(join(spool, f), 'guest data');
    const scanner = await startScanner(dir, { ...w.config(), clamd: { socket: w.clamd.socket, timeoutSeconds: 60, spoolDir: spool } }, w.ns, 'nobody');
    // Its own probe at start is done (and its probe file gone) once the spool is in use.
    await pollUntil(async () => JSON.parse(await getScannerStatus(w.hv, scanner.url)).clamdHandoff.mode === 'spool', 'the start-up probe', { timeoutMs: 20_000, intervalMs: 20 });
    expect(readdirSync(spool).sort()).toEqual(['notes.txt', live]);
    expect(scanner.log()).toMatch(/removed spool files a stopped scanner left .*files=2/);
    // And it spools from there.
    const r = await postScan(scanner.url, await w.job(image, 'after-sweep'), w.hv);
    expect(r.result?.clamdHandoff, r.body).toEqual({ spooled: FILES, streamed: 0 });
  });

  it('probes the spool at the first GET /v1/status that reaches clamd when clamd was not up at start', async () => {
    const late = join(dir, 'clamd-late');
    mkdirSync(late);
    const spool = spoolDir('spool-late');
    const scanner = await startScanner(dir, { ...w.config(), clamd: { socket: join(late, 'clamd.sock'), timeoutSeconds: 60, spoolDir: spool } }, w.ns, 'nobody');
    const before = JSON.parse(await getScannerStatus(w.hv, scanner.url));
    expect(before.clamd).toMatch(/^unreachable/);
    expect(before.clamdHandoff).toMatchObject({ mode: 'instream', why: 'not probed yet' });
    await startClamd(late);
    expect(JSON.parse(await getScannerStatus(w.hv, scanner.url)).clamdHandoff).toEqual({ mode: 'spool', dir: spool });
    // The probe's file is gone.
    expect(readdirSync(spool)).toEqual([]);
  });
});
