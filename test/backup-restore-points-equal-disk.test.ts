// Backups of a running two-disk libvirt domain for two consumers on different schedules, with
// guest writes in between: every restore point, restored, equals a copy of the disks taken at the
// same instant; incrementals copy only what changed; `verify` passes; a stopped domain is backed
// up through qemu-storage-daemon. The scenario runs once, in order, in beforeAll (each backup
// depends on the ones before it); each case checks its part of what it recorded, so any case runs
// alone.
import { execa } from 'execa';
import { cpSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, backupJson, guestDd, guestFile, referenceCopy, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let repo: string;
let refs: string;
/** What the scenario saw, step by step: backups' JSON results and observations between them. */
const seen: Record<string, any> = {};
/** Restore point id → reference copies of its disks (or, for a disk frozen by the backup itself, a file system check). */
const points = new Map<string, { vda?: string; vdb?: string; fsck?: string }>();

/**
 * A backup whose reference copy is exact: the test freezes the guest's filesystems itself, copies
 * the disks (VM suspended), and backs up with --no-freeze while the guest stays frozen, so nothing
 * can change between the copy and the snapshot.
 */
async function backup(consumer: string, extra: string[] = []) {
  await virsh(['domfsfreeze', guest.name]);
  try {
    const ref = await referenceCopy(guest, refs, `ref-${points.size}`);
    const r = await backupJson(daemon, [guest.name, '--consumer', consumer, '--repo', repo, '--no-freeze', ...extra]);
    expect(r.consistency).toBe('crash');
    points.set(r.id, ref);
    return r;
  } finally {
    await virsh(['domfsthaw', guest.name]);
  }
}

async function imageInfo(file: string): Promise<Record<string, unknown>> {
  return JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', file])).stdout);
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'bk', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  repo = tempDir('repo');
  refs = tempDir('refs');
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  await daemon.cli(['consumer', 'add', guest.name, 'weekly']);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
  // Settle the guest: nothing dirty in its page cache before the first reference copy.
  await agent.exec('/bin/sync', [], { timeoutMs: 60_000 });

  // First backups. nightly with the agent's freeze: vda's ext4 is captured clean (no journal to replay).
  const ref = await referenceCopy(guest, refs, 'ref-frozen');
  seen.n1 = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
  points.set(seen.n1.id, { vdb: ref.vdb!, fsck: 'vda' });
  seen.n1Thawed = (await virsh(['qemu-agent-command', guest.name, JSON.stringify({ execute: 'guest-fsfreeze-status' })])).stdout;
  seen.w1 = await backup('weekly');

  // Incrementals between guest writes.
  await guestDd(agent, '/dev/vdb', 4 * MiB, 2 * MiB);
  await guestFile(agent, 'a.bin', 1 * MiB);
  seen.n2 = await backup('nightly');
  await guestDd(agent, '/dev/vdb', 20 * MiB, 1 * MiB);
  await guestDd(agent, '/dev/vdb', 4 * MiB, 64 * 1024); // rewrites part of the first write
  seen.n3 = await backup('nightly');
  seen.w2 = await backup('weekly'); // weekly has not run since its full backup: it gets all of it
  await guestFile(agent, 'b.bin', 2 * MiB);
  await guestDd(agent, '/dev/vdb', 40 * MiB, 3 * MiB);
  seen.n4 = await backup('nightly');
  seen.n5 = await backup('nightly'); // nothing changed

  // Between jobs QEMU's one NBD server is free for other tools: after a backup and a fold (queued
  // behind the backup's housekeeping; it uses the server too, and gives it back).
  seen.n6 = await backup('nightly');
  await daemon.cli(['reconcile', guest.name]);
  const qmp = async (execute: string, args?: object) =>
    JSON.parse((await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute, arguments: args })])).stdout);
  seen.exportsBetweenJobs = (await qmp('query-block-exports')).return;
  seen.nbdStart = await qmp('nbd-server-start', { addr: { type: 'inet', data: { host: '127.0.0.1', port: '0' } } });
  seen.nbdStop = await qmp('nbd-server-stop');

  await guestDd(agent, '/dev/vdb', 50 * MiB, 1 * MiB);
  seen.w3 = await backup('weekly', ['--full']);
  // weekly's chain here continues from its --full backup; another repository's backup moves its pass on.
  await backupJson(daemon, [guest.name, '--consumer', 'weekly', '--repo', tempDir('repo2'), '--no-freeze']);
  seen.w4 = await backup('weekly');
  seen.w4Backing = await Promise.all(seen.w4.disks.map(async (d: { file: string }) => (await imageInfo(join(seen.w4.chainDir, d.file)))['backing-filename']));

  // Stopped: backed up through qemu-storage-daemon.
  await guestDd(agent, '/dev/vdb', 60 * MiB, 1 * MiB);
  await agent.exec('/bin/sync', [], { timeoutMs: 60_000 });
  await guest.destroy();
  await pollUntil(async () => !(await daemon.cliJson(['status', guest.name])).connected, 'disconnect', { timeoutMs: 30_000, intervalMs: 250 });
  const stoppedRef: Record<string, string> = {};
  for (const [t, img] of [['vda', guest.disks.data], ['vdb', guest.disks.scratch]] as const) {
    stoppedRef[t] = join(refs, `stopped.${t}.raw`);
    await execa('qemu-img', ['convert', '-O', 'raw', img, stoppedRef[t]!]);
  }
  seen.stopped = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
  points.set(seen.stopped.id, stoppedRef);
});

