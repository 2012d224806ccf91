// An incremental scan: given the byte extents that changed between two states of a disk (64 KiB
// granules, as a dirty bitmap gives them), virtcbt-scanner opens only the files owning changed
// blocks and reads a small part of what a full scan reads over NBD; the newly written infected
// file is found; a job whose extents touch nothing there opens no file.
import { closeSync, copyFileSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import type { ExtentPair, ScanResult } from '../src/scan/protocol.js';
import { pollUntil } from '../src/util/abort.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { changedGranules, makeFs, MiB } from './support/ext-images.js';
import { lcg, tempDir } from './support/nbd-servers.js';
import { EICAR, getScannerStatus, postScan, scannerWorld, SIGNATURE, startScanner, type RunningScanner, type ScannerWorld } from './support/scanner.js';

useCleanup();

const FILES = 400;

let w: ScannerWorld;
let scanner: RunningScanner;
/** The same scanner at the default log level: no debug line wants the opened files' paths. */
let quiet: RunningScanner;
let dir: string;
let before: string;
let after: string;
let changed: ExtentPair[];

function bytes(n: number, seed: number): Buffer {
  const rnd = lcg(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = rnd() >>> 24;
  return b;
}

/** The 64 KiB granules in which two images differ, merged: what a dirty bitmap would have recorded. */
const diffExtents = (a: string, b: string): ExtentPair[] => changedGranules(a, b);

beforeAll(async () => {
  const t = tempDir('scanner-incr');
  onCleanup(() => t.remove());
  dir = t.path;
  w = await scannerWorld(t.path);
  const tree = join(t.path, 'tree');
  mkdirSync(join(tree, 'data'), { recursive: true });
  mkdirSync(join(tree, 'big'), { recursive: true });
  for (let i = 0; i < FILES; i++) writeFileSync(join(tree, 'data', `file-${String(i).padStart(3, '0')}.bin`), bytes(40 * 1024 + i, i + 1));
  for (let i = 0; i < 4; i++) writeFileSync(join(tree, 'big', `large-${i}.bin`), bytes(4 * MiB, 1000 + i));
  before = join(t.path, 'before.img');
  await makeFs(before, 96 * MiB, ['mkfs.ext4'], tree);
  // The guest changes a few files: two rewritten (new blocks), one new infected file.
  after = join(t.path, 'after.img');
  copyFileSync(before, after);
  const src = join(t.path, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'new7'), bytes(40 * 1024, 77));
  writeFileSync(join(src, 'new200'), bytes(30 * 1024, 78));
  writeFileSync(join(src, 'eicar'), `payload ${EICAR}\n`);
  const cmds = join(t.path, 'debugfs.cmd');
  writeFileSync(cmds, ['cd /data', 'rm file-007.bin', `write ${join(src, 'new7')} file-007.bin`, 'rm file-200.bin',
    `write ${join(src, 'new200')} file-200.bin`, `write ${join(src, 'eicar')} dropped.txt`].join('\n') + '\n');
  await execa('debugfs', ['-w', '-f', cmds, after]);
  changed = diffExtents(before, after);
  scanner = await startScanner(t.path, { ...w.config(), log: { level: 'debug' } }, w.ns);
  quiet = await startScanner(t.path, w.config(), w.ns);
}, 180_000);

/** The files the scanner logged as opened for a job (its stderr may trail the HTTP answer: wait for the job's last line). */
async function openedPaths(jobId: string, via = scanner): Promise<string[]> {
  await pollUntil(() => new RegExp(`info: scan job done job=${jobId} `).test(via.log()), 'the job\'s log', { timeoutMs: 10_000, intervalMs: 20 });
  return [...via.log().matchAll(new RegExp(`debug: file opened job=${jobId} disk=vda partition=0 path=(\\S+)`, 'g'))].map((m) => m[1]!).sort();
}

const changedBytes = (x: ExtentPair[]) => x.reduce((n, e) => n + e[1], 0);

/** Where the last job's changed-block owners came from (its filesystem event). */
let ownersFrom: unknown;

async function scan(id: string, extents?: ExtentPair[], o: { image?: string; via?: RunningScanner; changedSince?: number; ownerIndex?: { base?: string; next: string } } = {}): Promise<ScanResult> {
  const exp = await w.serve(o.image ?? after);
  const job = {
    id, domain: 'vm1', disks: [{ target: 'vda', uri: exp.uri, size: statSync(after).size, ...(extents ? { extents } : {}) }],
    ...(o.changedSince !== undefined ? { changedSince: o.changedSince } : {}), ...(o.ownerIndex ? { ownerIndex: o.ownerIndex } : {}),
  };
  const r = await postScan((o.via ?? scanner).url, job, w.hv);
  expect(r.result, r.body).toBeDefined();
  ownersFrom = r.events.find((e) => e.type === 'filesystem')?.ownersFrom;
  return r.result!;
}

describe('an incremental scan', () => {
  it('opens only the files owning changed blocks and reads far fewer bytes over NBD than a full scan', async () => {
    const full = await scan('full');
    expect(full.modes).toEqual({ vda: 'full' });
    expect(full.scanned.filesOpened).toBe(FILES + 4 + 1);
    expect(full.infected.map((f) => f.path)).toEqual(['/data/dropped.txt']);

    const changedBytes = changed.reduce((n, e) => n + e[1], 0);
    expect(changedBytes).toBeLessThan(2 * MiB);
    const incr = await scan('incr', changed);
    expect(incr.modes).toEqual({ vda: 'incremental' });
    expect(incr.infected).toEqual([expect.objectContaining({ path: '/data/dropped.txt', signature: `${SIGNATURE}.UNOFFICIAL` })]);
    const opened = await openedPaths('incr');
    // The changed files, and at most the neighbours sharing their 64 KiB granules (40 KiB files: one or two each side).
    expect(opened).toEqual(expect.arrayContaining(['/data/dropped.txt', '/data/file-007.bin', '/data/file-200.bin']));
    expect(opened.length).toBeLessThanOrEqual(3 * 4);
    expect(incr.scanned.filesOpened).toBe(opened.length);
    expect(incr.complete).toBe(true);
    // NBD bytes grow with the change, not the filesystem: metadata (inode tables, directories) plus those files.
    expect(incr.scanned.nbdBytesRead).toBeLessThan(full.scanned.nbdBytesRead / 10);
    expect(incr.scanned.nbdBytesRead).toBeLessThan(incr.scanned.bytesRead + 3 * MiB);
    console.log(`full: ${full.scanned.filesOpened} files, ${full.scanned.nbdBytesRead} NBD bytes; incremental (${changed.length} extents, ${changedBytes} bytes): ${opened.length} files, ${incr.scanned.nbdBytesRead} NBD bytes`);
  });

  it('walks the directory tree only for a path it must report: clean files are scanned by inode number', async () => {
    // The changed granules of the earlier image: the old file-007 and file-200 and their neighbours, all clean.
    const logged = await scan('clean-debug', changed, { image: before });
    const clean = await scan('clean-quiet', changed, { image: before, via: quiet });
    expect(clean.infected).toEqual([]);
    expect(clean.complete).toBe(true);
    expect(clean.scanned.filesOpened).toBe(logged.scanned.filesOpened);
    expect(clean.scanned.filesOpened).toBeGreaterThan(0);
    // The debug log names every opened file: that job walked the tree, this one read no directory.
    expect(clean.scanned.nbdBytesRead).toBeLessThan(logged.scanned.nbdBytesRead);
    // A found file still gets its path, and so does a skipped one.
    const found = await scan('found-quiet', changed, { via: quiet });
    expect(found.infected).toEqual([expect.objectContaining({ path: '/data/dropped.txt', signature: `${SIGNATURE}.UNOFFICIAL` })]);
    const limited = await startScanner(dir, w.config({ limits: { maxFiles: 1 } }), w.ns);
    const some = await scan('skips-quiet', changed, { image: before, via: limited });
    expect(some.skipped.length).toBe(clean.scanned.filesOpened - 1);
    for (const f of some.skipped) expect(f).toMatchObject({ reason: 'count limit', path: expect.stringMatching(/^\/data\/file-\d{3}\.bin$/) });
  });

  it('opens no file when the changed extents hold no file data', async () => {
    // The first MiB holds the superblock, descriptors and bitmaps: no file owns it.
    const incr = await scan('meta', [[0, 64 * 1024]]);
    expect(incr.scanned.filesOpened).toBe(0);
    expect(await openedPaths('meta')).toEqual([]);
    expect(incr.infected).toEqual([]);
  });

  it('opens a file whose inode alone changed (not its blocks) when its ctime is at or after changedSince, and not its inode-table neighbours', async () => {
    // An inode changed and nothing else: its mode, and its ctime set past every other inode's
    // (all made by mkfs moments ago), as a guest's chmod, rename or relinked extent tree leaves it.
    const relinked = join(dir, 'inode-only.img');
    copyFileSync(before, relinked);
    const cmds = join(dir, 'inode-only.cmd');
    const CHANGED_AT = 2_000_000_000;
    writeFileSync(cmds, ['sif /data/file-300.bin mode 0100755', `sif /data/file-300.bin ctime @${CHANGED_AT}`].join('\n') + '\n');
    await execa('debugfs', ['-w', '-f', cmds, relinked]);
    const inodeOnly = diffExtents(before, relinked);
    expect(inodeOnly.length).toBeGreaterThan(0);
    const since = await scan('since', inodeOnly, { image: relinked, changedSince: CHANGED_AT - 600 });
    expect(await openedPaths('since')).toEqual(['/data/file-300.bin']);
    expect(since.complete).toBe(true);
    // Changed before changedSince, or no changedSince (an older hypervisor): passed over.
    await scan('since-later', inodeOnly, { image: relinked, changedSince: CHANGED_AT + 1 });
    expect(await openedPaths('since-later')).toEqual([]);
    await scan('no-since', inodeOnly, { image: relinked });
    expect(await openedPaths('no-since')).toEqual([]);
  });

  it('reports the changed blocks no file owns, and a file that comes to own them later without writing them is read once they are sent again', async () => {
    // The data of an infected file reaches the disk while its blocks are free (its inode and
    // bitmap bits are not written yet: a crash-consistent snapshot before the guest's journal was
    // written back, or a relink), and its metadata only after that scan, with a ctime older than
    // the scan: nothing of it changes again.
    const linked = join(dir, 'linked.img');
    const unlinked = join(dir, 'unlinked.img');
    copyFileSync(before, linked);
    const payload = join(dir, 'late-payload');
    writeFileSync(payload, `late ${EICAR}\n`);
    const OLD = 1_000_000_000;
    await execa('debugfs', ['-w', '-R', `write ${payload} late.txt`, linked]);
    await execa('debugfs', ['-w', '-R', `sif /late.txt ctime @${OLD}`, linked]);
    const block = Number((await execa('debugfs', ['-R', 'blocks /late.txt', linked])).stdout.trim().split(/\s+/)[0]);
    expect(block).toBeGreaterThan(0);
    copyFileSync(linked, unlinked);
    await execa('debugfs', ['-w', '-R', 'kill_file /late.txt', unlinked]);
    await execa('debugfs', ['-w', '-R', 'unlink /late.txt', unlinked]);

    // Scan N sees the payload's blocks changed and free: nothing found, and they are reported.
    const n = await scan('unowned-n', diffExtents(before, unlinked), { image: unlinked, changedSince: OLD + 600 });
    expect(n.infected).toEqual([]);
    expect(n.complete).toBe(true);
    const unowned = (n.unowned ?? []).find((u) => u.disk === 'vda')?.extents ?? [];
    const blockSize = Number(/Block size:\s+(\d+)/.exec((await execa('debugfs', ['-R', 'stats', linked])).stdout)![1]);
    const at = block * blockSize;
    expect(unowned.some(([o, l]) => o <= at && at < o + l), JSON.stringify(unowned)).toBe(true);
    // A file's blocks and the fixed metadata (superblock, descriptors, bitmaps, inode tables) are never unowned.
    const files = await scan('unowned-files', changed);
    expect(files.unowned?.find((u) => u.disk === 'vda')?.extents.some(([o]) => o < 64 * 1024) ?? false).toBe(false);

    // Scan N+1: only the metadata changed since (inode, bitmap, directory), its ctime old.
    const metaOnly = diffExtents(unlinked, linked);
    const missed = await scan('unowned-missed', metaOnly, { image: linked, changedSince: OLD + 600 });
    expect(missed.infected).toEqual([]);
    const carried: ExtentPair[] = [...metaOnly, ...unowned].sort((a, b) => a[0] - b[0]);
    const found = await scan('unowned-found', carried, { image: linked, changedSince: OLD + 600 });
    expect(found.infected).toEqual([expect.objectContaining({ path: '/late.txt', signature: `${SIGNATURE}.UNOFFICIAL` })]);
  });

  it('with an owner index kept since the last scan: the same files, an inode-only change found without changedSince, and an index left at another state not used', async () => {
    // A full scan of the earlier state leaves an index at 'p1'; the incremental from it brings it forward.
    await scan('oi-full', undefined, { image: before, ownerIndex: { next: 'p1' } });
    const incr = await scan('oi-incr', changed, { ownerIndex: { base: 'p1', next: 'p2' } });
    expect(ownersFrom).toBe('owner index');
    expect(incr.infected).toEqual([expect.objectContaining({ path: '/data/dropped.txt', signature: `${SIGNATURE}.UNOFFICIAL` })]);
    const withIndex = await openedPaths('oi-incr');
    // The files that only share changed 64 KiB granules with the changed ones are passed over:
    // their own bytes there match the digests taken when the full scan read them.
    expect(withIndex).toEqual(['/data/dropped.txt', '/data/file-007.bin', '/data/file-200.bin']);
    // The scanner's status shows what it keeps.
    const status = JSON.parse(await getScannerStatus(w.hv, scanner.url));
    expect(status.ownerIndexes.kept).toBeGreaterThanOrEqual(1);
    expect(status.ownerIndexes.bytes).toBeGreaterThan(0);
    expect(status.ownerIndexes.bytes).toBeLessThanOrEqual(status.ownerIndexes.maxBytes);
    await scan('oi-tables', changed);
    expect(ownersFrom).toBe('inode tables');
    const neighbours = (await openedPaths('oi-tables')).filter((f) => !withIndex.includes(f));
    expect(neighbours.length).toBeGreaterThan(0);
    expect(incr.scanned.nbdBytesRead).toBeLessThan(changedBytes(changed) * 2);

    // An inode-only change (a chmod, its ctime left old): the index's fingerprint finds that one
    // inode, not its inode-table neighbours, with no changedSince at all.
    const chmod = join(dir, 'oi-chmod.img');
    copyFileSync(after, chmod);
    await execa('debugfs', ['-w', '-R', 'sif /data/file-300.bin mode 0100755', chmod]);
    await execa('debugfs', ['-w', '-R', 'sif /data/file-300.bin ctime @1000000000', chmod]);
    await scan('oi-chmod', diffExtents(after, chmod), { image: chmod, ownerIndex: { base: 'p2', next: 'p3' } });
    expect(ownersFrom).toBe('owner index');
    expect(await openedPaths('oi-chmod')).toEqual(['/data/file-300.bin']);

    // A payload written over an existing file's first block by raw writes to the disk (its inode
    // and mapping unchanged, as a guest writing the block device under the filesystem leaves it):
    // its digests no longer match, so it is read and found; its granule's other files are passed over.
    const raw = join(dir, 'oi-raw.img');
    copyFileSync(chmod, raw);
    const first = Number((await execa('debugfs', ['-R', 'blocks /data/file-301.bin', raw])).stdout.trim().split(/\s+/)[0]);
    const blockSize = Number(/Block size:\s+(\d+)/.exec((await execa('debugfs', ['-R', 'stats', raw])).stdout)![1]);
    const fd = openSync(raw, 'r+');
    writeSync(fd, Buffer.from(`raw ${EICAR}\n`), 0, undefined, first * blockSize);
    closeSync(fd);
    const rawChanges = diffExtents(chmod, raw);
    expect(rawChanges).toHaveLength(1);
    const found = await scan('oi-raw', rawChanges, { image: raw, ownerIndex: { base: 'p3', next: 'p5' } });
    expect(ownersFrom).toBe('owner index');
    expect(found.infected).toEqual([expect.objectContaining({ path: '/data/file-301.bin', signature: `${SIGNATURE}.UNOFFICIAL` })]);
    expect(await openedPaths('oi-raw')).toEqual(['/data/file-301.bin']);

    // A base the scanner's index was not left at (a scan whose verdict the hypervisor did not take): the inode tables are read.
    await scan('oi-stale', diffExtents(after, chmod), { image: chmod, ownerIndex: { base: 'p2', next: 'p4' } });
    expect(ownersFrom).toBe('inode tables');
    expect(await openedPaths('oi-stale')).toEqual([]);
  });

  it('keeps its owner indexes across a restart (saved at stop, read back at start, authenticated); a changed save file is not used', async () => {
    const saveDir = join(dir, 'saved-state');
    const config = { ...w.config(), log: { level: 'debug' }, ownerIndex: { saveDir } };
    const first = await startScanner(dir, config, w.ns);
    await scan('sv-full', undefined, { image: before, ownerIndex: { next: 's1' }, via: first });
    await first.stop();
    expect(first.log()).toMatch(/info: owner indexes saved kept=1 /);
    expect(statSync(join(saveDir, 'secret')).mode & 0o777).toBe(0o600);
    expect(statSync(join(saveDir, 'owner-indexes.bin')).mode & 0o777).toBe(0o600);

    // Started again: the index and the files' granule digests are back, so the incremental scan
    // opens exactly the changed files, as it would have without the restart.
    const second = await startScanner(dir, config, w.ns);
    expect(second.log()).toMatch(/info: owner indexes read back kept=1 /);
    const incr = await scan('sv-incr', changed, { ownerIndex: { base: 's1', next: 's2' }, via: second });
    expect(ownersFrom).toBe('owner index');
    expect(await openedPaths('sv-incr', second)).toEqual(['/data/dropped.txt', '/data/file-007.bin', '/data/file-200.bin']);
    expect(incr.infected).toEqual([expect.objectContaining({ path: '/data/dropped.txt' })]);
    await second.stop();

    // One byte of the saved file changed: nothing in it is used, said so; the tables are read.
    const file = join(saveDir, 'owner-indexes.bin');
    const b = readFileSync(file);
    b[b.length >> 1] ^= 0x01;
    writeFileSync(file, b);
    const third = await startScanner(dir, config, w.ns);
    expect(third.log()).toMatch(/warn: saved owner indexes not used .*not written by this scanner/);
    await scan('sv-tampered', changed, { ownerIndex: { base: 's2', next: 's3' }, via: third });
    expect(ownersFrom).toBe('inode tables');
    await third.stop();
  });

  it('saves its owner indexes while it runs (ownerIndex.saveEverySeconds): a scanner killed outright keeps what was saved', async () => {
    const saveDir = join(dir, 'saved-running');
    const config = { ...w.config(), ownerIndex: { saveDir, saveEverySeconds: 1 } };
    const first = await startScanner(dir, config, w.ns);
    await scan('sr-full', undefined, { image: before, ownerIndex: { next: 'k1' }, via: first });
    await pollUntil(() => /info: owner indexes saved kept=1 /.test(first.log()), 'the periodic save', { timeoutMs: 15_000, intervalMs: 50 });
    process.kill(first.pid, 'SIGKILL');
    await first.stop();
    const second = await startScanner(dir, config, w.ns);
    expect(second.log()).toMatch(/info: owner indexes read back kept=1 /);
    await scan('sr-incr', changed, { ownerIndex: { base: 'k1', next: 'k2' }, via: second });
    expect(ownersFrom).toBe('owner index');
    await second.stop();
  });

  it('keeps one owner index per partition: a partition without changes keeps its index for the next state, so its next change uses it', async () => {
    // Two ext4 partitions on an MBR disk, each made apart and put in place.
    const part = async (name: string, seed: number) => {
      const t = join(dir, `${name}-tree`);
      mkdirSync(t, { recursive: true });
      for (let i = 0; i < 40; i++) writeFileSync(join(t, `f${i}.bin`), bytes(20 * 1024, seed + i));
      const img = join(dir, `${name}.img`);
      await makeFs(img, 32 * MiB, ['mkfs.ext4'], t);
      return img;
    };
    const [p1, p2] = [await part('p1', 500), await part('p2', 600)];
    const P1 = 1 * MiB;
    const P2 = 34 * MiB;
    const assemble = async (disk: string, a: string, b: string) => {
      await execa('truncate', ['-s', String(68 * MiB), disk]);
      await execa('sfdisk', ['-q', disk], { input: `label: dos\nstart=${P1 / 512}, size=${(32 * MiB) / 512}, type=83\nstart=${P2 / 512}, size=${(32 * MiB) / 512}, type=83\n` });
      await execa('dd', [`if=${a}`, `of=${disk}`, 'bs=1M', `seek=${P1 / MiB}`, 'conv=notrunc', 'status=none']);
      await execa('dd', [`if=${b}`, `of=${disk}`, 'bs=1M', `seek=${P2 / MiB}`, 'conv=notrunc', 'status=none']);
    };
    const src = join(dir, 'part-payload');
    writeFileSync(src, `payload ${EICAR}\n`);
    const s0 = join(dir, 'parts-0.img');
    await assemble(s0, p1, p2);
    // State 1: a file written in partition 2 only. State 2: one in partition 1 only.
    await execa('debugfs', ['-w', '-R', `write ${src} in-p2.txt`, p2]);
    const s1 = join(dir, 'parts-1.img');
    await assemble(s1, p1, p2);
    await execa('debugfs', ['-w', '-R', `write ${src} in-p1.txt`, p1]);
    const s2 = join(dir, 'parts-2.img');
    await assemble(s2, p1, p2);
    const run = async (id: string, image: string, extents: ExtentPair[] | undefined, ownerIndex: { base?: string; next: string }) => {
      const exp = await w.serve(image);
      const r = await postScan(scanner.url, { id, domain: 'vm-parts', disks: [{ target: 'vda', uri: exp.uri, size: statSync(image).size, ...(extents ? { extents } : {}) }], ownerIndex }, w.hv);
      expect(r.result, r.body).toBeDefined();
      const from = Object.fromEntries(r.events.filter((e) => e.type === 'filesystem').map((e) => [e.partition, e.ownersFrom]));
      return { result: r.result!, from };
    };
    await run('parts-full', s0, undefined, { next: 'g0' });
    const one = await run('parts-1', s1, diffExtents(s0, s1), { base: 'g0', next: 'g1' });
    expect(one.from).toEqual({ 2: 'owner index' });
    expect(one.result.infected.map((f) => `${f.partition}:${f.path}`)).toEqual(['2:/in-p2.txt']);
    const two = await run('parts-2', s2, diffExtents(s1, s2), { base: 'g1', next: 'g2' });
    expect(two.from).toEqual({ 1: 'owner index' });
    expect(two.result.infected.map((f) => `${f.partition}:${f.path}`)).toEqual(['1:/in-p1.txt']);
  });
});
