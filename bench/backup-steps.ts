// Where a virtcbt backup's time goes: one libvirt domain (two 1 GiB qcow2 disks, as in
// backup-vs-virtnbdbackup), a full backup, then rounds of an incremental with nothing changed and
// one after the guest wrote 256 MiB; per backup the CLI's wall time, the daemon's own time and its
// steps (the result's `steps`), the freeze call and window, and per disk the copy and flush times.
//   node dist/bench/backup-steps.js [--rounds N] [--config JSON] [--json FILE]
// --config merges into the lab daemon's config, e.g. '{"nbd":{"requestSize":262144,"inflight":64}}'.
import { execa } from 'execa';
import { writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLabDomain, startLabDaemon, type LabDaemon, type LabDomain } from '../src/demo/lab.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

interface Sample {
  phase: string;
  wallMs: number;
  daemonMs: number;
  freezeCallMs?: number;
  freezeWindowMs: number | null;
  steps: Record<string, number>;
  disks: Record<string, { elapsedMs: number; flushMs?: number; bytes: number }>;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function backup(d: LabDaemon, domain: string, repo: string, phase: string): Promise<Sample> {
  await execa('sync');
  const r = await d.cli(['backup', domain, '--consumer', 'c1', '--repo', repo, '--json']);
  const res = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
    elapsedMs: number; freezeCallMs?: number; freezeWindowMs: number | null; steps: { step: string; ms: number }[];
    disks: { target: string; elapsedMs: number; flushMs?: number; bytes: number }[];
  };
  return {
    phase, wallMs: Math.round(r.ms), daemonMs: res.elapsedMs, freezeCallMs: res.freezeCallMs, freezeWindowMs: res.freezeWindowMs,
    steps: Object.fromEntries(res.steps.map((s) => [s.step, s.ms])),
    disks: Object.fromEntries(res.disks.map((x) => [x.target, { elapsedMs: x.elapsedMs, flushMs: x.flushMs, bytes: x.bytes }])),
  };
}

async function main(): Promise<void> {
  const rounds = Number(arg('--rounds') ?? 3);
  const extra = JSON.parse(arg('--config') ?? '{}') as Record<string, unknown>;
  const work = await mkdtemp(join(tmpdir(), 'virtcbt-bench-steps-'));
  const name = `virtcbt-steps-${process.pid}`;
  let lab: LabDomain | undefined;
  let daemon: LabDaemon | undefined;
  const samples: Sample[] = [];
  const load = [loadavg()[0]!];
  try {
    lab = await createLabDomain({ name, dataBytes: GiB, scratchBytes: GiB });
    daemon = await startLabDaemon(join(work, 'daemon'), extra);
    await daemon.cli(['enable', name]);
    await daemon.cli(['consumer', 'add', name, 'c1']);
    await lab.start();
    await lab.exec('/bin/dd', ['if=/dev/urandom', 'of=/mnt/data/fill.bin', 'bs=1M', 'count=160', 'conv=fsync']);
    await lab.exec('/bin/dd', ['if=/dev/urandom', 'of=/dev/vdb', 'bs=1M', 'count=384', 'oflag=direct', 'conv=notrunc']);
    const repo = join(work, 'repo');
    await mkdir(repo, { recursive: true });
    samples.push(await backup(daemon, name, repo, 'full'));
    for (let i = 0; i < rounds; i++) {
      samples.push(await backup(daemon, name, repo, 'empty'));
      await lab.exec('/bin/dd', ['if=/dev/urandom', 'of=/dev/vdb', 'bs=1M', 'count=256', `seek=${256 * (i % 3)}`, 'oflag=direct', 'conv=notrunc']);
      samples.push(await backup(daemon, name, repo, 'after 256 MiB'));
    }
  } finally {
    await daemon?.stop();
    await lab?.remove();
    await rm(work, { recursive: true, force: true });
  }
  load.push(loadavg()[0]!);
  const out = arg('--json');
  if (out) writeFileSync(out, JSON.stringify({ load, samples }, null, 2));
  console.log(`load average (1 min) before ${load[0]!.toFixed(2)}, after ${load[1]!.toFixed(2)}`);
  for (const s of samples) {
    const steps = Object.entries(s.steps).map(([k, v]) => `${k} ${v}`).join(', ');
    const disks = Object.entries(s.disks).map(([k, v]) => `${k} ${v.elapsedMs}${v.flushMs !== undefined ? `/flush ${v.flushMs}` : ''}`).join(', ');
    console.log(`${s.phase.padEnd(14)} wall ${s.wallMs} ms, daemon ${s.daemonMs} ms (freeze call ${s.freezeCallMs ?? '-'}, window ${s.freezeWindowMs ?? '-'}) | ${steps} | ${disks}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
