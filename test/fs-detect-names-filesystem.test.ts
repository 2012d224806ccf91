// detectFilesystem names what mkfs made (ext2/3/4, XFS, swap, FAT), at a partition's offset too, and the LVM and LUKS
// headers, so callers can say "not readable (XFS)" instead of guessing; an empty region is 'unknown'.
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint } from '../src/copy/index.js';
import { detectFilesystem, readPartitions } from '../src/fs/index.js';
import { makeFs, MiB } from './support/ext-images.js';
import { tempDir, type TempDir } from './support/nbd-servers.js';

let dir: TempDir;
beforeAll(() => {
  dir = tempDir('fs-detect');
});
afterAll(() => dir?.remove());

async function detect(image: string, offset = 0) {
  const ep = await FileEndpoint.open(image);
  try {
    return await detectFilesystem(ep, offset);
  } finally {
    await ep.close();
  }
}

async function blank(name: string, size: number): Promise<string> {
  const p = join(dir.path, name);
  await execa('truncate', ['-s', String(size), p]);
  return p;
}

describe('detectFilesystem', () => {
  it('names ext2, ext3 and ext4 as blkid does', async () => {
    for (const [mkfs, kind] of [['mkfs.ext2', 'ext2'], ['mkfs.ext3', 'ext3'], ['mkfs.ext4', 'ext4']] as const) {
      const p = join(dir.path, `${kind}.img`);
      await makeFs(p, 16 * MiB, [mkfs]);
      expect(await detect(p)).toBe(kind);
      expect((await execa('blkid', ['-o', 'value', '-s', 'TYPE', p])).stdout).toBe(kind);
    }
  });

  it('names XFS, swap and FAT', async () => {
    const xfs = await blank('xfs.img', 512 * MiB);
    await execa('mkfs.xfs', ['-q', xfs]);
    expect(await detect(xfs)).toBe('xfs');
    const swap = await blank('swap.img', 16 * MiB);
    await execa('mkswap', [swap]);
    expect(await detect(swap)).toBe('swap');
    const fat = await blank('fat.img', 16 * MiB);
    await execa('mkfs.vfat', [fat]);
    expect(await detect(fat)).toBe('vfat');
    // A FAT volume has 55AA where an MBR would: it is a whole-disk filesystem, not a partition table.
    const ep = await FileEndpoint.open(fat);
    try {
      expect((await readPartitions(ep)).scheme).toBe('none');
    } finally {
      await ep.close();
    }
  });

  it('names LVM physical volumes and LUKS containers by their labels', async () => {
    // No lvm2 or cryptsetup here: their on-disk labels, as pvcreate and cryptsetup write them.
    const lvm = await blank('lvm.img', 4 * MiB);
    const label = Buffer.alloc(512);
    label.write('LABELONE', 0, 'latin1');
    label.write('LVM2 001', 24, 'latin1');
    const luks = await blank('luks.img', 4 * MiB);
    for (const [p, at, data] of [[lvm, 512, label], [luks, 0, Buffer.from('LUKS\xba\xbe\x00\x02', 'latin1')]] as const) {
      const fd = openSync(p, 'r+');
      writeSync(fd, data, 0, data.length, at);
      closeSync(fd);
    }
    expect(await detect(lvm)).toBe('lvm');
    expect(await detect(luks)).toBe('luks');
    expect(await detect(await blank('zero.img', 4 * MiB))).toBe('unknown');
  });

  it('finds the filesystem at a partition offset', async () => {
    const p = await blank('parts.img', 64 * MiB);
    await execa('sfdisk', ['-q', p], { input: 'label: gpt\nstart=2048, size=20480\nsize=40000\n' });
    const table = await (async () => {
      const ep = await FileEndpoint.open(p);
      try {
        return await readPartitions(ep);
      } finally {
        await ep.close();
      }
    })();
    const second = table.partitions[1];
    await execa('mkfs.ext4', ['-q', '-F', '-E', `offset=${second.offset}`, p, String(second.length / 1024)]);
    expect(await detect(p, second.offset)).toBe('ext4');
    expect(await detect(p, table.partitions[0].offset)).toBe('unknown');
  });
});
