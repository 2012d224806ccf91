// Generations restart when tracking is disabled and enabled again: a chain recorded under the
// change log before (or under none, by an older virtcbt) is never continued with the new log's
// generations. The case on a stopped libvirt domain (changed offline with qemu-io, which
// the persistent bitmaps record): back up `ce` into R, write W1, disable, enable, add `ce` again,
// back up into X, write W2, back up into R: that last backup is full, and R's newest point
// restores to the disk with W1 and W2.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { backupJson, MiB, offlineWrite, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let daemon: TestDaemon;
let guest: LibvirtGuest;

async function restoredEqualsDisk(repo: string, id: string): Promise<void> {
  const out = tempDir('restore');
  for (const [disk, image] of [['vda', guest.disks.data], ['vdb', guest.disks.scratch]] as const) {
    const to = join(out, `${disk}.qcow2`);
    await daemon.cli(['restore', '--repo', repo, guest.name, '--disk', disk, '--to', to, '--at', id]);
    const c = await sameContent(image, 'qcow2', to, 'qcow2');
    expect(c.same, `${id} ${disk}: ${c.detail}`).toBe(true);
  }
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'reen', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', guest.name]);
});

describe('a chain is never continued across two change logs', () => {
  it('after disable and enable, the next backup into the old repository is full and restores every write', async () => {
    const R = tempDir('repo-r');
    const X = tempDir('repo-x');
    await daemon.cli(['consumer', 'add', guest.name, 'ce']);
    const before = (await daemon.cliJson(['status', guest.name])).logId;
    expect(before).toMatch(UUID);

    const r1 = await backupJson(daemon, [guest.name, '--consumer', 'ce', '--repo', R]);
    expect(r1.kind).toBe('full');
    expect(r1.logId).toBe(before);
    await offlineWrite(guest.disks.scratch, 4 * MiB, 1 * MiB, 0x11); // W1

    await daemon.cli(['disable', guest.name]);
    await daemon.cli(['enable', guest.name]);
    await daemon.cli(['consumer', 'add', guest.name, 'ce']);
    const after = (await daemon.cliJson(['status', guest.name])).logId;
    expect(after).toMatch(UUID);
    expect(after).not.toBe(before);
    expect((await daemon.cli(['status', guest.name])).stdout).toContain(`change log ${after.slice(0, 8)}`);
    const changes = await daemon.cliJson(['changes', guest.name, '--consumer', 'ce']);
    expect(changes.logId).toBe(after);

    const x1 = await backupJson(daemon, [guest.name, '--consumer', 'ce', '--repo', X]);
    expect(x1.kind).toBe('full');
    await offlineWrite(guest.disks.scratch, 12 * MiB, 1 * MiB, 0x22); // W2

    const r2 = await backupJson(daemon, [guest.name, '--consumer', 'ce', '--repo', R]);
    // The data first: an overlay on R's old chain would hold W2 but read W1's range from before W1.
    await restoredEqualsDisk(R, r2.id);
    expect(r2.logId).toBe(after);
    expect(r2.kind).toBe('full');
    expect(r2.parent).toBeNull();
    for (const d of r2.disks) {
      expect(d.full).toBe(true);
      expect(d.reason).toBe(`the previous backup ${r1.id} was taken under another change log of ${guest.name} (tracking was disabled and re-enabled since)`);
    }
    expect(r2.notes).toContain(`the previous backup ${r1.id} was taken under another change log of ${guest.name} (tracking was disabled and re-enabled since): full backup`);
    const manifest = JSON.parse(readFileSync(r2.manifest, 'utf8'));
    expect(manifest.logId).toBe(after);

    expect((await daemon.cliJson(['verify', '--repo', R, guest.name])).ok).toBe(true);

    // Under the same change log the chain goes on as before.
    await offlineWrite(guest.disks.scratch, 20 * MiB, 64 * 1024, 0x33);
    const r3 = await backupJson(daemon, [guest.name, '--consumer', 'ce', '--repo', R]);
    expect(r3.kind).toBe('incremental');
    expect(r3.parent).toBe(r2.id);
    expect(r3.disks.find((d: { target: string }) => d.target === 'vdb').bytes).toBe(64 * 1024);
    await restoredEqualsDisk(R, r3.id);
  });

  it('a chain whose newest manifest records no change log (an older virtcbt wrote it) starts over with a full backup', async () => {
    const repo = tempDir('repo-old');
    await daemon.cli(['consumer', 'add', guest.name, 'old']);
    const first = await backupJson(daemon, [guest.name, '--consumer', 'old', '--repo', repo]);
    const m = JSON.parse(readFileSync(first.manifest, 'utf8'));
    delete m.logId;
    writeFileSync(first.manifest, JSON.stringify(m, null, 2));
    await offlineWrite(guest.disks.scratch, 30 * MiB, 64 * 1024, 0x44);

    const next = await backupJson(daemon, [guest.name, '--consumer', 'old', '--repo', repo]);
    expect(next.kind).toBe('full');
    for (const d of next.disks) expect(d.reason).toMatch(new RegExp(`previous backup ${first.id} does not say which change log .* older virtcbt`));
    await restoredEqualsDisk(repo, next.id);
  });
});
