// The used-block map of src/fs equals the complement of dumpe2fs's free ranges, for every feature set and block size
// mkfs makes, fresh and after files were deleted, and for a large fresh filesystem whose groups have no bitmap yet.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint } from '../src/copy/index.js';
import { ExtFilesystem } from '../src/fs/index.js';
import { debugfs, dumpe2fsUsed, makeFs, MiB, writeTree } from './support/ext-images.js';
import { tempDir, type TempDir } from './support/nbd-servers.js';

let dir: TempDir;
let tree: string;

beforeAll(() => {
  dir = tempDir('fs-used');
  tree = join(dir.path, 'tree');
  writeTree(tree);
});
afterAll(() => dir?.remove());

async function usedOf(image: string) {
  const ep = await FileEndpoint.open(image);
  try {
    const fs = await ExtFilesystem.open(ep);
    return { fs, used: await fs.usedExtents() };
  } finally {
    await ep.close();
  }
}

const cases: [string, string[]][] = [
  ['ext4 default (64bit, flex_bg, metadata_csum, extents)', ['mkfs.ext4']],
  ['ext4 without 64bit, flex_bg, metadata_csum', ['mkfs.ext4', '-O', '^64bit,^flex_bg,^metadata_csum']],
  ['ext4 with uninit_bg (gdt_csum) instead of metadata_csum', ['mkfs.ext4', '-O', '^metadata_csum,uninit_bg']],
  ['ext4 1 KiB blocks', ['mkfs.ext4', '-b', '1024']],
  ['ext4 meta_bg', ['mkfs.ext4', '-O', 'meta_bg,^resize_inode']],
  ['ext4 inline_data', ['mkfs.ext4', '-O', 'inline_data']],
  ['ext4 sparse_super2 (two backup groups)', ['mkfs.ext4', '-b', '1024', '-O', 'sparse_super2']],
  ['ext3 (journal, block maps)', ['mkfs.ext3']],
  ['ext3 1 KiB blocks', ['mkfs.ext3', '-b', '1024']],
  ['ext2 1 KiB blocks', ['mkfs.ext2', '-b', '1024']],
  ['ext2 4 KiB blocks', ['mkfs.ext2', '-b', '4096']],
];

describe('usedExtents() matches dumpe2fs', () => {
  for (const [name, mkfs] of cases) {
    it(`${name}: populated, then with files deleted`, async () => {
      const image = join(dir.path, `${name.replace(/\W+/g, '-')}.img`);
      await makeFs(image, 96 * MiB, mkfs, tree);
      const before = await usedOf(image);
      const want = await dumpe2fsUsed(image);
      expect(before.used).toEqual(want.used);
      expect(before.fs.sb.blockSize).toBe(want.blockSize);

      // Free some blocks in the middle (fill, then delete): the map must shrink exactly as dumpe2fs's.
      await debugfs(image, 'rm /large.bin', true);
      await debugfs(image, 'rm /islands.bin', true);
      const after = await usedOf(image);
      const wantAfter = await dumpe2fsUsed(image);
      expect(after.used).toEqual(wantAfter.used);
      const total = (l: { length: number }[]) => l.reduce((a, e) => a + e.length, 0);
      expect(total(after.used)).toBeLessThan(total(before.used) - 3 * MiB);
    });
  }

  it('ext4 meta_bg with several descriptor blocks, each in its own meta group (1 KiB blocks)', async () => {
    const image = join(dir.path, 'meta-bg.img');
    await makeFs(image, 256 * MiB, ['mkfs.ext4', '-b', '1024', '-O', 'meta_bg,^resize_inode'], tree);
    const { fs, used } = await usedOf(image);
    expect(fs.groups.length).toBeGreaterThan(1024 / fs.sb.descSize);
    expect(used).toEqual((await dumpe2fsUsed(image)).used);
  });

  it('a large fresh ext4 whose groups have no initialised bitmap (BLOCK_UNINIT)', async () => {
    const image = join(dir.path, 'large.img');
    await makeFs(image, 8 * 1024 * MiB, ['mkfs.ext4']);
    const want = await dumpe2fsUsed(image);
    expect(want.uninitGroups).toBeGreaterThan(want.groups / 2);
    const { used } = await usedOf(image);
    expect(used).toEqual(want.used);
  });

  it('a large fresh ext4 without flex_bg (bitmaps and inode tables in their own BLOCK_UNINIT groups)', async () => {
    const image = join(dir.path, 'large-noflex.img');
    await makeFs(image, 4 * 1024 * MiB, ['mkfs.ext4', '-O', '^flex_bg']);
    const want = await dumpe2fsUsed(image);
    expect(want.uninitGroups).toBeGreaterThan(want.groups / 2);
    const { used } = await usedOf(image);
    expect(used).toEqual(want.used);
  });
});
