// Backups, virtcbt beside virtnbdbackup on the same libvirt domain (two 1 GiB qcow2 disks) and the
// same guest writes, in one run: a full backup, an incremental with nothing changed, an
// incremental after the guest wrote 256 MiB. Wall time of the command, bytes it added to its
// output directory, peak memory of its process tree (for virtcbt: the CLI, virtcbtd and the
// qemu-nbd it runs; QEMU's own work is left out for both). Then the raw data path (one disk's
// image copied whole by virtcbt's copy engine and by nbdcopy), the freeze window, and the
// bitmaps each disk carries after ten backups for three consumers.
// The incremental with nothing changed runs 2 + --empty-rounds times per tool (default 7); medians.
//   node dist/bench/backup-vs-virtnbdbackup.js [--json FILE] [--empty-rounds N]
import { execa } from 'execa';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NullEndpoint, copyExtents, flushingEndpoint, serveImage, wholeDisk } from '../src/copy/index.js';
import { createLabDomain, startLabDaemon, virsh, type LabDaemon, type LabDomain } from '../src/demo/lab.js';
import { Qcow2Writer } from '../src/qcow2/index.js';
import { childEnv, envNote } from './nbd-support.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

interface Run {
  tool: 'virtcbt' | 'virtnbdbackup';
  phase: string;
  wallS: number;
  /** virtnbdbackup does not fsync what it wrote; virtcbt does before it commits. This adds a `sync` to its time. */
  wallWithSyncS?: number;
  bytes: number;
  peakRssMiB: number;
  freezeWindowMs?: number | null;
  /** virtcbt: its result's step timings (where the daemon's time went). */
  steps?: { step: string; ms: number }[];
}

/**
 * Pids of `roots` and all their descendants, following /proc/PID/task/TID/children: a few small
 * reads per sample, not a scan of every process (which, every 20 ms, took CPU from the runs).
 */
function tree(roots: number[]): number[] {
  const out = new Set<number>();
  const todo = [...roots];
  while (todo.length > 0) {
    const pid = todo.pop()!;
    if (out.has(pid)) continue;
    out.add(pid);
    let tasks: string[] = [];
    try { tasks = readdirSync(`/proc/${pid}/task`); } catch { continue; }
    for (const t of tasks) {
      try {
        for (const c of readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ')) if (c) todo.push(Number(c));
      } catch { /* gone */ }
    }
  }
  return [...out];
}

function rssKiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Samples the summed RSS of the process trees under `roots()` every 20 ms until stopped. */
function rssSampler(roots: () => number[]): { stop(): number } {
  let peak = 0;
  const t = setInterval(() => {
    const sum = tree(roots().filter((p) => p > 0)).reduce((s, p) => s + rssKiB(p), 0);
    peak = Math.max(peak, sum);
  }, 20);
  return { stop: () => { clearInterval(t); return peak / 1024; } };
}

/** Allocated bytes of every file under `dir`. */
function allocated(dir: string): number {
  let sum = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) sum += statSync(join(e.parentPath, e.name)).blocks * 512;
  }
  return sum;
}

/** Each run starts with nothing left to write back from the run before (untimed). */
async function settle(): Promise<void> {
  await execa('sync');
}

async function runVirtcbt(d: LabDaemon, domain: string, consumer: string, repo: string, phase: string): Promise<Run> {
  await settle();
  const before = allocated(repo);
  const t0 = performance.now();
  const child = execa(process.execPath, [join(process.cwd(), 'dist/src/cli/main.js'), '--config', d.configFile, 'backup', domain, '--consumer', consumer, '--repo', repo, '--json'], { env: childEnv, extendEnv: false });
  const sampler = rssSampler(() => [child.pid ?? -1, d.pid]);
  const r = await child;
  const wallS = (performance.now() - t0) / 1000;
  const peak = sampler.stop();
  const res = JSON.parse(r.stdout.trim().split('\n').pop()!);
  return { tool: 'virtcbt', phase, wallS, bytes: allocated(repo) - before, peakRssMiB: peak, freezeWindowMs: res.freezeWindowMs, steps: res.steps };
}

