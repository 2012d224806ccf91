// The whole-disk used map: ext4 partitions contribute only their used blocks (as dumpe2fs reads them); the partition
// table, gaps, swap, a damaged ext2, an unreadable table and a filesystem's tail past its end all count as used, with why.
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint } from '../src/copy/index.js';
import { diskUsedMap, type DiskUsedMap } from '../src/fs/index.js';
import type { Extent } from '../src/extent/index.js';
import { dumpe2fsUsed, makeFs, MiB, writeTree } from './support/ext-images.js';
import { tempDir, type TempDir } from './support/nbd-servers.js';

let dir: TempDir;
let tree: string;
beforeAll(() => {
  dir = tempDir('fs-diskmap');
  tree = join(dir.path, 'tree');
  writeTree(tree, 5);
});
afterAll(() => dir?.remove());

async function mapOf(image: string): Promise<DiskUsedMap> {
  const ep = await FileEndpoint.open(image);
  try {
    return await diskUsedMap(ep);
  } finally {
    await ep.close();
  }
}

/** Copies a file into the image at a byte offset (mkswap and mkfs -d have no offset option). */
async function place(image: string, file: string, offset: number): Promise<void> {
  await execa('dd', [`if=${file}`, `of=${image}`, 'bs=1M', 'oflag=seek_bytes', `seek=${offset}`, 'conv=notrunc,sparse', 'status=none']);
}

/** [0, size) minus the free extents. */
function complement(size: number, free: Extent[]): Extent[] {
  const out: Extent[] = [];
  let at = 0;
  for (const f of [...free].sort((a, b) => a.offset - b.offset)) {
    if (f.offset > at) out.push({ offset: at, length: f.offset - at });
    at = Math.max(at, f.offset + f.length);
  }
  if (at < size) out.push({ offset: at, length: size - at });
  return out;
}

describe('diskUsedMap', () => {
  it('maps ext4 partitions by their bitmaps and keeps everything else, saying why', async () => {
    const disk = join(dir.path, 'disk.img');
    const size = 256 * MiB;
    await execa('truncate', ['-s', String(size), disk]);
    // p1 ext4 (populated), a gap, p2 swap, p3 a damaged ext2, p4 an ext4 smaller than its partition.
    await execa('sfdisk', ['-q', disk], { input: ['label: gpt', 'start=2048, size=131072', 'start=143360, size=16384', 'size=32768', 'size=49152'].join('\n') });
    const parts = (await mapOf(disk)).table!.partitions;
    const [p1, p2, p3, p4] = parts;

    const fs1 = join(dir.path, 'p1.img');
    await makeFs(fs1, p1.length, ['mkfs.ext4'], tree);
    await place(disk, fs1, p1.offset);
    const swap = join(dir.path, 'swap.img');
    await execa('truncate', ['-s', String(p2.length), swap]);
    await execa('mkswap', [swap]);
    await place(disk, swap, p2.offset);
    const fs3 = join(dir.path, 'p3.img');
    await makeFs(fs3, p3.length, ['mkfs.ext2', '-b', '4096']);
    await execa('dd', ['if=/dev/urandom', `of=${fs3}`, 'bs=4096', 'seek=1', 'count=1', 'conv=notrunc', 'status=none']);
    await place(disk, fs3, p3.offset);
    const fs4 = join(dir.path, 'p4.img');
    await makeFs(fs4, p4.length - 8 * MiB, ['mkfs.ext4', '-b', '4096']);
    await place(disk, fs4, p4.offset);

    const map = await mapOf(disk);
    const free1 = complement(p1.length, (await dumpe2fsUsed(fs1)).used).map((e) => ({ offset: e.offset + p1.offset, length: e.length }));
    const free4 = complement(p4.length - 8 * MiB, (await dumpe2fsUsed(fs4)).used).map((e) => ({ offset: e.offset + p4.offset, length: e.length }));
    expect(map.used).toEqual(complement(size, [...free1, ...free4]));

    const region = (partition: number | undefined, offset?: number) => map.regions.find((r) => r.partition === partition && (offset === undefined || r.offset === offset));
    expect(region(1)).toMatchObject({ kind: 'ext4', mapped: true });
    expect(region(2)).toMatchObject({ kind: 'swap', mapped: false, reason: expect.stringMatching(/swap is not readable/) });
    expect(region(3)).toMatchObject({ kind: 'ext2', mapped: false, reason: expect.stringMatching(/partition 3: group descriptor 0/) });
    expect(region(4, p4.offset + p4.length - 8 * MiB)).toMatchObject({ mapped: false, reason: expect.stringMatching(/past the end of the ext4/) });
    expect(map.regions[0]).toMatchObject({ offset: 0, length: p1.offset, kind: 'partition table', mapped: false });
    expect(map.regions.some((r) => r.kind === 'outside partitions' && r.offset === p1.offset + p1.length && r.length === p2.offset - (p1.offset + p1.length))).toBe(true);
    // Regions tile the disk.
    expect(map.regions.reduce((a, r) => a + r.length, 0)).toBe(size);
  });

  it('an unpartitioned ext4 disk maps as dumpe2fs reads it; a disk whose table is damaged is all used', async () => {
    const whole = join(dir.path, 'whole.img');
    await makeFs(whole, 64 * MiB, ['mkfs.ext4'], tree);
    const map = await mapOf(whole);
    expect(map.table?.scheme).toBe('none');
    expect(map.used).toEqual((await dumpe2fsUsed(whole)).used);

    const bad = join(dir.path, 'bad-gpt.img');
    await execa('truncate', ['-s', String(64 * MiB), bad]);
    await execa('sfdisk', ['-q', bad], { input: 'label: gpt\nsize=10000\n' });
    await execa('dd', ['if=/dev/zero', `of=${bad}`, 'bs=512', 'seek=1', 'count=1', 'conv=notrunc', 'status=none']);
    await execa('dd', ['if=/dev/zero', `of=${bad}`, 'bs=512', `seek=${64 * 2048 - 1}`, 'count=1', 'conv=notrunc', 'status=none']);
    const badMap = await mapOf(bad);
    expect(badMap.used).toEqual([{ offset: 0, length: 64 * MiB }]);
    expect(badMap.regions[0]!.reason).toMatch(/partition table not readable: .*GPT: primary header: no "EFI PART" signature; backup header: no "EFI PART"/);
  });
});
