// A --repo that cannot be used says which path and what to do, never a bare errno: a regular
// file (or a path under one), a read-only file system (where Node's own mkdir says ENOENT), a
// path that does not exist; and nothing is created on the way.
import { execa } from 'execa';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Repository } from '../src/repo/index.js';
import { tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'repopath', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
});

const backup = (repo: string) => daemon.cli(['backup', guest.name, '--consumer', 'nightly', '--repo', repo], { reject: false });

/** A read-only tmpfs holding what `fill` put there while it was writable. */
async function readOnlyFs(fill: (dir: string) => Promise<void> | void): Promise<string> {
  const dir = tempDir('rofs');
  onCleanup(() => execa('umount', [dir], { reject: false }));
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', dir]);
  await fill(dir);
  await execa('mount', ['-o', 'remount,ro', dir]);
  return dir;
}

describe('--repo errors name the path and the next step', () => {
  it('a regular file, or a path under one, is "not a directory"', async () => {
    const file = join(tempDir('repofile'), 'backups');
    writeFileSync(file, 'not a repository\n');
    for (const repo of [file, join(file, 'sub')]) {
      const r = await backup(repo);
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toContain(`${file} is a regular file, not a directory`);
      expect(r.stderr).toMatch(/Pass a directory to --repo/);
      expect(r.stderr).not.toMatch(/EEXIST|ENOTDIR/);
    }
    const list = await daemon.cli(['list', '--repo', file], { reject: false });
    expect(list.exitCode).toBe(2);
    expect(list.stderr).toContain(`backup repository ${file} is a regular file, not a directory`);
  });

  it('a read-only file system says so, for a new repository and for an existing one', async () => {
    const ro = await readOnlyFs((d) => { mkdirSync(join(d, 'existing')); });
    const fresh = join(ro, 'new', 'repo');
    const r = await backup(fresh);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toContain(`${join(ro, 'new')} is on a read-only file system`);
    expect(r.stderr).toMatch(/Mount it read-write, or choose another --repo/);
    expect(r.stderr).not.toMatch(/ENOENT|EROFS/);
    await expect(Repository.open(fresh, { create: true })).rejects.toThrow(/cannot create the backup repository .* is on a read-only file system/);

    const existing = await backup(join(ro, 'existing'));
    expect(existing.exitCode).not.toBe(0);
    expect(existing.stderr).toMatch(new RegExp(`${join(ro, 'existing')}/[^ ]+ is on a read-only file system`));
    expect(existing.stderr).not.toMatch(/ENOENT|EROFS/);
  });

  it('a repository that does not exist is named, and list creates nothing', async () => {
    const missing = join(tempDir('missing'), 'nowhere', 'repo');
    const list = await daemon.cli(['list', '--repo', missing], { reject: false });
    expect(list.exitCode).toBe(2);
    expect(list.stderr).toContain(`backup repository ${missing} does not exist`);
    expect(existsSync(join(missing, '..'))).toBe(false);
  });
});
