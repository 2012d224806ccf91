// A symlink at the name of the next backup's image (e.g. to a live VM image outside the
// repository) is never written through: images are created exclusively without following links,
// also when a manifest names that file; the backup fails naming the link and changes nothing
// outside the repository, and goes on once the link is gone.
import { execa } from 'execa';
import { existsSync, lstatSync, readFileSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { MiB, backupJson, expectImageUnlocked, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';
import { expectUntouched, snapshotTree } from './support/handmade-repo.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'symlink', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', guest.name]);
});

/** A repository, a sandbox beside it holding "live" images, and a consumer of its own. */
async function setup(consumer: string) {
  const base = tempDir('nofollow');
  const repo = join(base, 'repo');
  const sandbox = join(base, 'sandbox');
  await execa('mkdir', ['-p', sandbox]);
  for (const t of ['vda', 'vdb']) await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(sandbox, `live-${t}.qcow2`), String(64 * MiB)]);
  await daemon.cli(['consumer', 'add', guest.name, consumer]);
  const chain = join(repo, encodeURIComponent(guest.name), consumer);
  const backup = (o: { reject?: boolean } = {}) => o.reject === false
    ? daemon.cli(['backup', guest.name, '--consumer', consumer, '--repo', repo], { reject: false })
    : backupJson(daemon, [guest.name, '--consumer', consumer, '--repo', repo]);
  return { repo, sandbox, chain, backup };
}

function linkImages(chain: string, sandbox: string, id: string): string[] {
  return ['vda', 'vdb'].map((t) => {
    const p = join(chain, `${id}.${t}.qcow2`);
    symlinkSync(join(sandbox, `live-${t}.qcow2`), p);
    return p;
  });
}

describe('a backup never writes through a symlink', () => {
  it('a manifest naming the next image, a symlink out of the repository: refused, nothing written there', async () => {
    const { sandbox, chain, backup } = await setup('named');
    const first = await backup();
    expect(first.id).toBe('named-0001');
    // The manifest is edited to name the next point's image, so no clean-up would remove it.
    const mf = join(chain, 'named-0001.json');
    const original = readFileSync(mf, 'utf8');
    const m = JSON.parse(original);
    m.disks[1].file = 'named-0002.vdb.qcow2';
    writeFileSync(mf, JSON.stringify(m));
    const links = linkImages(chain, sandbox, 'named-0002');
    const before = snapshotTree(sandbox);
    await expectImageUnlocked(guest.disks.scratch);
    const r = await backup({ reject: false });
    expect(r.exitCode, r.stdout).not.toBe(0);
    expect(r.stderr).toMatch(/named-0002\.vd[ab]\.qcow2.*symlink/);
    expectUntouched(sandbox, before);
    for (const l of links) expect(lstatSync(l).isSymbolicLink()).toBe(true);

    // The admin removes the links and mends the manifest: the chain goes on.
    for (const l of links) unlinkSync(l);
    writeFileSync(mf, original);
    const next = await backup();
    expect(next.id).toBe('named-0002');
    expect(lstatSync(join(chain, 'named-0002.vdb.qcow2')).isFile()).toBe(true);
    expectUntouched(sandbox, before);
  });

  it('a symlink at the next image\'s name that no manifest names is left alone and not written through', async () => {
    const { sandbox, chain, backup } = await setup('unnamed');
    expect((await backup()).id).toBe('unnamed-0001');
    const links = linkImages(chain, sandbox, 'unnamed-0002');
    const before = snapshotTree(sandbox);
    await expectImageUnlocked(guest.disks.scratch);
    const r = await backup({ reject: false });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/unnamed-0002\.vd[ab]\.qcow2.*symlink.*remove it/);
    for (const l of links) expect(existsSync(l) && lstatSync(l).isSymbolicLink()).toBe(true);
    expectUntouched(sandbox, before);
  });
});
