// Helpers for tests of virtcbtd's jobs: a guest whose vdb holds 1 GiB of data (a backup long
// enough to cancel or to SIGTERM in the middle of), the job list, and what a job may leave behind.
import { execa, type ResultPromise } from 'execa';
import { readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { expect } from 'vitest';
import { callDaemon } from '../../src/cli/daemon-client.js';
import type { JobInfo } from '../../src/daemon/job-registry.js';
import { pollUntil } from '../../src/util/abort.js';
import { MiB } from './backup.js';
import type { TestDaemon } from './daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './libvirt.js';

const CLI = resolve(import.meta.dirname, '../../dist/src/cli/main.js');
/** startTestDaemon's qmpSocketDir + JobRunner.fleeceDir's default. */
const FLEECE_DIR = '/var/lib/libvirt/qemu/virtcbt-test/fleece';
export const BIG = 1024 * MiB;

/** A defined, stopped guest whose vdb (qcow2) is grown to 1 GiB: write into it with offlineWrite. */
export async function bigGuest(name: string): Promise<LibvirtGuest> {
  const guest = await startLibvirtGuest({ name, scratchFormat: 'qcow2', start: false });
  await execa('qemu-img', ['resize', '-f', 'qcow2', guest.disks.scratch, String(BIG)]);
  return guest;
}

/** `virtcbt backup ... --json` running in the background. */
export function backupChild(daemon: TestDaemon, args: string[]): ResultPromise<{ reject: false }> {
  return execa('node', [CLI, '--config', daemon.configFile, 'backup', ...args, '--json'], { reject: false });
}

export async function listJobs(daemon: TestDaemon): Promise<JobInfo[]> {
  return (await daemon.cliJson<{ jobs: JobInfo[] }>(['jobs'])).jobs;
}

/** Waits until the domain's backup job is copying and has done part (not all) of it. */
export async function midCopy(daemon: TestDaemon, domain: string, child: ResultPromise): Promise<JobInfo> {
  let ended = false;
  void child.then(() => { ended = true; });
  return pollUntil(async () => {
    if (ended) throw new Error(`the backup ended before its copy was seen under way: ${(await child).stderr}`);
    // Straight from the control socket: polled often, the CLI's start-up would be most of each look.
    const { jobs } = await callDaemon<{ jobs: JobInfo[] }>(daemon.socket, 'GET', '/v1/jobs');
    const j = jobs.find((x) => x.domain === domain && x.kind === 'backup' && x.state === 'running');
    const p = j?.progress;
    return j && p?.step === 'copy' && p.done !== undefined && p.total !== undefined && p.done > 0 && p.done < p.total / 2 ? j : undefined;
  }, 'the backup to be in the middle of its copy', { timeoutMs: 120_000, intervalMs: 20 });
}

async function monitor(guest: LibvirtGuest, execute: string, args?: object): Promise<any> {
  const r = await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute, arguments: args })]);
  return JSON.parse(r.stdout).return;
}

/**
 * Nothing a backup leaves while it runs: no virtcbt node, block job or export in the VM's QEMU,
 * no overlay in the fleece directory, no image no manifest names and no in-progress marker in
 * the consumer's chain directory; and, asked of a running `daemon`, no open pass.
 */
export async function expectNothingLeft(guest: LibvirtGuest, repo: string, consumer: string, daemon?: TestDaemon): Promise<void> {
  const nodes = (await monitor(guest, 'query-named-block-nodes', { flat: true }) as { 'node-name': string }[]).map((n) => n['node-name']);
  expect(nodes.filter((n) => n.startsWith('vcbt-'))).toEqual([]);
  expect(await monitor(guest, 'query-block-jobs')).toEqual([]);
  expect(await monitor(guest, 'query-block-exports')).toEqual([]);
  expect(await readdir(join(FLEECE_DIR, encodeURIComponent(guest.name))).catch(() => [])).toEqual([]);
  const dir = join(repo, encodeURIComponent(guest.name), consumer);
  const named = new Set<string>();
  for (const f of (await readdir(dir)).filter((x) => x.endsWith('.json'))) {
    const m = JSON.parse((await execa('cat', [join(dir, f)])).stdout) as { disks: { file: string }[] };
    for (const d of m.disks) named.add(d.file);
  }
  const files = await readdir(dir);
  expect(files.filter((f) => f.endsWith('.qcow2') && !named.has(f))).toEqual([]);
  expect(files.filter((f) => f.startsWith('.'))).toEqual([]);
  if (daemon) expect((await daemon.cliJson(['status', guest.name])).openPasses).toEqual([]);
}

/** Asks the guest agent (through libvirt) whether the guest's filesystems are frozen. */
export async function fsfreezeStatus(guest: LibvirtGuest): Promise<string> {
  const st = await virsh(['qemu-agent-command', guest.name, JSON.stringify({ execute: 'guest-fsfreeze-status' })]);
  return JSON.parse(st.stdout).return;
}
