#!/usr/bin/env node
// `npm run demo`: virtcbt end to end on a real libvirt domain, its three jobs on one change log —
// build the demo guest, define and enable it, run a workload; (1) take full and incremental backups
// for two consumers, restore and verify; (2) sync vda to a replica, copying only what was modified
// and is still in use, and check the replica with e2fsprogs; (3) scan the running domain on a
// scanner host (here: this machine, over TLS), find the EICAR test string written into the guest,
// quarantine the domain and release it. Then print what happened and how long each step took. The
// demo domain, its daemon, the scanner and their files are removed at the end, also when a step fails.
import { execa } from 'execa';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { buildGuestImages } from '../guestimage/index.js';
import { errorMessage } from '../util/errors.js';
import { createLabDomain, ensureLibvirtd, startLabDaemon, virsh, type LabDaemon, type LabDomain } from './lab.js';
import { checkReplica } from './replica-check.js';
import { DEMO_SIGNATURE, EICAR, startScanLab, type ScanLab } from './scan-lab.js';

/** The demo domain's one network interface (user-mode): what a quarantine takes down. */
const MAC = '52:54:00:c8:7b:01';

const MiB = 1024 * 1024;
const steps: { step: string; ms: number; detail: string }[] = [];

function fmtBytes(n: number): string {
  return n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
}

function fmtMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

async function step<T>(name: string, fn: () => Promise<T>, detail: (r: T) => string = () => ''): Promise<T> {
  process.stdout.write(`• ${name} … `);
  const t0 = performance.now();
  const r = await fn();
  const ms = performance.now() - t0;
  const d = detail(r);
  steps.push({ step: name, ms, detail: d });
  process.stdout.write(`${fmtMs(ms)}${d ? `  (${d})` : ''}\n`);
  return r;
}

interface BackupLine {
  id: string;
  kind: string;
  bytes: number;
  written: number;
  elapsedMs: number;
  freezeWindowMs: number | null;
  consistency: string;
  disks: { target: string; bytes: number; full: boolean }[];
}

async function backup(d: LabDaemon, domain: string, consumer: string, repo: string): Promise<BackupLine> {
  const r = await d.cli(['backup', domain, '--consumer', consumer, '--repo', repo, '--json']);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as BackupLine;
}

const describeBackup = (b: BackupLine) =>
  `${b.id}: ${b.kind}, ${fmtBytes(b.bytes)} copied (${b.disks.map((x) => `${x.target} ${fmtBytes(x.bytes)}`).join(', ')}), ` +
  `${b.consistency === 'filesystem' ? `guest frozen ${b.freezeWindowMs} ms` : 'crash-consistent'}`;

interface SyncLine {
  seed: boolean;
  modifiedBytes: number;
  modifiedUsedBytes: number;
  skippedFreeBytes: number;
  copiedBytes: number;
  usedBytes: number;
  freezeWindowMs: number | null;
  elapsedMs: number;
}

async function sync(d: LabDaemon, domain: string, to: string): Promise<SyncLine> {
  const r = await d.cli(['sync', domain, '--disk', 'vda', '--to', to, '--json']);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as SyncLine;
}

const describeSync = (x: SyncLine) => (x.seed
  ? `seed: ${fmtBytes(x.copiedBytes)} copied, the ${fmtBytes(x.usedBytes)} the filesystem uses`
  : `${fmtBytes(x.modifiedBytes)} modified, ${fmtBytes(x.modifiedUsedBytes)} of it still in use: ${fmtBytes(x.copiedBytes)} copied, ${fmtBytes(x.skippedFreeBytes)} skipped because free`)
  + `; guest frozen ${x.freezeWindowMs ?? '-'} ms`;

interface ScanLine {
  full: boolean;
  freezeWindowMs: number | null;
  elapsedMs: number;
  verdict: {
    infected: { path: string; signature: string; disk: string }[];
    scanned: { files: number; filesOpened: number; bytesRead: number; nbdBytesRead: number };
    notScanned: { disk: string; kind: string; reason?: string }[];
  };
  action?: unknown;
}

