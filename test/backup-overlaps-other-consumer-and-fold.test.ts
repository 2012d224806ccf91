// A backup holds its domain's queue only while it takes and releases its snapshot: while one
// consumer's backup holds its snapshot (paused after its copy, before its manifest), another
// consumer's backup of the same domain runs from start to end, a fold runs, and every restore
// equals the disks at its own instant. Two fleecing snapshots of one disk coexist in QEMU 7.2.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, backupJson, guestDd, referenceCopy, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let repo: string;
let refs: string;
let pause: string;

beforeAll(async () => {
  refs = tempDir('overlap-refs');
  pause = join(refs, 'release-nightly');
  daemon = await startTestDaemon({ env: { VIRTCBT_PAUSE_BACKUP: `nightly:copied:${pause}` } });
  guest = await startLibvirtGuest({ name: 'ovl', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  repo = tempDir('overlap-repo');
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  await daemon.cli(['consumer', 'add', guest.name, 'weekly']);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
});

afterAll(() => {
  // A paused backup must not outlive the test.
  writeFileSync(pause, '');
});

/** Freezes the guest, copies its disks as reference, and runs `fn` (a backup with --no-freeze) with the guest frozen. */
async function atFrozenInstant<T>(label: string, fn: () => Promise<T>): Promise<{ ref: Record<string, string>; out: T }> {
  await virsh(['domfsfreeze', guest.name]);
  try {
    const ref = await referenceCopy(guest, refs, label);
    return { ref, out: await fn() };
  } finally {
    await virsh(['domfsthaw', guest.name]);
  }
}

async function q(cmd: string): Promise<any[]> {
  return JSON.parse((await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute: cmd })])).stdout).return;
}

async function expectRestoreEquals(id: string, ref: Record<string, string>) {
  const to = tempDir(`overlap-restore-${id}`);
  for (const target of ['vda', 'vdb']) {
    const got = join(to, `${target}.qcow2`);
    await daemon.cli(['restore', '--repo', repo, guest.name, '--disk', target, '--to', got, '--at', id]);
    const same = await sameContent(got, 'qcow2', ref[target]!, 'raw');
    expect(same.same, `${id} ${target}: ${same.detail}`).toBe(true);
  }
}

it('a second consumer\'s backup and a fold run while the first backup holds its snapshot; each restore equals its instant', async () => {
  await guestDd(agent, '/dev/vdb', 0, 8 * MiB);
  // nightly: snapshot taken, copied, then held at 'copied' (snapshot and export still there).
  let nightlyRun!: Promise<any>;
  const first = await atFrozenInstant('nightly', async () => {
    nightlyRun = backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo, '--no-freeze']);
    nightlyRun.catch(() => undefined);
    await pollUntil(() => execa('test', ['-e', `${pause}.reached`], { reject: false }).then((r) => r.exitCode === 0), 'the nightly backup to reach its pause', { timeoutMs: 120_000, intervalMs: 50 });
  });
  // The guest writes after nightly's instant: nightly's restore must not see these.
  await guestDd(agent, '/dev/vdb', 16 * MiB, 4 * MiB);
  await guestDd(agent, '/dev/vdb', 0, 1 * MiB);

  // weekly runs from start to end beside it, with its own fleecing snapshot of the same disks.
  const second = await atFrozenInstant('weekly', () => backupJson(daemon, [guest.name, '--consumer', 'weekly', '--repo', repo, '--no-freeze']));
  const weekly = second.out;
  // A fold runs too, while nightly's export still holds its folded bitmaps.
  await guestDd(agent, '/dev/vdb', 32 * MiB, 1 * MiB);
  const fold = await daemon.cliJson(['reconcile', guest.name]);
  expect(fold.disks.length).toBeGreaterThan(0);
  // weekly's clean-up of dead jobs' leftovers left nightly's live snapshot alone: its nodes and exports are there.
  const nodes = (await q('query-named-block-nodes')).map((n) => String(n['node-name'])).filter((n) => n.startsWith('vcbt-fl-'));
  expect(new Set(nodes.map((n) => n.split('-')[2])).size, nodes.join(' ')).toBe(1);
  expect((await q('query-block-exports')).length).toBeGreaterThan(0);

  writeFileSync(pause, '');
  const nightly = await nightlyRun;
  // From their step timestamps: weekly began and ended inside nightly's life.
  const at = (r: any, step: string) => r.steps.find((s: { step: string }) => s.step === step).at as number;
  expect(at(weekly, 'snapshot')).toBeGreaterThan(at(nightly, 'snapshot'));
  expect(at(weekly, 'commit')).toBeLessThan(at(nightly, 'manifest'));

  await expectRestoreEquals(nightly.id, first.ref);
  await expectRestoreEquals(weekly.id, second.ref);
  expect((await daemon.cli(['verify', '--repo', repo, guest.name])).exitCode).toBe(0);

  // Both snapshots are gone: no fleecing node, job or export, no registry record.
  await pollUntil(async () => !(await q('query-named-block-nodes')).some((n) => String(n['node-name']).startsWith('vcbt-fl-')), 'the fleecing nodes to go', { timeoutMs: 30_000 });
  expect((await q('query-block-jobs')).filter((j) => String(j.device).startsWith('vcbt-'))).toEqual([]);
  expect(await q('query-block-exports')).toEqual([]);
  const records = await execa('ls', ['-A', join(daemon.stateDir, 'snapshots')], { reject: false });
  expect(records.stdout.trim()).toBe('');
});
