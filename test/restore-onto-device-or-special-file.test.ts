// restore --force writes a block device (an LV, here a loop device) in place, raw, and refuses a
// device smaller than the disk or a qcow2 onto it; it never renames over anything that is not a
// regular file: a character device (the /dev/null case), a directory, a symlink, a FIFO or a
// socket is refused with an error naming it, and nothing is changed.
import { execa } from 'execa';
import { lstatSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { UsageError } from '../src/util/errors.js';
import { restoreDisk } from '../src/repo/index.js';
import { MiB, tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { handmadeRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

/**
 * A loop device over a file of `size` bytes filled with 0xAA (detached at teardown), reached
 * through a device node of its own in a temp directory, as an LV is: a restore that went wrong
 * would replace that node, not the host's /dev/loopN.
 */
async function loopDevice(size: number): Promise<{ dev: string; backing: string }> {
  const dir = tempDir('loop');
  const backing = join(dir, 'lv.img');
  writeFileSync(backing, Buffer.alloc(size, 0xaa));
  const loop = (await execa('losetup', ['--find', '--show', backing])).stdout.trim();
  onCleanup(() => execa('losetup', ['-d', loop], { reject: false }));
  const [major, minor] = (await execa('stat', ['-c', '%t %T', loop])).stdout.trim().split(' ').map((x) => String(parseInt(x, 16)));
  const dev = join(dir, 'lv');
  await execa('mknod', [dev, 'b', major!, minor!]);
  return { dev, backing };
}

async function deviceBytes(dev: string, length: number): Promise<Buffer> {
  const r = await execa('dd', [`if=${dev}`, 'bs=1M', `count=${length / MiB}`, 'iflag=direct', 'status=none'], { encoding: 'buffer' });
  return Buffer.from(r.stdout);
}

async function refused(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(() => undefined, (e: Error) => e);
  expect(err, 'the restore was not refused').toBeInstanceOf(UsageError);
  return err!;
}

describe('restore onto a block device', () => {
  it('writes the disk in place (raw), leaves the device a device and the bytes past the disk alone', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 2 }, sizeBytes: 16 * MiB, refs: true });
    const { dev } = await loopDevice(24 * MiB);
    const r = await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: dev, format: 'raw', force: true });
    expect(lstatSync(dev).isBlockDevice(), 'the device node was replaced').toBe(true);
    const bytes = await deviceBytes(dev, 24 * MiB);
    expect(bytes.subarray(0, 16 * MiB).equals(readFileSync(h.points[1]!.refs.vda!)), 'the device does not hold the restored disk').toBe(true);
    expect(bytes.subarray(16 * MiB).every((b) => b === 0xaa)).toBe(true);
    expect(r.target).toBe('device');
  });

  it('through a symlink to the device (as /dev/VG/LV is)', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 }, sizeBytes: 16 * MiB, refs: true });
    const { dev } = await loopDevice(16 * MiB);
    const link = join(tempDir('lvlink'), 'lv');
    symlinkSync(dev, link);
    await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: link, format: 'raw', force: true });
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect((await deviceBytes(dev, 16 * MiB)).equals(readFileSync(h.points[0]!.refs.vda!))).toBe(true);
  });

  it('refuses a device smaller than the disk, qcow2 onto a device, and a device without --force; nothing is written', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 }, sizeBytes: 16 * MiB });
    const { dev } = await loopDevice(8 * MiB);
    expect((await refused(restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: dev, format: 'raw', force: true }))).message).toMatch(/smaller/);
    expect((await refused(restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: dev, format: 'qcow2', force: true }))).message).toContain(dev);
    expect((await refused(restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: dev, format: 'raw' }))).message).toContain(dev);
    expect((await deviceBytes(dev, 8 * MiB)).every((b) => b === 0xaa)).toBe(true);
  });
});

describe('restore --force never renames over what is not a regular file', () => {
  it('a character device (what /dev/null is) stays a character device', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 } });
    const node = join(tempDir('chr'), 'null');
    await execa('mknod', [node, 'c', '1', '3']);
    const err = await refused(restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: node, format: 'raw', force: true }));
    expect(err.message).toContain(node);
    expect(err.message).toContain('character device');
    expect(lstatSync(node).isCharacterDevice()).toBe(true);
    expect(readdirSync(join(node, '..'))).toEqual(['null']);
  });

  it('a directory: a clear error naming it and what to do (not EISDIR), through the CLI too', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 } });
    const dir = tempDir('dir');
    writeFileSync(join(dir, 'keep'), 'x');
    const err = await refused(restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: dir, force: true }));
    expect(err.message).toContain(`${dir} is a directory`);
    const r = await execa('node', [CLI, 'restore', '--repo', h.root, h.domain, '--disk', 'vda', '--to', dir, '--force'], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain(`${dir} is a directory`);
    expect(r.stderr).toContain('--to');
    expect(r.stderr).not.toContain('EISDIR');
    expect(readdirSync(dir)).toEqual(['keep']);
  });

  it('a symlink to a file is neither replaced nor followed', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 } });
    const d = tempDir('sym');
    writeFileSync(join(d, 'victim'), 'victim');
    symlinkSync(join(d, 'victim'), join(d, 'link'));
    const err = await refused(restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: join(d, 'link'), force: true }));
    expect(err.message).toContain(join(d, 'link'));
    expect(lstatSync(join(d, 'link')).isSymbolicLink()).toBe(true);
    expect(readFileSync(join(d, 'victim'), 'utf8')).toBe('victim');
  });

  it('a FIFO and a socket', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 } });
    const d = tempDir('special');
    await execa('mkfifo', [join(d, 'fifo')]);
    const server = createServer();
    await new Promise<void>((res) => server.listen(join(d, 'sock'), res));
    onCleanup(() => new Promise((res) => server.close(res)));
    for (const [name, what] of [['fifo', 'FIFO'], ['sock', 'socket']] as const) {
      const err = await refused(restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: join(d, name), format: 'raw', force: true }));
      expect(err.message).toContain(join(d, name));
      expect(err.message).toContain(what);
    }
    expect(lstatSync(join(d, 'fifo')).isFIFO()).toBe(true);
    expect(lstatSync(join(d, 'sock')).isSocket()).toBe(true);
    expect(readdirSync(d).sort()).toEqual(['fifo', 'sock']);
  });

  it('a regular file is replaced', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 }, refs: true });
    const f = join(tempDir('file'), 'disk.raw');
    writeFileSync(f, 'old');
    await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: f, format: 'raw', force: true });
    expect(readFileSync(f).equals(readFileSync(h.points[0]!.refs.vda!))).toBe(true);
  });
});
