// Prune keeps the newest N restore points, merging the older increments into the base; killed
// (SIGKILL) after any of its steps, it leaves a chain that verifies and restores the kept points
// exactly, and the next prune finishes the job.
import { execa } from 'execa';
import { cpSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { PRUNE_STEPS, Repository, restoreDisk, verifyRepo } from '../src/repo/index.js';
import { MiB, backupJson, expectImageUnlocked, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

let daemon: TestDaemon;
let guest: LibvirtGuest;
let repo: string;
let refDir: string;
/** Restore point id → raw copy of vdb at that point. */
const refs = new Map<string, string>();

async function offlineWrite(offset: number, length: number, pattern: number): Promise<void> {
  await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} ${offset} ${length}`, guest.disks.scratch]);
}

async function backup(extra: string[] = []): Promise<string> {
  const r = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo, ...extra]);
  const ref = join(refDir, `${r.id}.raw`);
  await expectImageUnlocked(guest.disks.scratch);
  await execa('qemu-img', ['convert', '-O', 'raw', guest.disks.scratch, ref]);
  refs.set(r.id, ref);
  return r.id;
}

function cli(args: string[], env: Record<string, string> = {}) {
  return execa('node', [CLI, '--config', daemon.configFile, ...args], { reject: false, env: { ...process.env, ...env } });
}

/**
 * Lists, verifies and restores in-process (the CLI is exercised by the prune runs themselves). The
 * verify and the restores only read the repository: they run side by side (each restore mostly
 * waits for its qemu-nbd).
 */
async function expectKeptPointsExact(r: string, ids: string[]): Promise<void> {
  const repo = await Repository.open(r);
  expect((await repo.list(guest.name)).map((m) => m.id)).toEqual(ids);
  const out = tempDir('restore');
  const [v, ...same] = await Promise.all([
    verifyRepo(repo, guest.name),
    ...ids.map(async (id) => {
      const to = join(out, `${id}.qcow2`);
      await restoreDisk(repo, { domain: guest.name, disk: 'vdb', to, at: id });
      return (await sameContent(refs.get(id)!, 'raw', to, 'qcow2')).same;
    }),
  ]);
  expect(v.ok, JSON.stringify(v.disks.filter((d) => !d.ok))).toBe(true);
  for (const [i, id] of ids.entries()) expect(same[i], id).toBe(true);
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'prune', scratchFormat: 'qcow2', start: false });
  repo = tempDir('repo');
  refDir = tempDir('refs');
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  // nightly-0001 full, -0002..-0005 incrementals (overwriting each other in part), -0006 a new full, -0007 on it.
  await offlineWrite(0, 4 * MiB, 1);
  await backup();
  for (let i = 2; i <= 5; i++) {
    await offlineWrite(i * MiB, 2 * MiB, i);
    await offlineWrite((10 + i) * MiB, 64 * 1024, i);
    await backup();
  }
  await offlineWrite(30 * MiB, 1 * MiB, 6);
  await backup(['--full']);
  await offlineWrite(31 * MiB, 1 * MiB, 7);
  await backup();
});

describe('prune', () => {
  it.each(PRUNE_STEPS)('killed after step %s: the chain stays valid and the next prune finishes', async (step) => {
    const copy = join(tempDir(`prune-${step}`), 'repo');
    cpSync(repo, copy, { recursive: true });
    const killed = await cli(['prune', '--repo', copy, guest.name, '--consumer', 'nightly', '--keep', '4'], { VIRTCBT_FAULT_PRUNE_STEP: step });
    expect(killed.signal, `${killed.stdout}${killed.stderr}`).toBe('SIGKILL');
    await expectKeptPointsExact(copy, ['nightly-0004', 'nightly-0005', 'nightly-0006', 'nightly-0007']);
    const done = await cli(['prune', '--repo', copy, guest.name, '--consumer', 'nightly', '--keep', '4', '--json']);
    expect(done.exitCode, done.stderr).toBe(0);
    expect(JSON.parse(done.stdout)).toMatchObject({ resumed: true, kept: ['nightly-0004', 'nightly-0005', 'nightly-0006', 'nightly-0007'] });
    await expectKeptPointsExact(copy, ['nightly-0004', 'nightly-0005', 'nightly-0006', 'nightly-0007']);
  });

  it('merges the oldest increments into the base, then drops whole old chains', async () => {
    // A copy: the repository the daemon backs up into stays as beforeAll left it for the next case.
    const copy = join(tempDir('prune-whole'), 'repo');
    cpSync(repo, copy, { recursive: true });
    const r1 = JSON.parse((await cli(['prune', '--repo', copy, guest.name, '--consumer', 'nightly', '--keep', '4', '--json'])).stdout);
    expect(r1).toMatchObject({ removed: ['nightly-0001', 'nightly-0002', 'nightly-0003'], mergedInto: 'nightly-0004', resumed: false });
    await expectKeptPointsExact(copy, ['nightly-0004', 'nightly-0005', 'nightly-0006', 'nightly-0007']);
    const dir = join(copy, encodeURIComponent(guest.name), 'nightly');
    const m4 = (await (await Repository.open(copy)).list(guest.name))[0];
    expect(m4).toMatchObject({ id: 'nightly-0004', parent: null, merged: ['nightly-0001', 'nightly-0002', 'nightly-0003'] });

    const r2 = JSON.parse((await cli(['prune', '--repo', copy, guest.name, '--consumer', 'nightly', '--keep', '2', '--json'])).stdout);
    expect(r2).toMatchObject({ removed: ['nightly-0004', 'nightly-0005'], mergedInto: null });
    await expectKeptPointsExact(copy, ['nightly-0006', 'nightly-0007']);
    // Nothing left behind but the kept points' images and manifests.
    expect(readdirSync(dir).filter((f) => !f.startsWith('.')).sort()).toEqual([
      'nightly-0006.json', 'nightly-0006.vda.qcow2', 'nightly-0006.vdb.qcow2', 'nightly-0007.json', 'nightly-0007.vda.qcow2', 'nightly-0007.vdb.qcow2',
    ]);
  });

  it('backups go on after a prune: the next incremental builds on the merged chain', async () => {
    const pruned = await cli(['prune', '--repo', repo, guest.name, '--consumer', 'nightly', '--keep', '2', '--json']);
    expect(JSON.parse(pruned.stdout)).toMatchObject({ kept: ['nightly-0006', 'nightly-0007'] });
    await offlineWrite(40 * MiB, 1 * MiB, 8);
    const id = await backup();
    expect(id).toBe('nightly-0008');
    await expectKeptPointsExact(repo, ['nightly-0006', 'nightly-0007', 'nightly-0008']);
  });
});
