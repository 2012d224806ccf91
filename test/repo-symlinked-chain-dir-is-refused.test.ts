// Nothing inside a repository is followed through a symlink: a consumer's or a domain's directory
// that is a link (say, to a directory of live VM images) is refused by backup and prune with an
// error naming it, reported by list and verify, and nothing in its target is read, changed or
// removed; links inside a chain directory are neither followed nor taken for leftovers.
import { execa } from 'execa';
import { lstatSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { MiB, tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';
import { expectUntouched, handmadeRepo, snapshotTree } from './support/handmade-repo.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'linkdir', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
});

/** A directory of "live VM images" beside the repository. */
async function liveImages(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  for (const f of ['web.qcow2', 'db.qcow2', 'nightly-0001.vda.qcow2']) await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, f), String(MiB)]);
  writeFileSync(join(dir, '.tmp-keep'), 'x');
}

async function expectRefusedEverywhere(repo: string, linked: string, sandbox: string): Promise<void> {
  const before = snapshotTree(sandbox);
  const backup = await daemon.cli(['backup', guest.name, '--consumer', 'nightly', '--repo', repo], { reject: false });
  expect(backup.exitCode).not.toBe(0);
  expect(backup.stderr).toContain(`${linked} in the backup repository is a symlink, not a directory`);
  const prune = await daemon.cli(['prune', guest.name, '--consumer', 'nightly', '--keep', '1', '--repo', repo], { reject: false });
  expect(prune.exitCode).not.toBe(0);
  expect(prune.stderr).toContain(`${linked} in the backup repository is a symlink`);
  const list = await daemon.cli(['list', '--repo', repo, '--json'], { reject: false });
  expect(list.exitCode, list.stderr).toBe(0);
  expect(JSON.parse(list.stdout).domains[0].problems.map((p: { path: string }) => p.path)).toEqual([linked]);
  const verify = await daemon.cli(['verify', '--repo', repo], { reject: false });
  expect(verify.exitCode).toBe(1);
  expect(verify.stdout).toContain(linked);
  expectUntouched(sandbox, before);
}

describe('links inside a repository are never followed', () => {
  it('a consumer directory that is a symlink is refused and its target left as it was', async () => {
    const base = tempDir('linkdir');
    const sandbox = join(base, 'live');
    await liveImages(sandbox);
    const repo = join(base, 'repo');
    const domainDir = join(repo, encodeURIComponent(guest.name));
    mkdirSync(domainDir, { recursive: true });
    symlinkSync(sandbox, join(domainDir, 'nightly'));
    await expectRefusedEverywhere(repo, join(domainDir, 'nightly'), sandbox);
    expect(lstatSync(join(domainDir, 'nightly')).isSymbolicLink()).toBe(true);
  });

  it('a domain directory that is a symlink is refused and its target left as it was', async () => {
    const base = tempDir('linkdom');
    const sandbox = join(base, 'live');
    await liveImages(join(sandbox, 'nightly'));
    const repo = join(base, 'repo');
    mkdirSync(repo);
    const domainDir = join(repo, encodeURIComponent(guest.name));
    symlinkSync(sandbox, domainDir);
    await expectRefusedEverywhere(repo, domainDir, sandbox);
  });

  it('a link inside a chain, named like a leftover image or a manifest, is neither followed nor removed', async () => {
    const r = await handmadeRepo({ sandbox: true });
    const dir = r.dirs.nightly!;
    symlinkSync(join(r.sandbox, 'live.qcow2'), join(dir, 'nightly-0009.vda.qcow2'));
    symlinkSync(join(r.sandbox, 'victim.json'), join(dir, 'nightly-0004.json'));
    const before = snapshotTree(r.sandbox);
    const left = await r.repo.cleanupLeftovers('vm1', 'nightly');
    expect(left.removed).toEqual([]);
    expect(left.damaged.map((d) => d.problem).join('\n')).toMatch(/nightly-0004\.json is unreadable: it is a symlink/);
    expect(lstatSync(join(dir, 'nightly-0009.vda.qcow2')).isSymbolicLink()).toBe(true);
    expect(left.chain.map((m) => m.id)).toEqual(['nightly-0001', 'nightly-0002', 'nightly-0003']);
    expectUntouched(r.sandbox, before);
  });

  it('an image a manifest names that is a symlink is refused by verify, restore and prune, naming it', async () => {
    const r = await handmadeRepo({ sandbox: true });
    const image = join(r.dirs.nightly!, 'nightly-0001.vda.qcow2');
    await execa('mv', [image, join(r.sandbox, 'moved.qcow2')]);
    symlinkSync(join(r.sandbox, 'moved.qcow2'), image);
    const verify = await daemon.cli(['verify', '--repo', r.root, 'vm1'], { reject: false });
    expect(verify.exitCode).toBe(1);
    expect(verify.stdout).toContain(`nightly-0001 vda: FAILED: image ${image} is a symlink, not a regular file`);
    const restore = await daemon.cli(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--at', 'nightly-0001', '--to', join(tempDir('restore'), 'x.qcow2')], { reject: false });
    expect(restore.exitCode).not.toBe(0);
    expect(restore.stderr).toContain(`image ${image} is a symlink, not a regular file`);
    // Prune would commit the newer points into that base: refused before anything changes.
    const before = snapshotTree(r.sandbox);
    const chainBefore = snapshotTree(r.dirs.nightly!);
    const prune = await daemon.cli(['prune', '--repo', r.root, 'vm1', '--consumer', 'nightly', '--keep', '1'], { reject: false });
    expect(prune.exitCode).not.toBe(0);
    expect(prune.stderr).toContain(`image ${image} is a symlink, not a regular file`);
    expectUntouched(r.sandbox, before);
    expect(snapshotTree(r.dirs.nightly!)).toEqual(chainBefore);
  });

  it('the repository root may be a symlink the admin chose: it is resolved once', async () => {
    const r = await handmadeRepo({ sandbox: true });
    const alias = join(tempDir('alias'), 'backups');
    symlinkSync(r.root, alias);
    const list = await daemon.cli(['list', '--repo', alias, 'vm1', '--json']);
    const doc = JSON.parse(list.stdout);
    expect(doc.repo).toBe(r.root);
    expect(doc.domains[0].backups.map((m: { id: string }) => m.id)).toEqual(['nightly-0001', 'nightly-0002', 'nightly-0003']);
  });
});
