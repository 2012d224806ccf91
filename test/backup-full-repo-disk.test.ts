// A repository on a small tmpfs that fills up mid-backup: the backup fails with an error that
// says the repository is full and what to do, leaves no partial file, the previous chain verifies
// and the consumer has not moved; once there is room, the next backup covers everything since.
import { execa } from 'execa';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Repository, restoreDisk, verifyRepo } from '../src/repo/index.js';
import { backupJson, MiB, offlineWrite, sameContent, tempDir } from './support/backup.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let repo: string;
let first: any;
/** The backup that ran into the full repository (beforeAll: each case then starts from it). */
let failed: { exitCode?: number; stderr: string };

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'full', scratchFormat: 'qcow2', start: false });
  repo = tempDir('tmpfs');
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=6m,mode=0750', 'virtcbt-test-repo', repo]);
  onCleanup(() => execa('umount', ['-l', repo], { reject: false }));
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  await offlineWrite(guest.disks.scratch, 0, 2 * MiB, 0x3c);
  first = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
  await offlineWrite(guest.disks.scratch, 8 * MiB, 8 * MiB, 0x3c);
  failed = await daemon.cli(['backup', guest.name, '--consumer', 'nightly', '--repo', repo], { reject: false });
});

describe('a full repository disk', () => {
  it('fails the backup with a clear error and leaves the previous chain intact', async () => {
    const r = failed;
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/backup repository .* is full/);
    expect(r.stderr).toMatch(/previous backups are intact and consumer nightly did not move/);

    const rp = await Repository.open(repo);
    expect((await rp.list(guest.name)).map((m) => m.id)).toEqual([first.id]);
    expect((await verifyRepo(rp, guest.name)).ok).toBe(true);
    const dir = rp.chainDir(guest.name, 'nightly');
    expect(readdirSync(dir).sort()).toEqual([`${first.id}.json`, `${first.id}.vda.qcow2`, `${first.id}.vdb.qcow2`]);
    const st = await daemon.cliJson(['status', guest.name]);
    expect(st.consumers.find((c: { name: string }) => c.name === 'nightly').last).toBe(first.generation);
    expect(st.openPasses).toEqual([]);
  });

  it('with room again, the next backup covers everything since the last good one', async () => {
    await execa('mount', ['-o', 'remount,size=64m', repo]);
    const r = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    expect(r.parent).toBe(first.id);
    expect(r.disks.find((d: { target: string }) => d.target === 'vdb').bytes).toBe(8 * MiB);
    const to = join(tempDir('restore'), 'vdb.qcow2');
    await restoreDisk(await Repository.open(repo), { domain: guest.name, disk: 'vdb', to });
    expect((await sameContent(guest.disks.scratch, 'qcow2', to, 'qcow2')).same).toBe(true);
  });
});