/** Exit 0 (clean), 10 (found) and 11 (clean, but something not scanned: the scratch disk holds no filesystem) are all answers. */
async function scan(d: LabDaemon, domain: string, extra: string[]): Promise<ScanLine> {
  const r = await d.cli(['scan', domain, '--json', ...extra], [0, 10, 11]);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ScanLine;
}

const describeScan = (x: ScanLine) => {
  const v = x.verdict;
  const found = v.infected.length > 0 ? `FOUND ${v.infected.map((f) => `${f.disk}:${f.path} (${f.signature})`).join(', ')}: domain quarantined (link-down)` : 'nothing found';
  const not = v.notScanned.map((n) => `${n.disk} not scanned (${n.kind}: ${n.reason ?? 'no readable filesystem'})`).join('; ');
  return `${x.full ? 'full' : 'incremental'}: ${v.scanned.filesOpened} ${v.scanned.filesOpened === 1 ? 'file' : 'files'} read, ${fmtBytes(v.scanned.nbdBytesRead)} over NBD+TLS; ${found}${not ? `; ${not}` : ''}; guest frozen ${x.freezeWindowMs ?? '-'} ms`;
};

async function main(): Promise<void> {
  const started = performance.now();
  const name = `virtcbt-demo-${process.pid}`;
  const work = await mkdtemp(join(tmpdir(), 'virtcbt-demo-'));
  const repo = join(work, 'repo');
  let lab: LabDomain | undefined;
  let daemon: LabDaemon | undefined;
  let scanLab: ScanLab | undefined;
  console.log(`virtcbt demo: domain ${name}, repository ${repo}\n`);
  try {
    await step('libvirtd running', ensureLibvirtd);
    await step('build (or reuse) the demo guest: kernel, busybox + qemu-ga initramfs, ext4 disk', () => buildGuestImages(), (g) => `cache ${g.dir}`);
    lab = await step('define the libvirt domain (vda: ext4 data 512 MiB, vdb: scratch 512 MiB, both qcow2)', () =>
      createLabDomain({ name, dataBytes: 512 * MiB, scratchBytes: 512 * MiB, interfaces: [{ mac: MAC }] }));
    scanLab = await step('start a scanner host: a CA and TLS credentials, clamd with a demo signature, virtcbt-scanner (mutual TLS)', () => startScanLab(join(work, 'scanner')));
    const scanConfig = scanLab.daemonConfig;
    daemon = await step('start virtcbtd', () => startLabDaemon(join(work, 'daemon'), scanConfig));
    const d = daemon;
    await step('virtcbt enable (bitmaps created offline, QMP socket added)', () => d.cli(['enable', name]));
    await step('virtcbt consumer add nightly / offsite', async () => {
      await d.cli(['consumer', 'add', name, 'nightly']);
      await d.cli(['consumer', 'add', name, 'offsite']);
    });
    const boot = await step('start the domain and wait for its guest agent', () => lab!.start());
    void boot;
    await step('workload: 24 MiB of files on the guest\'s ext4, 64 MiB dd to vdb', async () => {
      await lab!.exec('/bin/dd', ['if=/dev/urandom', 'of=/mnt/data/photos.bin', 'bs=1M', 'count=24', 'conv=fsync']);
      await lab!.exec('/bin/dd', ['if=/dev/urandom', 'of=/dev/vdb', 'bs=1M', 'count=64', 'oflag=direct']);
    });
    const b1 = await step('backup nightly (first: full)', () => backup(d, name, 'nightly', repo), describeBackup);
    const b2 = await step('backup offsite (first: full)', () => backup(d, name, 'offsite', repo), describeBackup);
    await step('workload: rewrite 8 MiB of a file, 16 MiB dd to vdb', async () => {
      await lab!.exec('/bin/dd', ['if=/dev/urandom', 'of=/mnt/data/photos.bin', 'bs=1M', 'count=8', 'seek=4', 'conv=notrunc,fsync']);
      await lab!.exec('/bin/dd', ['if=/dev/urandom', 'of=/dev/vdb', 'bs=1M', 'count=16', 'seek=100', 'oflag=direct']);
    });
    const b3 = await step('backup nightly (incremental)', () => backup(d, name, 'nightly', repo), describeBackup);
    await step('workload: 4 MiB dd to vdb', () => lab!.exec('/bin/dd', ['if=/dev/urandom', 'of=/dev/vdb', 'bs=1M', 'count=4', 'seek=200', 'oflag=direct']));
    const b4 = await step('backup nightly (incremental)', () => backup(d, name, 'nightly', repo), describeBackup);
    const b5 = await step('backup offsite (incremental: everything since its own last backup)', () => backup(d, name, 'offsite', repo), describeBackup);
    const b6 = await step('backup nightly with nothing changed', () => backup(d, name, 'nightly', repo), describeBackup);
    await step('virtcbt verify (qemu-img check, chain links, checksums re-read)', async () => {
      const r = await d.cli(['verify', '--repo', repo, name, '--json']);
      const v = JSON.parse(r.stdout) as { ok: boolean; checked: number; disks: unknown[] };
      if (!v.ok) throw new Error(`verify found problems: ${r.stdout}`);
      return v;
    }, (v) => `${v.checked} restore points, ${v.disks.length} images: all good`);
    const restored = join(work, 'vda-restored.raw');
    await step(`virtcbt restore vda at ${b4.id} (raw) and e2fsck it`, async () => {
      await d.cli(['restore', '--repo', repo, name, '--disk', 'vda', '--to', restored, '--at', b4.id, '--format', 'raw']);
      const fsck = await execa('e2fsck', ['-fn', restored], { reject: false });
      if (fsck.exitCode !== 0) throw new Error(`e2fsck of the restored disk failed:\n${fsck.stdout}${fsck.stderr}`);
      return fsck;
    }, () => 'file system clean: the freeze made the snapshot consistent');
    await step('virtcbt restore vdb (newest, qcow2) and compare with the live disk, guest suspended', async () => {
      const to = join(work, 'vdb-restored.qcow2');
      await virsh(['suspend', name]);
      try {
        // The newest backup is offsite's b5 or nightly's b6; nothing wrote since b6, so both equal vdb now.
        await d.cli(['restore', '--repo', repo, name, '--disk', 'vdb', '--to', to]);
        const c = await execa('qemu-img', ['compare', '-U', lab!.disks[1]!.file, to], { reject: false });
        if (c.exitCode !== 0) throw new Error(`restored vdb differs from the disk: ${c.stdout}${c.stderr}`);
      } finally {
        await virsh(['resume', name]);
      }
    }, () => 'identical');
    const list = await step('virtcbt list', () => d.cli(['list', '--repo', repo, name]));
    const status = await step('bitmaps on the disks after all that', async () => {
      // Queued behind the last backup's housekeeping (it removes the folded bitmap after answering).
      await d.cli(['reconcile', name]);
      const st = JSON.parse((await d.cli(['status', name, '--json'])).stdout) as { disks: { target: string; bitmaps: unknown[] }[] };
      return st.disks.map((x) => `${x.target}: ${x.bitmaps.length}`).join(', ');
    }, (s) => `${s} (one recording bitmap per disk, whatever the number of consumers)`);
    void status;

    // (2) Disk-copy sync: a replica of vda that gets only what was modified and is still in use.
    const replica = join(work, 'replica', 'vda.qcow2');
    await mkdir(dirname(replica));
    const s1 = await step('virtcbt sync vda to a replica (first: seeds every used block)', () => sync(d, name, replica), describeSync);
    await step('workload: 48 MiB of new files, 40 MiB of them deleted again', () =>
      lab!.exec('/bin/sh', ['-c', 'for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=/mnt/data/tmp-$i.bin bs=1M count=8 2>/dev/null; done; sync; rm /mnt/data/tmp-[1-5].bin; sync']));
    const s2 = await step('virtcbt sync vda (only what was modified and is still in use)', () => sync(d, name, replica), describeSync);
    const checked = await step('the replica checked by e2fsprogs alone: e2fsck -fn, every file against the guest\'s sha256', () => checkReplica(replica, lab!, work),
      (c) => `clean; ${c.files} files, ${fmtBytes(c.bytes)}, all equal`);
    void checked;

    // (3) Offloaded scanning: the scanner host reads a snapshot over NBD with TLS; the guest runs no antivirus.
    const full = await step('virtcbt scan (full): a snapshot handed to the scanner host', () => scan(d, name, ['--full']), describeScan);
    await step('workload: the EICAR test string written into /mnt/data/docs/invoice.com', async () => {
      await lab!.exec('/bin/mkdir', ['-p', '/mnt/data/docs']);
      await lab!.agent.writeFile('/mnt/data/docs/invoice.com', EICAR);
      await lab!.exec('/bin/sync', []);
    });
    const found = await step('virtcbt scan (incremental: only the files whose blocks changed)', () => scan(d, name, []), describeScan);
    if (!found.verdict.infected.some((f) => f.signature.startsWith(DEMO_SIGNATURE))) throw new Error(`the scan did not find the EICAR file: ${JSON.stringify(found.verdict)}`);
    await step('virsh domif-getlink: the quarantine took the domain\'s link down', async () => {
      const link = (await virsh(['domif-getlink', name, MAC])).stdout.trim();
      if (!/down/.test(link)) throw new Error(`the link is not down: ${link}`);
      return link;
    }, (l) => l);
    const overview = await step('virtcbt sync status, virtcbt scan status', async () => ({
      sync: (await d.cli(['sync', 'status', name])).stdout, scan: (await d.cli(['scan', 'status', name])).stdout,
    }));
    await step('virtcbt quarantine release: the links as they were before', async () => {
      await d.cli(['quarantine', 'release', name]);
      const link = (await virsh(['domif-getlink', name, MAC])).stdout.trim();
      if (!/up/.test(link)) throw new Error(`the link is not back up: ${link}`);
      return link;
    }, (l) => l);

    console.log('\nRestore points:');
    console.log(list.stdout.split('\n').map((l) => `  ${l}`).join('\n'));
    console.log('\nBackups:');
    for (const b of [b1, b2, b3, b4, b5, b6]) console.log(`  ${describeBackup(b)}, ${fmtMs(b.elapsedMs)} in virtcbtd`);
    console.log('\nSyncs of vda:');
    for (const x of [s1, s2]) console.log(`  ${describeSync(x)}, ${fmtMs(x.elapsedMs)} in virtcbtd`);
    console.log('\nScans:');
    for (const x of [full, found]) console.log(`  ${describeScan(x)}`);
    console.log('\nvirtcbt sync status / scan status (before the release):');
    for (const l of `${overview.sync.trimEnd()}\n${overview.scan.trimEnd()}`.split('\n')) console.log(`  ${l}`);
  } finally {
    const t0 = performance.now();
    await daemon?.stop().catch(() => undefined);
    await scanLab?.stop().catch(() => undefined);
    await lab?.remove().catch((err) => console.error(`cleanup: ${errorMessage(err)}`));
    await rm(work, { recursive: true, force: true });
    steps.push({ step: 'clean up (domain undefined, files removed)', ms: performance.now() - t0, detail: '' });
  }
  console.log('\nSteps:');
  const w = Math.max(...steps.map((s) => s.step.length));
  for (const s of steps) console.log(`  ${s.step.padEnd(w)}  ${fmtMs(s.ms).padStart(9)}`);
  console.log(`  ${'total'.padEnd(w)}  ${fmtMs(performance.now() - started).padStart(9)}`);
}

main().then(
  () => { process.exitCode = 0; },
  (err) => {
    process.stderr.write(`\nvirtcbt demo failed: ${errorMessage(err)}\n`);
    process.exitCode = 1;
  },
);