async function runVnb(domain: string, out: string, level: 'full' | 'inc', phase: string): Promise<Run> {
  await settle();
  const before = allocated(out);
  const t0 = performance.now();
  const child = execa('virtnbdbackup', ['-d', domain, '-l', level, '-o', out, '--noprogress'], { reject: false, all: true });
  const sampler = rssSampler(() => [child.pid ?? -1]);
  const r = await child;
  const wallS = (performance.now() - t0) / 1000;
  const peak = sampler.stop();
  if (r.exitCode !== 0) throw new Error(`virtnbdbackup ${level} failed: ${r.all?.split('\n').slice(-15).join('\n')}`);
  await execa('sync');
  const wallWithSyncS = (performance.now() - t0) / 1000;
  return { tool: 'virtnbdbackup', phase, wallS, wallWithSyncS, bytes: allocated(out) - before, peakRssMiB: peak };
}

async function bitmaps(domain: string): Promise<Record<string, { total: number; recording: number; names: string[] }>> {
  const r = await virsh(['qemu-monitor-command', domain, JSON.stringify({ execute: 'query-block' })]);
  const out: Record<string, { total: number; recording: number; names: string[] }> = {};
  for (const b of JSON.parse(r.stdout).return as { qdev?: string; inserted?: { 'dirty-bitmaps'?: { name?: string; recording: boolean }[] } }[]) {
    const bms = b.inserted?.['dirty-bitmaps'] ?? [];
    out[b.qdev ?? '?'] = { total: bms.length, recording: bms.filter((x) => x.recording).length, names: bms.map((x) => x.name ?? '') };
  }
  return out;
}

async function guestWrite(lab: LabDomain, dev: string, offsetMiB: number, mib: number): Promise<void> {
  await lab.exec('/bin/dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', `count=${mib}`, `seek=${offsetMiB}`, 'oflag=direct', 'conv=notrunc']);
}

/** One disk image copied whole to a fresh qcow2 (and to null) by virtcbt's engine and by nbdcopy. */
async function rawDataPath(image: string, work: string): Promise<Record<string, number>> {
  const dir = await mkdtemp(join(work, 'raw-'));
  const out: Record<string, number> = {};
  const freshTarget = async (name: string) => {
    const f = join(dir, name);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', f, String(GiB)]);
    return f;
  };
  for (let round = 0; round < 3; round++) {
    {
      const src = await serveImage(image, { runDir: dir });
      const t = await freshTarget(`ours-${round}.qcow2`);
      const dst = await serveImage(t, { runDir: dir, writable: true, zeroInitialized: true });
      const t0 = performance.now();
      await copyExtents(src.endpoint, dst.endpoint, wholeDisk(src.endpoint));
      await dst.close();
      out[`virtcbt to qcow2 #${round}`] = (performance.now() - t0) / 1000;
      await src.close();
    }
    {
      // What a backup does since it writes its images itself (src/qcow2): flushed every 32 MiB and at the end.
      const src = await serveImage(image, { runDir: dir });
      const t0 = performance.now();
      const w = await Qcow2Writer.create(join(dir, `own-${round}.qcow2`), { size: src.endpoint.size });
      const fl = flushingEndpoint(w, 32 * MiB);
      await copyExtents(src.endpoint, fl.endpoint, wholeDisk(src.endpoint), { requestSize: MiB });
      await fl.settle();
      await w.finish();
      out[`virtcbt to its own qcow2 writer #${round}`] = (performance.now() - t0) / 1000;
      await src.close();
    }
    {
      const src = await serveImage(image, { runDir: dir });
      const t0 = performance.now();
      await copyExtents(src.endpoint, new NullEndpoint(src.endpoint.size), wholeDisk(src.endpoint));
      out[`virtcbt to null #${round}`] = (performance.now() - t0) / 1000;
      await src.close();
    }
    for (const target of ['qcow2', 'null'] as const) {
      const t = target === 'qcow2' ? await freshTarget(`nbdcopy-${round}.qcow2`) : undefined;
      // nbdcopy starts the qemu-nbd servers itself ([ ... ]) and counts their start-up: so does ours above (serveImage).
      const srcCmd = ['[', 'qemu-nbd', '-r', '-f', 'qcow2', image, ']'];
      const dstCmd = t ? ['[', 'qemu-nbd', '-f', 'qcow2', t, ']'] : ['null:'];
      const t0 = performance.now();
      await execa('nbdcopy', [...(t ? ['--destination-is-zero'] : []), '--', ...srcCmd, ...dstCmd]);
      out[`nbdcopy to ${target} #${round}`] = (performance.now() - t0) / 1000;
    }
  }
  await rm(dir, { recursive: true, force: true });
  return out;
}

