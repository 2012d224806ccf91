#!/usr/bin/env node
// `npm run demo`: virtcbt end to end on a real libvirt domain — build the demo guest, define and
// enable it, run a workload, take full and incremental backups for two consumers, restore and
// verify, then print what happened and how long each step took. The demo domain, its daemon and
// its files are removed at the end, also when a step fails.
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildGuestImages } from '../guestimage/index.js';
import { errorMessage } from '../util/errors.js';
import { createLabDomain, ensureLibvirtd, startLabDaemon, virsh, type LabDaemon, type LabDomain } from './lab.js';

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

async function main(): Promise<void> {
  const started = performance.now();
  const name = `virtcbt-demo-${process.pid}`;
  const work = await mkdtemp(join(tmpdir(), 'virtcbt-demo-'));
  const repo = join(work, 'repo');
  let lab: LabDomain | undefined;
  let daemon: LabDaemon | undefined;
  console.log(`virtcbt demo: domain ${name}, repository ${repo}\n`);
  try {
    await step('libvirtd running', ensureLibvirtd);
    await step('build (or reuse) the demo guest: kernel, busybox + qemu-ga initramfs, ext4 disk', () => buildGuestImages(), (g) => `cache ${g.dir}`);
    lab = await step('define the libvirt domain (vda: ext4 data 512 MiB, vdb: scratch 512 MiB, both qcow2)', () =>
      createLabDomain({ name, dataBytes: 512 * MiB, scratchBytes: 512 * MiB }));
    daemon = await step('start virtcbtd', () => startLabDaemon(join(work, 'daemon')));
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

    console.log('\nRestore points:');
    console.log(list.stdout.split('\n').map((l) => `  ${l}`).join('\n'));
    console.log('\nBackups:');
    for (const b of [b1, b2, b3, b4, b5, b6]) console.log(`  ${describeBackup(b)}, ${fmtMs(b.elapsedMs)} in virtcbtd`);
  } finally {
    const t0 = performance.now();
    await daemon?.stop().catch(() => undefined);
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
