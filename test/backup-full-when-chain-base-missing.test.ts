// A consumer moves only onto a restore point whose whole chain restores. When an image under the
// newest point is missing, truncated, garbage, a symlink, backed by another file than its
// manifest says or keeps its data in an external file, the next backup copies that disk whole
// (the plan's reason and the result's notes say why), the consumer moves, and the new point
// restores to the disk. A stopped libvirt domain,
// changed offline with qemu-io (the persistent bitmaps record it).
import { execa } from 'execa';
import { copyFileSync, openSync, closeSync, writeSync, rmSync, symlinkSync, truncateSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
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
  return offlineWrite(guest.disks.scratch, at, 256 * 1024, 0x10 + (nextWrite % 200));
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'dmg', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', guest.name]);
});

interface Case {
  name: string;
  /** Damages the chain of vdb under the newest point c-0003 (dir = the chain's directory). */
  damage(dir: string, c: string): void | Promise<void>;
  /** What the reason says is wrong. */
  why(c: string): RegExp;
}

const cases: Case[] = [
  {
    name: 'the base image is missing',
    damage: (dir, c) => rmSync(join(dir, `${c}-0001.vdb.qcow2`)),
    why: (c) => new RegExp(`^${c}-0001\\.vdb\\.qcow2 is missing$`),
  },
  {
    name: 'the newest image is truncated inside its header',
    damage: (dir, c) => truncateSync(join(dir, `${c}-0003.vdb.qcow2`), 50),
    why: (c) => new RegExp(`^${c}-0003\\.vdb\\.qcow2 has a truncated qcow2 header`),
  },
  {
    name: 'a middle image\'s header is garbage',
    damage: (dir, c) => {
      const fd = openSync(join(dir, `${c}-0002.vdb.qcow2`), 'r+');
      try { writeSync(fd, randomBytes(512), 0, 512, 0); } finally { closeSync(fd); }
    },
    why: (c) => new RegExp(`^${c}-0002\\.vdb\\.qcow2 has no qcow2 magic`),
  },
  {
    name: 'the base image is a symlink (to an intact copy)',
    damage: (dir, c) => {
      const copy = join(tempDir('elsewhere'), 'base.qcow2');
      copyFileSync(join(dir, `${c}-0001.vdb.qcow2`), copy);
      rmSync(join(dir, `${c}-0001.vdb.qcow2`));
      symlinkSync(copy, join(dir, `${c}-0001.vdb.qcow2`));
    },
    why: (c) => new RegExp(`^${c}-0001\\.vdb\\.qcow2 is a symlink, not a regular file$`),
  },
  {
    name: 'a header names another backing file than the manifest',
    damage: async (dir, c) => {
      await execa('qemu-img', ['rebase', '-u', '-b', `${c}-0001.vda.qcow2`, '-F', 'qcow2', `${c}-0002.vdb.qcow2`], { cwd: dir });
    },
    why: (c) => new RegExp(`^${c}-0002\\.vdb\\.qcow2 is backed by "${c}-0001\\.vda\\.qcow2" in its header, by "${c}-0001\\.vdb\\.qcow2" in its manifest$`),
  },
  {
    name: 'a middle image keeps its data in an external file',
    damage: async (dir, c) => {
      const data = join(tempDir('elsewhere'), 'data.raw');
      rmSync(join(dir, `${c}-0002.vdb.qcow2`));
      await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${data}`, '-b', `${c}-0001.vdb.qcow2`, '-F', 'qcow2', `${c}-0002.vdb.qcow2`], { cwd: dir });
    },
    why: (c) => new RegExp(`^${c}-0002\\.vdb\\.qcow2 keeps its data in an external file \\(".*data\\.raw"\\)`),
  },
];

describe('a damaged chain is not continued', () => {
  it.each(cases.map((k, i) => ({ ...k, consumer: `c${i}` })))('$name: the disk is backed up whole, the consumer moves, the point restores', async (k) => {
    const repo = tempDir('repo');
    const c = k.consumer;
    await daemon.cli(['consumer', 'add', guest.name, c]);
    const chain = [];
    for (let i = 0; i < 3; i++) {
      await offlineWriteNext();
      chain.push(await backupJson(daemon, [guest.name, '--consumer', c, '--repo', repo]));
    }
    expect(chain.map((r) => r.kind)).toEqual(['full', 'incremental', 'incremental']);
    const dir = chain[2].chainDir as string;
    await k.damage(dir, c);
    await offlineWriteNext();

    const r = await backupJson(daemon, [guest.name, '--consumer', c, '--repo', repo]);
    const vdb = r.disks.find((d: { target: string }) => d.target === 'vdb');
    const vda = r.disks.find((d: { target: string }) => d.target === 'vda');
    expect(vdb.full).toBe(true);
    expect(vdb.backing).toBeNull();
    const m = new RegExp(`^the chain under ${c}-0003 is damaged \\((.*)\\)$`).exec(vdb.reason);
    expect(m, vdb.reason).not.toBeNull();
    expect(m![1]).toMatch(k.why(c));
    expect(r.notes).toContain(`${vdb.reason}: full backup`);
    // vda's chain is intact: it goes on.
    expect(vda.full).toBe(false);
    expect(vda.backing).toBe(`${c}-0003.vda.qcow2`);
    // The full image replaced any overlay made early for vdb.
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', join(dir, vdb.file)])).stdout);
    expect(info['backing-filename']).toBeUndefined();

    const st = await daemon.cliJson(['status', guest.name]);
    expect(st.consumers.find((x: { name: string }) => x.name === c).last).toBe(r.generation);
    const out = tempDir('restore');
    // Restores only read the repository: both disks side by side.
    await Promise.all(([['vda', guest.disks.data], ['vdb', guest.disks.scratch]] as const).map(async ([disk, image]) => {
      const to = join(out, `${disk}.qcow2`);
      await daemon.cli(['restore', '--repo', repo, guest.name, '--disk', disk, '--to', to, '--at', r.id]);
      const same = await sameContent(image, 'qcow2', to, 'qcow2');
      expect(same.same, `${r.id} ${disk}: ${same.detail}`).toBe(true);
    }));

    // Onto the whole point it made, the chain goes on.
    await offlineWriteNext();
    const next = await backupJson(daemon, [guest.name, '--consumer', c, '--repo', repo]);
    expect(next.disks.every((d: { full: boolean }) => !d.full)).toBe(true);
    expect(next.notes.filter((n: string) => /damaged/.test(n))).toEqual([]);
  });
});