async function main(): Promise<void> {
  const jsonOut = process.argv.includes('--json') ? process.argv[process.argv.indexOf('--json') + 1] : undefined;
  const emptyRounds = process.argv.includes('--empty-rounds') ? Number(process.argv[process.argv.indexOf('--empty-rounds') + 1]) : 5;
  const work = await mkdtemp(join(tmpdir(), 'virtcbt-bench-backup-'));
  const name = `virtcbt-bench-${process.pid}`;
  let lab: LabDomain | undefined;
  let daemon: LabDaemon | undefined;
  const runs: Run[] = [];
  const report: Record<string, unknown> = { when: new Date().toISOString(), domain: 'two 1 GiB qcow2 disks (vda: ext4, vdb: raw writes), TCG guest' };
  try {
    lab = await createLabDomain({ name, dataBytes: GiB, scratchBytes: GiB });
    daemon = await startLabDaemon(join(work, 'daemon'));
    await daemon.cli(['enable', name]);
    for (const c of ['c1', 'c2', 'c3']) await daemon.cli(['consumer', 'add', name, c]);
    await lab.start();
    // Before the full backups: 160 MiB in a file on vda's ext4, 384 MiB on vdb.
    await lab.exec('/bin/dd', ['if=/dev/urandom', 'of=/mnt/data/fill.bin', 'bs=1M', 'count=160', 'conv=fsync']);
    await guestWrite(lab, '/dev/vdb', 0, 384);
    const repo = join(work, 'virtcbt-repo');
    const vnb = join(work, 'virtnbdbackup');
    await mkdir(repo, { recursive: true });
    await mkdir(vnb, { recursive: true });

    runs.push(await runVnb(name, vnb, 'full', 'full'));
    runs.push(await runVirtcbt(daemon, name, 'c1', repo, 'full'));
    runs.push(await runVirtcbt(daemon, name, 'c1', repo, 'incremental, nothing changed'));
    runs.push(await runVnb(name, vnb, 'inc', 'incremental, nothing changed'));
    await guestWrite(lab, '/dev/vdb', 512, 256);
    runs.push(await runVnb(name, vnb, 'inc', 'incremental after 256 MiB written'));
    runs.push(await runVirtcbt(daemon, name, 'c1', repo, 'incremental after 256 MiB written'));
    // Once more in the other order, so neither tool always reads a warm page cache first.
    await guestWrite(lab, '/dev/vdb', 256, 256);
    runs.push(await runVirtcbt(daemon, name, 'c1', repo, 'incremental after 256 MiB written'));
    runs.push(await runVnb(name, vnb, 'inc', 'incremental after 256 MiB written'));
    runs.push(await runVirtcbt(daemon, name, 'c1', repo, 'incremental, nothing changed'));
    runs.push(await runVnb(name, vnb, 'inc', 'incremental, nothing changed'));
    report.runs = runs;

    // Ten backups for each of three consumers (virtcbt); ten checkpoints (virtnbdbackup: one chain per domain).
    const freeze: number[] = runs.filter((r) => r.freezeWindowMs != null).map((r) => r.freezeWindowMs!);
    const per: Record<string, number> = { c1: runs.filter((r) => r.tool === 'virtcbt').length, c2: 0, c3: 0 };
    for (let i = 0; i < 10; i++) {
      await guestWrite(lab, '/dev/vdb', 900 + i, 1);
      for (const c of ['c1', 'c2', 'c3']) {
        if (per[c]! >= 10) continue;
        const r = await runVirtcbt(daemon, name, c, repo, 'bitmaps');
        if (r.freezeWindowMs != null) freeze.push(r.freezeWindowMs);
        per[c]!++;
      }
    }
    let vnbCount = runs.filter((r) => r.tool === 'virtnbdbackup').length;
    while (vnbCount < 10) {
      await runVnb(name, vnb, 'inc', 'bitmaps');
      vnbCount++;
    }
    report.backupsPerConsumer = per;
    report.virtnbdbackupBackups = vnbCount;
    // virtcbt removes a backup's folded bitmap right after answering: a queued no-op waits for that.
    await daemon.cli(['reconcile', name]);
    report.bitmaps = await bitmaps(name);
    report.freezeWindowMs = { samples: freeze.length, median: Math.round(med(freeze) * 10) / 10, max: Math.max(...freeze) };

    // More samples of the shortest phase, where a noisy neighbour weighs most: taken after the
    // bitmap count (so that it stays at ten backups), the two tools alternating who goes first.
    for (let i = 0; i < emptyRounds; i++) {
      const pair = [() => runVirtcbt(daemon!, name, 'c1', repo, 'incremental, nothing changed'), () => runVnb(name, vnb, 'inc', 'incremental, nothing changed')];
      for (const run of i % 2 === 0 ? pair : pair.reverse()) runs.push(await run());
    }

    await lab.destroy();
    report.rawDataPath = await rawDataPath(lab.disks[1]!.file, work);
  } finally {
    await daemon?.stop();
    await lab?.remove();
    await rm(work, { recursive: true, force: true });
  }
  if (jsonOut) writeFileSync(jsonOut, JSON.stringify(report, null, 2));
  print(report);
}

