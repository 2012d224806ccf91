// Disk-copy sync of a running domain's ext4 disk into a qcow2 target, several rounds: the guest
// writes files, deletes some, syncs; after each sync the *target image* (not virtcbt's numbers) is
// checked with e2fsck -fn and every file in it equals the guest's (debugfs rdump); bytes copied
// stay far below bytes modified when much was deleted. The agent's and the image's used maps of one
// frozen instant agree on ext4. A target that is not the copy virtcbt left is seeded again.
import { statSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, guestFile, tempDir } from './support/backup.js';
import { guestHashes as guestHashesOf, targetHashes as targetHashesOf } from './support/sync.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let dir: string;
let target: string;

beforeAll(async () => {
  dir = tempDir('sync');
  target = join(dir, 'replica.qcow2');
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'sync', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  await daemon.cli(['enable', guest.name]);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
  // The later cases' target, seeded here (the first case seeds one of its own).
  await sync();
});

async function sync(extra: string[] = [], to = target): Promise<any> {
  const r = await daemon.cli(['sync', guest.name, '--disk', 'vda', '--to', to, '--json', ...extra]);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  const last = lines.at(-1);
  expect(last.type).toBe('result');
  return last;
}

const guestHashes = () => guestHashesOf(agent);

const targetHashes = (_label: string, of = target) => targetHashesOf(of, dir);

describe('virtcbt sync of a running domain\'s ext4 disk', () => {
  it('seeds a new target with the used blocks only; the target is a clean copy', async () => {
    const fresh = join(dir, 'fresh.qcow2');
    const r = await sync([], fresh);
    expect(r.seed).toBe(true);
    expect(r.reason).toMatch(/not synced this disk to this target before/);
    // 256 MiB disk with a few files: far less than the disk is used.
    expect(r.copiedBytes).toBe(r.usedBytes);
    expect(r.usedBytes).toBeLessThan(r.usedMap.sizeBytes / 2);
    expect(r.usedMap.regions.every((g: any) => g.mapped)).toBe(true);
    expect(await targetHashes('seed', fresh)).toEqual(await guestHashes());
  });

  it('later rounds copy only what was modified and is still in use; deleted files are not shipped', async () => {
    for (let round = 1; round <= 3; round++) {
      // Kept: 6 MiB. Written and deleted before the sync: 40 MiB.
      await guestFile(agent, `keep-${round}.bin`, 6 * MiB);
      await guestFile(agent, `temp-${round}.bin`, 40 * MiB);
      const rm = await agent.exec('/bin/sh', ['-c', `rm /mnt/data/temp-${round}.bin && sync`], { timeoutMs: 60_000 });
      expect(rm.exitCode, rm.stderr).toBe(0);
      const r = await sync();
      expect(r.seed, r.reason).toBe(false);
      expect(r.modifiedBytes).toBeGreaterThan(40 * MiB);
      expect(r.skippedFreeBytes).toBeGreaterThan(35 * MiB);
      expect(r.copiedBytes).toBe(r.modifiedUsedBytes);
      expect(r.copiedBytes).toBeLessThan(r.modifiedBytes / 3);
      expect(r.copiedBytes).toBeGreaterThanOrEqual(6 * MiB);
      expect(await targetHashes(`round-${round}`)).toEqual(await guestHashes());
    }
  });

  it('a sync with nothing changed copies (almost) nothing', async () => {
    const r = await sync();
    expect(r.seed).toBe(false);
    expect(r.copiedBytes).toBeLessThan(1 * MiB);
  });

  it('a target written behind virtcbt\'s back is seeded again, and says why', async () => {
    const st = statSync(target);
    utimesSync(target, st.atime, new Date(st.mtimeMs + 5_000));
    const r = await sync();
    expect(r.seed).toBe(true);
    expect(r.reason).toMatch(/written since the last sync/);
    expect(await targetHashes('reseed')).toEqual(await guestHashes());
  });

  it('sync status says when each target was synced, how much was modified since, and that a changed target will be seeded', async () => {
    const own = join(dir, 'status.qcow2');
    await sync([], own);
    const entry = async () => {
      const r = await daemon.cliJson(['sync', 'status', guest.name]);
      return r.targets.find((t: any) => t.target === own);
    };
    const synced = await entry();
    expect(synced).toMatchObject({ domain: guest.name, disk: 'vda', configured: [], lastSync: expect.any(String) });
    expect(synced.targetChanged).toBeUndefined();
    expect(synced.modifiedSince.bytes).toBeLessThan(1 * MiB);
    // The guest writes 4 MiB; once folded, the target is that far behind.
    await guestFile(agent, 'status.bin', 4 * MiB);
    await daemon.cli(['reconcile', guest.name]);
    expect((await entry()).modifiedSince.bytes).toBeGreaterThanOrEqual(4 * MiB);
    // Written behind virtcbt's back: said, with what the next sync does about it.
    const st = statSync(own);
    utimesSync(own, st.atime, new Date(st.mtimeMs + 5_000));
    expect((await entry()).targetChanged).toMatch(/written since the last sync/);
    const text = (await daemon.cli(['sync', 'status'])).stdout;
    expect(text).toContain(`${guest.name} vda → ${own}: last synced `);
    expect(text).toMatch(/! the target file was written since the last sync .*: the next sync seeds it with every used block/);
    // The consumer behind it is named for what it is where consumers are listed.
    expect((await daemon.cli(['consumer', 'list', guest.name])).stdout).toContain(`${synced.consumer}\tgeneration `);
    expect((await daemon.cli(['consumer', 'list', guest.name])).stdout).toMatch(new RegExp(`${synced.consumer.replaceAll('.', '\\.')}\\t.*\\(a sync target: virtcbt sync status\\)`));
  });

  it('the agent\'s used map and the image\'s of the same frozen instant agree on ext4', async () => {
    const m = await daemon.cliJson(['usedmap', guest.name, '--disk', 'vda', '--map', 'agent']);
    expect(m.source).toBe('agent');
    expect(m.image.source).toBe('image');
    expect(m.used).toEqual(m.image.used);
    expect(m.agree).toBe(true);
  });
});