const disk = (r: any, target: string) => r.disks.find((d: { target: string }) => d.target === target);

describe('backup and restore of a running two-disk domain, two consumers', () => {
  it('first backups are full and narrowed to allocated data; the guest is frozen only around the snapshot', () => {
    const n = seen.n1;
    expect(n.kind).toBe('full');
    expect(n.disks.map((d: { target: string }) => d.target)).toEqual(['vda', 'vdb']);
    expect(n.disks.every((d: { full: boolean }) => d.full)).toBe(true);
    // vdb is a fresh zeroed scratch disk: nothing allocated, nothing written.
    expect(disk(n, 'vdb').written).toBe(0);
    expect(n.consistency).toBe('filesystem');
    expect(n.freezeWindowMs).toBeGreaterThan(0);
    expect(n.freezeWindowMs).toBeLessThan(1000);
    expect(n.events.map((e: { type: string }) => e.type)).toEqual(expect.arrayContaining(['start', 'snapshot', 'plan', 'progress', 'disk-done', 'result']));
    expect(seen.n1Thawed).toContain('thawed');
    expect(seen.w1.kind).toBe('full');
  });

  it('incrementals copy only what the guest wrote since the consumer\'s own last backup', () => {
    expect(seen.n2.kind).toBe('incremental');
    expect(seen.n2.parent).toBe(seen.n1.id);
    expect(disk(seen.n2, 'vdb').full).toBe(false);
    expect(disk(seen.n2, 'vdb').bytes).toBe(2 * MiB);
    expect(disk(seen.n2, 'vda').bytes).toBeGreaterThanOrEqual(1 * MiB);
    expect(disk(seen.n2, 'vda').bytes).toBeLessThan(8 * MiB);
    expect(disk(seen.n3, 'vdb').bytes).toBe(1 * MiB + 64 * 1024);
    expect(seen.w2.parent).toBe(seen.w1.id);
    expect(disk(seen.w2, 'vdb').bytes).toBe(3 * MiB);
    expect(seen.n4.parent).toBe(seen.n3.id);
  });

  it('a backup with nothing changed copies nothing on the idle disk', async () => {
    const vdb = disk(seen.n5, 'vdb');
    expect(vdb.bytes).toBe(0);
    // Its image is an empty overlay on the parent's (made while the guest froze).
    const info = await imageInfo(join(seen.n5.chainDir, vdb.file));
    expect(info['backing-filename']).toBe(`${seen.n5.parent}.vdb.qcow2`);
    expect(info['actual-size']).toBeLessThan(1 * MiB);
  });

  it('between jobs QEMU\'s one NBD server is free for other tools (libvirt backup jobs, virtnbdbackup)', () => {
    expect(seen.exportsBetweenJobs).toEqual([]);
    expect(seen.nbdStart.error).toBeUndefined();
    expect(seen.nbdStop.error).toBeUndefined();
  });

  it('--full starts a new chain', () => {
    expect(seen.w3.kind).toBe('full');
    expect(seen.w3.parent).toBeNull();
  });

  it('a consumer backed up into another repository meanwhile gets a new chain here, not an overlay on a stale parent', () => {
    expect(seen.w4.kind).toBe('full');
    expect(seen.w4.parent).toBeNull();
    for (const d of seen.w4.disks) expect(d.reason).toMatch(/written elsewhere/);
    // An overlay may have been made early for a disk: the full copy replaced it.
    expect(seen.w4Backing).toEqual([undefined, undefined]);
  });

  it('a stopped domain is backed up through qemu-storage-daemon', () => {
    const r = seen.stopped;
    expect(r.running).toBe(false);
    expect(r.kind).toBe('incremental');
    // nightly's last backup was before the 50 MiB write: it gets both.
    expect(disk(r, 'vdb').bytes).toBe(2 * MiB);
  });

  it('every restore point, restored, equals the disks at its instant', async () => {
    const list = await daemon.cliJson(['list', '--repo', repo, guest.name]);
    const ids = list.domains[0].backups.map((b: { id: string }) => b.id);
    expect(ids.sort()).toEqual([...points.keys()].sort());
    const out = tempDir('restore');
    // Restores only read the repository: the two disks of each point are restored and checked side by side.
    for (const [id, ref] of points) {
      await Promise.all((['vda', 'vdb'] as const).map(async (disk) => {
        const to = join(out, `${id}.${disk}.qcow2`);
        await daemon.cli(['restore', '--repo', repo, guest.name, '--disk', disk, '--to', to, '--at', id]);
        if (ref.fsck === disk) {
          // Frozen by the agent at the snapshot: the file system is clean, nothing to recover.
          const raw = join(out, `${id}.${disk}.raw`);
          await daemon.cli(['restore', '--repo', repo, guest.name, '--disk', disk, '--to', raw, '--at', id, '--format', 'raw']);
          const fsck = await execa('e2fsck', ['-fn', raw], { reject: false });
          expect(fsck.exitCode, `${id} ${disk}: ${fsck.stdout}${fsck.stderr}`).toBe(0);
          const features = (await execa('dumpe2fs', ['-h', raw])).stdout;
          expect(features).not.toMatch(/needs_recovery/);
          return;
        }
        const c = await sameContent(ref[disk]!, 'raw', to, 'qcow2');
        expect(c.same, `${id} ${disk}: ${c.detail}`).toBe(true);
      }));
    }
    // Raw restores too, and the default restore point is the newest.
    const raw = join(out, 'latest.vdb.raw');
    await daemon.cli(['restore', '--repo', repo, guest.name, '--disk', 'vdb', '--to', raw, '--format', 'raw']);
    const newest = [...points.keys()].pop()!;
    expect((await sameContent(points.get(newest)!.vdb!, 'raw', raw, 'raw')).same).toBe(true);
  });

  it('verify re-reads every checksum and finds the repository sound; a flipped byte is found', async () => {
    const v = await daemon.cliJson(['verify', '--repo', repo, guest.name]);
    expect(v.ok).toBe(true);
    expect(v.checked).toBe(points.size);
    // Corrupt the data of one incremental (not its metadata) in a copy of the repository: the checksum catches it.
    const copy = join(tempDir('corrupt'), 'repo');
    cpSync(repo, copy, { recursive: true });
    const m = list2manifest(await daemon.cliJson(['list', '--repo', copy, guest.name]), seen.n2.id);
    const file = join(copy, encodeURIComponent(guest.name), 'nightly', disk(m, 'vdb').file);
    await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a ${4 * MiB} 4096`, file]);
    const bad = await daemon.cli(['verify', '--repo', copy, guest.name], { reject: false });
    expect(bad.exitCode).toBe(1);
    expect(bad.stdout).toMatch(new RegExp(`${seen.n2.id} vdb: FAILED: checksum mismatch`));
  });
});

function list2manifest(list: { domains: { backups: { id: string }[] }[] }, id: string): any {
  return list.domains[0]!.backups.find((b) => b.id === id);
}