function med(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function print(report: Record<string, unknown>): void {
  const runs = report.runs as Run[];
  const phases = ['full', 'incremental, nothing changed', 'incremental after 256 MiB written'];
  const targets: Record<string, number> = { full: 0.8, 'incremental, nothing changed': 0.15, 'incremental after 256 MiB written': 0.5 };
  console.log(`CLI environment: ${envNote()}`);
  console.log('| phase | virtcbt wall | virtnbdbackup wall | ratio (target) | virtnbdbackup + sync | virtcbt bytes | virtnbdbackup bytes | virtcbt peak RSS | virtnbdbackup peak RSS |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const p of phases) {
    const a = runs.filter((r) => r.phase === p && r.tool === 'virtcbt');
    const b = runs.filter((r) => r.phase === p && r.tool === 'virtnbdbackup');
    const wa = med(a.map((r) => r.wallS));
    const wb = med(b.map((r) => r.wallS));
    const ws = med(b.map((r) => r.wallWithSyncS ?? r.wallS));
    console.log(`| ${p} | ${wa.toFixed(2)} s | ${wb.toFixed(2)} s | ${(wa / wb).toFixed(2)}x (≤ ${targets[p]}x) | ${ws.toFixed(2)} s (${(wa / ws).toFixed(2)}x) | ` +
      `${(med(a.map((r) => r.bytes)) / MiB).toFixed(1)} MiB | ${(med(b.map((r) => r.bytes)) / MiB).toFixed(1)} MiB | ` +
      `${Math.max(...a.map((r) => r.peakRssMiB)).toFixed(0)} MiB | ${Math.max(...b.map((r) => r.peakRssMiB)).toFixed(0)} MiB |`);
  }
  console.log('\nall runs:', runs.map((r) => `${r.tool} ${r.phase}: ${r.wallS.toFixed(2)} s`).join('; '));
  // Where virtcbt's empty incremental goes: virtcbtd's steps (from the request's arrival), and the rest
  // (spawning Node, the CLI's start and request, the exit) as wall time minus the daemon's part.
  const empty = runs.filter((r) => r.phase === 'incremental, nothing changed' && r.tool === 'virtcbt' && r.steps);
  if (empty.length > 0) {
    const names = [...new Set(empty.flatMap((r) => r.steps!.map((s) => s.step)))];
    const ms = (r: Run, n: string) => r.steps!.find((s) => s.step === n)?.ms ?? 0;
    const daemon = empty.map((r) => r.steps!.reduce((t, s) => t + s.ms, 0));
    const outside = empty.map((r, i) => r.wallS * 1000 - daemon[i]!);
    console.log(`virtcbt, incremental with nothing changed, medians of ${empty.length}: wall ${(med(empty.map((r) => r.wallS)) * 1000).toFixed(0)} ms; ` +
      `virtcbtd ${med(daemon).toFixed(0)} ms (${names.map((n) => `${n} ${med(empty.map((r) => ms(r, n))).toFixed(1)}`).join(', ')}); ` +
      `outside virtcbtd (Node, CLI, spawn and exit) ${med(outside).toFixed(0)} ms`);
  }
  console.log('freeze window (ms):', JSON.stringify(report.freezeWindowMs));
  console.log('bitmaps per disk:', JSON.stringify(report.bitmaps));
  console.log('raw data path (s):', JSON.stringify(report.rawDataPath));
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
