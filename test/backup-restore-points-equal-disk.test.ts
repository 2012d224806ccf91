// Backups of a running two-disk libvirt domain for two consumers on different schedules, with
// guest writes in between: every restore point, restored, equals a copy of the disks taken at the
// same instant; incrementals copy only what changed; `verify` passes; a stopped domain is backed
// up through qemu-storage-daemon.
import { execa } from 'execa';
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
});

describe('backup and restore of a running two-disk domain, two consumers', () => {
  it('first backups are full and narrowed to allocated data; the guest is frozen only around the snapshot', async () => {
    // With the agent's freeze: vda's ext4 is captured clean (no journal to replay).
    const ref = await referenceCopy(guest, refs, 'ref-frozen');
    const n = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    points.set(n.id, { vdb: ref.vdb!, fsck: 'vda' });
    expect(n.kind).toBe('full');
    expect(n.disks.map((d: { target: string }) => d.target)).toEqual(['vda', 'vdb']);
    expect(n.disks.every((d: { full: boolean }) => d.full)).toBe(true);
    // vdb is a fresh zeroed scratch disk: nothing allocated, nothing written.
    expect(n.disks.find((d: { target: string }) => d.target === 'vdb').written).toBe(0);
    expect(n.consistency).toBe('filesystem');
    expect(n.freezeWindowMs).toBeGreaterThan(0);
    expect(n.freezeWindowMs).toBeLessThan(1000);
    expect(n.events.map((e: { type: string }) => e.type)).toEqual(expect.arrayContaining(['start', 'snapshot', 'plan', 'progress', 'disk-done', 'result']));
    expect(await virsh(['qemu-agent-command', guest.name, JSON.stringify({ execute: 'guest-fsfreeze-status' })]).then((r) => r.stdout)).toContain('thawed');
    const w = await backup('weekly');
    expect(w.kind).toBe('full');
  });

  it('incrementals copy only what the guest wrote since the consumer\'s own last backup', async () => {
    await guestDd(agent, '/dev/vdb', 4 * MiB, 2 * MiB);
    await guestFile(agent, 'a.bin', 1 * MiB);
    const n2 = await backup('nightly');
    expect(n2.kind).toBe('incremental');
    expect(n2.parent).toMatch(/^nightly-0001$/);
    const vdb = n2.disks.find((d: { target: string }) => d.target === 'vdb');
    expect(vdb.full).toBe(false);
    expect(vdb.bytes).toBe(2 * MiB);
    const vda = n2.disks.find((d: { target: string }) => d.target === 'vda');
    expect(vda.bytes).toBeGreaterThanOrEqual(1 * MiB);
    expect(vda.bytes).toBeLessThan(8 * MiB);

    await guestDd(agent, '/dev/vdb', 20 * MiB, 1 * MiB);
    await guestDd(agent, '/dev/vdb', 4 * MiB, 64 * 1024); // rewrites part of the first write
    const n3 = await backup('nightly');
    expect(n3.disks.find((d: { target: string }) => d.target === 'vdb').bytes).toBe(1 * MiB + 64 * 1024);

    // weekly has not run since its full backup: it gets all of it.
    const w2 = await backup('weekly');
    expect(w2.parent).toBe('weekly-0001');
    expect(w2.disks.find((d: { target: string }) => d.target === 'vdb').bytes).toBe(3 * MiB);

    await guestFile(agent, 'b.bin', 2 * MiB);
    await guestDd(agent, '/dev/vdb', 40 * MiB, 3 * MiB);
    const n4 = await backup('nightly');
    expect(n4.parent).toBe(n3.id);
  });

  it('a backup with nothing changed copies nothing on the idle disk', async () => {
    const n5 = await backup('nightly');
    const vdb = n5.disks.find((d: { target: string }) => d.target === 'vdb');
    expect(vdb.bytes).toBe(0);
    // Its image is an empty overlay on the parent's (made while the guest froze).
    const info = await imageInfo(join(n5.chainDir, vdb.file));
    expect(info['backing-filename']).toBe(`${n5.parent}.vdb.qcow2`);
    expect(info['actual-size']).toBeLessThan(1 * MiB);
  });

  it('between jobs QEMU\'s one NBD server is free for other tools (libvirt backup jobs, virtnbdbackup)', async () => {
    await backup('nightly');
    // Queued behind the backup's housekeeping; a fold uses the server too, and gives it back.
    await daemon.cli(['reconcile', guest.name]);
    const qmp = async (execute: string, args?: object) =>
      JSON.parse((await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute, arguments: args })])).stdout);
    expect((await qmp('query-block-exports')).return).toEqual([]);
    const started = await qmp('nbd-server-start', { addr: { type: 'inet', data: { host: '127.0.0.1', port: '0' } } });
    expect(started.error).toBeUndefined();
    expect((await qmp('nbd-server-stop')).error).toBeUndefined();
  });

  it('--full starts a new chain', async () => {
    await guestDd(agent, '/dev/vdb', 50 * MiB, 1 * MiB);
    const w3 = await backup('weekly', ['--full']);
    expect(w3.kind).toBe('full');
    expect(w3.parent).toBeNull();
  });

  it('a consumer backed up into another repository meanwhile gets a new chain here, not an overlay on a stale parent', async () => {
    // weekly's chain here continues from its --full backup; the other repository's backup moves its pass on.
    await backupJson(daemon, [guest.name, '--consumer', 'weekly', '--repo', tempDir('repo2'), '--no-freeze']);
    const w4 = await backup('weekly');
    expect(w4.kind).toBe('full');
    expect(w4.parent).toBeNull();
    for (const d of w4.disks) {
      expect(d.reason).toMatch(/written elsewhere/);
      // An overlay may have been made early for this disk: the full copy replaced it.
      expect((await imageInfo(join(w4.chainDir, d.file)))['backing-filename']).toBeUndefined();
    }
  });

  it('a stopped domain is backed up through qemu-storage-daemon', async () => {
    await guestDd(agent, '/dev/vdb', 60 * MiB, 1 * MiB);
    await agent.exec('/bin/sync', [], { timeoutMs: 60_000 });
    await guest.destroy();
    await pollUntil(async () => !(await daemon.cliJson(['status', guest.name])).connected, 'disconnect', { timeoutMs: 30_000, intervalMs: 250 });
    const ref: Record<string, string> = {};
    for (const [t, img] of [['vda', guest.disks.data], ['vdb', guest.disks.scratch]] as const) {
      ref[t] = join(refs, `stopped.${t}.raw`);
      await execa('qemu-img', ['convert', '-O', 'raw', img, ref[t]!]);
    }
    const r = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    points.set(r.id, ref);
    expect(r.running).toBe(false);
    expect(r.kind).toBe('incremental');
    // nightly's last backup was before the 50 MiB write: it gets both.
    expect(r.disks.find((d: { target: string }) => d.target === 'vdb').bytes).toBe(2 * MiB);
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
    // Corrupt the data of one incremental (not its metadata): the checksum catches it.
    const m = list2manifest(await daemon.cliJson(['list', '--repo', repo, guest.name]), 'nightly-0002');
    const file = join(repo, encodeURIComponent(guest.name), 'nightly', m.disks.find((d: { target: string }) => d.target === 'vdb').file);
    await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a ${4 * MiB} 4096`, file]);
    const bad = await daemon.cli(['verify', '--repo', repo, guest.name], { reject: false });
    expect(bad.exitCode).toBe(1);
    expect(bad.stdout).toMatch(/nightly-0002 vdb: FAILED: checksum mismatch/);
  });
});

function list2manifest(list: { domains: { backups: { id: string }[] }[] }, id: string): any {
  return list.domains[0]!.backups.find((b) => b.id === id);
}
