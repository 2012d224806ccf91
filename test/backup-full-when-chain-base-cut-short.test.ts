// A base image cut short past its header (an interrupted offsite copy): its header still reads
// well, but the file is smaller than the data its backup wrote into it. The next backup copies
// that disk whole, saying why, and its restore point restores the disk. Before, it was an
// incremental on the cut base: the consumer moved onto a point that restores with holes.
import { execa } from 'execa';
import { statSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { backupJson, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
let daemon: TestDaemon;
let g: LibvirtGuest;

beforeAll(async () => {
  daemon = await startTestDaemon();
  g = await startLibvirtGuest({ name: 'cutbase', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', g.name]);
  await daemon.cli(['consumer', 'add', g.name, 'c']);
});

describe('a chain whose base was cut short', () => {
  it('the next backup copies that disk whole, says why, and restores the disk', async () => {
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 3 0 8M', g.disks.scratch]);
    const repo = tempDir('cut');
    const b1 = await backupJson(daemon, [g.name, '--consumer', 'c', '--repo', repo]);
    const base = join(repo, g.name, 'c', `${b1.id}.vdb.qcow2`);
    truncateSync(base, Math.floor(statSync(base).size / 2));
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 4 20M 1M', g.disks.scratch]);
    const b2 = await backupJson(daemon, [g.name, '--consumer', 'c', '--repo', repo]);
    const vdb = b2.disks.find((d: { target: string }) => d.target === 'vdb');
    expect(vdb.full, 'an incremental on a cut base').toBe(true);
    expect(vdb.reason).toContain(`${b1.id}.vdb.qcow2 is ${statSync(base).size} bytes, smaller than`);
    expect(b2.disks.find((d: { target: string }) => d.target === 'vda').full).toBe(false);
    const to = join(tempDir('restore'), 'vdb.qcow2');
    await daemon.cli(['restore', '--repo', repo, g.name, '--disk', 'vdb', '--to', to, '--at', b2.id]);
    const c = await sameContent(g.disks.scratch, 'qcow2', to, 'qcow2');
    expect(c.same, c.detail).toBe(true);
  });
});
