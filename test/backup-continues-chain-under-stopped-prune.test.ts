// A prune that stopped after rebasing the child of the point it merges (header before manifest) is not damage: the
// next backup checks the chain as restore does, with the prune's journal, and continues it incrementally instead of
// copying the disks whole; the prune then finishes, and the new point restores to the disk. A stopped libvirt domain,
// changed offline with qemu-io (the persistent bitmaps record it).
import { execa } from 'execa';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Repository, pruneChain, type PruneStep } from '../src/repo/index.js';
import { backupJson, MiB, offlineWrite, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let nextWrite = 0;

/** Writes a pattern into the stopped domain's scratch image, as the guest would (a new place each time). */
function offlineWriteNext(): Promise<void> {
  const at = (nextWrite++ % 60) * MiB;
  return offlineWrite(guest.disks.scratch, at, 256 * 1024, 0x30 + (nextWrite % 200));
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'prunebk', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', guest.name]);
});

describe('a backup onto a chain a stopped prune is rebasing', () => {
  it('continues the chain (the journal explains the header), and the prune then finishes', async () => {
    const repo = tempDir('repo');
    const c = 'pb';
    await daemon.cli(['consumer', 'add', guest.name, c]);
    for (let i = 0; i < 4; i++) {
      await offlineWriteNext();
      await backupJson(daemon, [guest.name, '--consumer', c, '--repo', repo]);
    }
    const rp = await Repository.open(repo);
    // Keep 2: c-0001..c-0003 merge into c-0003's image; c-0004's images are rebased onto it, then the prune fails.
    const fault = (s: PruneStep) => { if (s === 'rebase') throw new Error('injected failure after rebase'); };
    await expect(pruneChain(rp, guest.name, c, 2, { fault })).rejects.toThrow(/injected failure after rebase/);
    const dir = rp.chainDir(guest.name, c);
    const headerBacking = async (file: string) => JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', join(dir, file)])).stdout)['backing-filename'];
    // The rebase reached a header its manifest does not say yet.
    expect(await headerBacking(`${c}-0004.vda.qcow2`)).toBe(`${c}-0003.vda.merged.qcow2`);

    await offlineWriteNext();
    const r = await backupJson(daemon, [guest.name, '--consumer', c, '--repo', repo]);
    expect(r.notes.filter((n: string) => /damaged/.test(n)), r.notes.join('; ')).toEqual([]);
    for (const d of r.disks) {
      expect(d.full, `${d.target}: ${d.reason}`).toBe(false);
      expect(d.backing).toBe(`${c}-0004.${d.target}.qcow2`);
    }

    const done = await pruneChain(rp, guest.name, c, 2);
    expect(done.resumed).toBe(true);
    const out = tempDir('restore');
    for (const [disk, image] of [['vda', guest.disks.data], ['vdb', guest.disks.scratch]] as const) {
      const to = join(out, `${disk}.qcow2`);
      await daemon.cli(['restore', '--repo', repo, guest.name, '--disk', disk, '--to', to, '--at', r.id]);
      const same = await sameContent(image, 'qcow2', to, 'qcow2');
      expect(same.same, `${r.id} ${disk}: ${same.detail}`).toBe(true);
    }
  });
});
