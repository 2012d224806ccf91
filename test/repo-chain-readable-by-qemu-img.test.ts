// The repository needs nothing of virtcbt to be read: a chain of backups of a stopped domain
// (backed up through qemu-storage-daemon, changed offline with qemu-io in between, which the
// persistent bitmaps record) is a plain qcow2 backing chain that qemu-img checks, follows and
// converts to the disk's contents, also after the repository was moved elsewhere.
import { execa } from 'execa';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { backupJson, MiB, offlineWrite, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

let daemon: TestDaemon;
let guest: LibvirtGuest;
let repo: string;
const results: any[] = [];
/** Raw copies of the disks as the third backup saw them (a later case writes to the disk again). */
const atThird: { vda?: string; vdb?: string } = {};

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'chain', scratchFormat: 'qcow2', start: false });
  repo = tempDir('repo');
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  // One full, then incrementals of what changed offline.
  await offlineWrite(guest.disks.scratch, 0, 2 * MiB, 0x11);
  results.push(await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]));
  await offlineWrite(guest.disks.scratch, 1 * MiB, 64 * 1024, 0x22);
  await offlineWrite(guest.disks.scratch, 10 * MiB, 3 * MiB, 0x33);
  results.push(await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]));
  await offlineWrite(guest.disks.scratch, 11 * MiB, 1 * MiB, 0x44);
  results.push(await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]));
  const refs = tempDir('refs');
  for (const [t, img] of [['vda', guest.disks.data], ['vdb', guest.disks.scratch]] as const) {
    atThird[t] = join(refs, `${t}.raw`);
    await execa('qemu-img', ['convert', '-O', 'raw', img, atThird[t]!]);
  }
});

describe('a backup chain is a plain qcow2 chain', () => {
  it('backs up a stopped domain: one full, then incrementals of what changed offline', () => {
    expect(results.map((r) => r.kind)).toEqual(['full', 'incremental', 'incremental']);
    expect(results.every((r) => r.running === false)).toBe(true);
    const vdb = (r: any) => r.disks.find((d: { target: string }) => d.target === 'vdb');
    expect(vdb(results[1]).bytes).toBe(64 * 1024 + 3 * MiB);
    expect(vdb(results[2]).bytes).toBe(1 * MiB);
  });

  it('qemu-img follows the chain, checks every image and reads the disk as it is', async () => {
    const dir = join(repo, encodeURIComponent(guest.name), 'nightly');
    const top = join(dir, results[2].disks.find((d: { target: string }) => d.target === 'vdb').file);
    const info = JSON.parse((await execa('qemu-img', ['info', '--backing-chain', '--output=json', top])).stdout) as { filename: string; 'backing-filename'?: string }[];
    expect(info.map((i) => i.filename.split('/').pop())).toEqual(['nightly-0003.vdb.qcow2', 'nightly-0002.vdb.qcow2', 'nightly-0001.vdb.qcow2']);
    // Backing files are named relative to the chain's directory: the repository can move.
    expect(info.slice(0, 2).map((i) => i['backing-filename'])).toEqual(['nightly-0002.vdb.qcow2', 'nightly-0001.vdb.qcow2']);
    for (const i of info) expect((await execa('qemu-img', ['check', i.filename], { reject: false })).exitCode).toBe(0);
    expect((await sameContent(atThird.vdb!, 'raw', top, 'qcow2')).same).toBe(true);
    const vdaTop = join(dir, results[2].disks.find((d: { target: string }) => d.target === 'vda').file);
    expect((await sameContent(atThird.vda!, 'raw', vdaTop, 'qcow2')).same).toBe(true);

    const moved = join(tempDir('moved'), 'r');
    cpSync(repo, moved, { recursive: true });
    const movedTop = join(moved, encodeURIComponent(guest.name), 'nightly', 'nightly-0003.vdb.qcow2');
    const raw = join(tempDir('raw'), 'vdb.raw');
    await execa('qemu-img', ['convert', '-O', 'raw', movedTop, raw]);
    expect((await sameContent(atThird.vdb!, 'raw', raw, 'raw')).same).toBe(true);
  });

  it('a backup job from the config backs its domains up and prunes to its keep', async () => {
    const jobRepo = tempDir('jobrepo');
    const cfg = JSON.parse(readFileSync(daemon.configFile, 'utf8'));
    cfg.backup = { jobs: [{ name: 'nightly', domains: [guest.name], consumer: 'weekly', repo: jobRepo, keep: 2, calendar: 'daily' }] };
    const file = join(tempDir('cfg'), 'config.json');
    writeFileSync(file, JSON.stringify(cfg));
    await daemon.cli(['consumer', 'add', guest.name, 'weekly']);
    for (let i = 0; i < 3; i++) {
      await offlineWrite(guest.disks.scratch, 20 * MiB + i * MiB, 64 * 1024, 0x50 + i);
      const r = await execa('node', [CLI, '--config', file, 'backup', '--job', 'nightly'], { reject: false });
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toContain(`weekly-000${i + 1}: ${i === 0 ? 'full' : 'incremental'} backup`);
    }
    const list = await daemon.cliJson(['list', '--repo', jobRepo, guest.name]);
    expect(list.domains[0].backups.map((b: { id: string }) => b.id)).toEqual(['weekly-0002', 'weekly-0003']);
  });

  it('the manifests describe the chain', async () => {
    const list = await daemon.cliJson(['list', '--repo', repo, guest.name]);
    const [a, b, c] = list.domains[0].backups;
    expect([a.parent, b.parent, c.parent]).toEqual([null, 'nightly-0001', 'nightly-0002']);
    expect(c.disks.find((d: { target: string }) => d.target === 'vdb')).toMatchObject({ backing: 'nightly-0002.vdb.qcow2', extents: [[11 * MiB, 1 * MiB]] });
    expect(b.generation).toBeGreaterThan(a.generation);
    expect(c.since).toBe(b.generation);
    const human = await daemon.cli(['list', '--repo', repo, guest.name]);
    expect(human.stdout).toContain('nightly-0003');
  });
});
