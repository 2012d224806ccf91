// Partition tables read by src/fs equal sfdisk's view of them: MBR with logical partitions, GPT (and its backup
// header when the primary is damaged), a whole-disk filesystem; an ext4 inside a GPT partition reads as dumpe2fs says.
import { openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint } from '../src/copy/index.js';
import { ExtFilesystem, readPartitions, type PartitionTable } from '../src/fs/index.js';
import { dumpe2fsUsed, makeFs, MiB } from './support/ext-images.js';
import { tempDir, type TempDir } from './support/nbd-servers.js';

let dir: TempDir;
beforeAll(() => {
  dir = tempDir('fs-parts');
});
afterAll(() => dir?.remove());

interface SfdiskPart {
  start: number;
  size: number;
  type: string;
  uuid?: string;
  name?: string;
  bootable?: boolean;
  node: string;
}

async function sfdiskJson(image: string): Promise<{ label: string; id: string; partitions: SfdiskPart[] }> {
  return JSON.parse((await execa('sfdisk', ['--json', image])).stdout).partitiontable;
}

async function partition(image: string, size: number, script: string): Promise<void> {
  await execa('truncate', ['-s', String(size), image]);
  await execa('sfdisk', ['-q', image], { input: script });
}

async function readTable(image: string): Promise<PartitionTable> {
  const ep = await FileEndpoint.open(image);
  try {
    return await readPartitions(ep);
  } finally {
    await ep.close();
  }
}

function asSfdisk(t: PartitionTable) {
  return t.partitions.map((p) => ({
    number: p.number,
    start: p.offset / 512,
    size: p.length / 512,
    type: t.scheme === 'mbr' ? parseInt(p.type, 16).toString(16) : p.type,
    ...(p.uuid ? { uuid: p.uuid } : {}),
    ...(p.name ? { name: p.name } : {}),
    ...(p.bootable ? { bootable: true } : {}),
  }));
}

function fromSfdisk(parts: SfdiskPart[], image: string) {
  return parts.map((p) => ({
    number: Number(p.node.slice(image.length)),
    start: p.start,
    size: p.size,
    type: p.type,
    ...(p.uuid ? { uuid: p.uuid } : {}),
    ...(p.name ? { name: p.name } : {}),
    ...(p.bootable ? { bootable: true } : {}),
  }));
}

describe('partition tables match sfdisk', () => {
  it('MBR with primaries, an extended partition and logical ones', async () => {
    const image = join(dir.path, 'mbr.img');
    await partition(
      image,
      100 * MiB,
      ['label: dos', 'label-id: 0x12345678', 'start=2048, size=20480, type=83, bootable', 'size=20480, type=82', 'size=10240, type=7',
        'size=100000, type=5', 'size=10240, type=83', 'size=10240, type=c', 'size=20480, type=8e'].join('\n'),
    );
    const want = await sfdiskJson(image);
    const got = await readTable(image);
    expect(got.scheme).toBe('mbr');
    expect(got.id).toBe(want.id);
    expect(got.partitions.filter((p) => p.number >= 5)).toHaveLength(3);
    expect(got.partitions.find((p) => p.number === 4)?.extended).toBe(true);
    expect(asSfdisk(got)).toEqual(fromSfdisk(want.partitions, image));
  });

  it('GPT, and its backup header when the primary is damaged', async () => {
    const image = join(dir.path, 'gpt.img');
    await partition(
      image,
      100 * MiB,
      ['label: gpt', 'label-id: 01234567-89AB-CDEF-0123-456789ABCDEF',
        'start=2048, size=20480, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root fs", uuid=11111111-2222-3333-4444-555555555555',
        'size=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"', 'size=30000, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap ünïcode"'].join('\n'),
    );
    const want = await sfdiskJson(image);
    const got = await readTable(image);
    expect(got.scheme).toBe('gpt');
    expect(got.id).toBe(want.id);
    expect(asSfdisk(got)).toEqual(fromSfdisk(want.partitions, image));
    expect(got.usedBackup).toBeUndefined();

    // Garbage over the primary header: the backup at the disk's last sector gives the same table.
    const fd = openSync(image, 'r+');
    writeSync(fd, Buffer.alloc(92, 0x5a), 0, 92, 512);
    closeSync(fd);
    const backup = await readTable(image);
    expect(backup.usedBackup).toBe(true);
    expect(asSfdisk(backup)).toEqual(fromSfdisk(want.partitions, image));
  });

  it('a disk without a table is one whole-disk region (ext4 on the whole disk, and an empty disk)', async () => {
    const image = join(dir.path, 'whole.img');
    await makeFs(image, 32 * MiB, ['mkfs.ext4']);
    const t = await readTable(image);
    expect(t).toMatchObject({ scheme: 'none', partitions: [{ number: 0, offset: 0, length: 32 * MiB }] });
    const empty = join(dir.path, 'empty.img');
    await execa('truncate', ['-s', String(8 * MiB), empty]);
    expect((await readTable(empty)).partitions).toEqual([{ number: 0, offset: 0, length: 8 * MiB, type: '' }]);
  });

  it('an ext4 inside a GPT partition reads as dumpe2fs reads the partition', async () => {
    const image = join(dir.path, 'disk.img');
    await partition(image, 200 * MiB, ['label: gpt', 'start=2048, size=40960', 'size=300000, name="data"'].join('\n'));
    const t = await readTable(image);
    const data = t.partitions[1];
    await execa('mkfs.ext4', ['-q', '-F', '-E', `offset=${data.offset}`, image, String(data.length / 1024)]);
    // dumpe2fs cannot take an offset: it reads a copy of the partition.
    const copy = join(dir.path, 'part2.img');
    await execa('dd', [`if=${image}`, `of=${copy}`, 'bs=1M', 'iflag=skip_bytes,count_bytes', `skip=${data.offset}`, `count=${data.length}`, 'conv=sparse', 'status=none']);
    const want = await dumpe2fsUsed(copy);
    const ep = await FileEndpoint.open(image);
    try {
      const fs = await ExtFilesystem.open(ep, { offset: data.offset, length: data.length, label: 'disk.img, partition 2' });
      expect(await fs.usedExtents()).toEqual(want.used);
    } finally {
      await ep.close();
    }
  });
});
