// Damaged filesystems and hostile partition tables give a clear FilesystemError quickly: never a hang, never an
// empty "nothing used" map, never a file read as something it is not.
import { closeSync, openSync, readSync, writeSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint } from '../src/copy/index.js';
import { ExtFilesystem, FilesystemError, readPartitions } from '../src/fs/index.js';
import { crc32 } from '../src/fs/crc.js';
import { debugfs, makeFs, MiB, writeTree } from './support/ext-images.js';
import { tempDir, type TempDir } from './support/nbd-servers.js';

/** Every case must end well within this: a loop in the structures must not run on. */
const QUICK = 10_000;

let dir: TempDir;
let tree: string;
let n = 0;
beforeAll(() => {
  dir = tempDir('fs-damaged');
  tree = join(dir.path, 'tree');
  writeTree(tree, 3);
});
afterAll(() => dir?.remove());

function writeAt(image: string, offset: number, data: Buffer): void {
  const fd = openSync(image, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

function readAt(image: string, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const fd = openSync(image, 'r');
  try {
    readSync(fd, b, 0, length, offset);
  } finally {
    closeSync(fd);
  }
  return b;
}

/** A populated filesystem with 4 KiB blocks (mkfs would choose 1 KiB for one this small). */
async function image(mkfs: string[] = ['mkfs.ext4']): Promise<string> {
  const path = join(dir.path, `fs-${n++}.img`);
  await makeFs(path, 96 * MiB, [...mkfs, '-b', '4096'], tree);
  return path;
}

/** Runs fn on the opened filesystem; returns the error it threw (the test fails if it threw none). */
async function failure(path: string, fn: (fs: ExtFilesystem) => Promise<unknown> = (fs) => fs.usedExtents()): Promise<FilesystemError> {
  const ep = await FileEndpoint.open(path);
  try {
    const fs = await ExtFilesystem.open(ep);
    const r = await fn(fs);
    throw new Error(`no error; got ${JSON.stringify(r)?.slice(0, 200)}`);
  } catch (err) {
    if (!(err instanceof FilesystemError)) throw err;
    return err;
  } finally {
    await ep.close();
  }
}

/** The block of islands.bin's extent tree leaf, from debugfs ("(ETB0):N"). */
async function extentLeaf(path: string): Promise<number> {
  const m = /\(ETB0\):(\d+)/.exec(await debugfs(path, 'stat /islands.bin'));
  if (!m) throw new Error('islands.bin has no extent tree block');
  return Number(m[1]);
}

describe('a damaged filesystem is an error', { timeout: 60_000 }, () => {
  it('a truncated image', async () => {
    const p = await image();
    truncateSync(p, 40 * MiB);
    const err = await failure(p);
    expect(err.problem).toBe('damaged');
    expect(err.message).toMatch(/claims 100663296 bytes but only 41943040/);
    expect(err.message).toContain(p);
  }, QUICK);

  it('a journal that needs recovery (not frozen, not cleanly unmounted): no used map unless the caller accepts a stale one', async () => {
    const p = await image();
    await debugfs(p, 'feature needs_recovery', true);
    const err = await failure(p);
    expect(err.problem).toBe('unsupported');
    expect(err.message).toMatch(/journal holds changes not yet written to the block bitmaps/);
    const ep = await FileEndpoint.open(p);
    try {
      const fs = await ExtFilesystem.open(ep);
      expect(fs.sb.needsRecovery).toBe(true);
      expect((await fs.usedExtents({ trustUnreplayedJournal: true })).length).toBeGreaterThan(0);
    } finally {
      await ep.close();
    }
  }, QUICK);

  it('a zeroed superblock', async () => {
    const p = await image();
    writeAt(p, 1024, Buffer.alloc(1024));
    expect((await failure(p)).message).toMatch(/no ext2\/3\/4 superblock/);
  }, QUICK);

  it('an unknown incompatible feature is refused by name', async () => {
    const p = await image(['mkfs.ext4', '-O', '^metadata_csum']);
    const sb = readAt(p, 1024, 1024);
    sb.writeUInt32LE((sb.readUInt32LE(96) | 0x1 | 0x80000000) >>> 0, 96);
    writeAt(p, 1024, sb);
    const err = await failure(p);
    expect(err.problem).toBe('unsupported');
    expect(err.message).toMatch(/incompatible features .*compression, unknown bit 0x80000000/);
  }, QUICK);

  it('bigalloc (bitmaps of clusters) is refused by name', async () => {
    const p = await image(['mkfs.ext4', '-O', 'bigalloc']);
    const err = await failure(p);
    expect(err.problem).toBe('unsupported');
    expect(err.message).toMatch(/features whose block bitmaps this reader cannot interpret: bigalloc/);
  }, QUICK);

  it('garbage group descriptors (with and without checksums)', async () => {
    for (const mkfs of [['mkfs.ext4'], ['mkfs.ext2']]) {
      const p = await image(mkfs);
      const garbage = Buffer.alloc(256);
      for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 151 + 7) & 0xff;
      writeAt(p, 4096, garbage);
      const err = await failure(p);
      expect(err.problem).toBe('damaged');
      expect(err.message).toMatch(/group descriptor 0 (checksum mismatch|points outside|has impossible counts)/);
    }
  }, QUICK);

  it('a descriptor altered within range (its block bitmap one block off) fails its checksum (crc32c and crc16)', async () => {
    for (const mkfs of [['mkfs.ext4'], ['mkfs.ext4', '-O', '^metadata_csum,uninit_bg']]) {
      const p = await image(mkfs);
      const gd = readAt(p, 4096, 4);
      gd.writeUInt32LE(gd.readUInt32LE(0) + 1, 0);
      writeAt(p, 4096, gd);
      expect((await failure(p)).message).toMatch(/group descriptor 0 checksum mismatch/);
    }
  }, QUICK);

  it('a zeroed block bitmap: checksum mismatch on ext4, free count mismatch on ext2 — never "all free"', async () => {
    for (const mkfs of [['mkfs.ext4'], ['mkfs.ext2']]) {
      const p = await image(mkfs);
      const bitmap = Number(/Block bitmap at (\d+)/.exec((await execa('dumpe2fs', [p])).stdout)![1]);
      writeAt(p, bitmap * 4096, Buffer.alloc(4096));
      expect((await failure(p)).message).toMatch(/block bitmap of group 0 .*(checksum mismatch|free blocks)/);
    }
  }, QUICK);

  it('an extent tree whose leaf claims to be an index pointing at itself (a loop; no checksums to catch it first)', async () => {
    const p = await image(['mkfs.ext4', '-O', '^metadata_csum']);
    const leaf = await extentLeaf(p);
    const node = readAt(p, leaf * 4096, 4096);
    node.writeUInt16LE(1, 6); // depth 1
    node.writeUInt32LE(0, 12); // index entry 0: logical 0
    node.writeUInt32LE(leaf, 16); // -> this block
    node.writeUInt16LE(0, 20);
    writeAt(p, leaf * 4096, node);
    const byRead = await failure(p, (fs) => fs.readFile('/islands.bin'));
    expect(byRead.message).toMatch(/inode \d+: extent tree (node at depth|loops)/);
    const byOwners = await failure(p, (fs) => fs.blockOwners([{ offset: 0, length: 64 * MiB }]));
    expect(byOwners.message).toMatch(/extent tree/);
  }, QUICK);

  it('an extent pointing past the end of the filesystem, and one longer than the inode owns', async () => {
    const p = await image();
    // i_block words: header (0-2), first extent: logical (3), length | start_hi (4), start_lo (5).
    await debugfs(p, 'sif /large.bin block[5] 999999999', true);
    expect((await failure(p, (fs) => fs.readFile('/large.bin'))).message).toMatch(/extent for logical block 0 at block 999999999 .* outside/);
    await debugfs(p, 'sif /medium.bin block[4] 2000', true);
    const longer = (await failure(p, async (fs) => fs.map(await fs.lookup('/medium.bin')))).message;
    expect(longer).toMatch(/maps more blocks than its block count/);
  }, QUICK);

  it('metadata_csum: one changed byte in an inode, an extent tree block or a directory block is a checksum mismatch', async () => {
    const flip = (p: string, at: number) => writeAt(p, at, Buffer.from([readAt(p, at, 1)[0]! ^ 0x01]));
    const inodeAt = async (p: string, path: string) => {
      const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(await debugfs(p, `imap ${path}`))!;
      return Number(m[1]) * 4096 + parseInt(m[2]!, 16);
    };
    const p1 = await image();
    flip(p1, (await inodeAt(p1, '/tiny.txt')) + 16); // mtime
    expect((await failure(p1, (fs) => fs.readFile('/tiny.txt'))).message).toMatch(/inode \d+ checksum mismatch/);
    const p2 = await image();
    flip(p2, (await extentLeaf(p2)) * 4096 + 4000); // an unused entry slot, still under the checksum
    expect((await failure(p2, (fs) => fs.readFile('/islands.bin'))).message).toMatch(/extent tree block \d+ checksum mismatch/);
    const p3 = await image();
    const block = Number(/\(0\):(\d+)/.exec(await debugfs(p3, 'stat /docs'))![1]);
    flip(p3, block * 4096 + 12 + 8); // the first byte of ".."'s name
    expect((await failure(p3, async (fs) => fs.readdir(await fs.lookup('/docs')))).message).toMatch(/directory \d+: block 0 checksum mismatch/);
  }, QUICK);

  it('a block-mapped (ext2) file whose indirect block points everywhere', async () => {
    const p = await image(['mkfs.ext2']);
    const ind = Number((await debugfs(p, 'stat /large.bin')).match(/\(IND\):(\d+)/)![1]);
    // Every pointer of the indirect block to the same block: more blocks than i_blocks allows.
    const same = Buffer.alloc(4096);
    for (let i = 0; i < 1024; i++) same.writeUInt32LE(ind, i * 4);
    writeAt(p, ind * 4096, same);
    expect((await failure(p, (fs) => fs.readFile('/large.bin'))).message).toMatch(/maps more blocks than its block count/);
  }, QUICK);

  it('a directory entry with an impossible record length (no checksums to catch it first)', async () => {
    const p = await image(['mkfs.ext4', '-O', '^metadata_csum']);
    const block = Number(/\(0\):(\d+)/.exec(await debugfs(p, 'stat /docs'))![1]);
    const b = readAt(p, block * 4096, 4096);
    b.writeUInt16LE(3, 4); // "." with a record length of 3
    writeAt(p, block * 4096, b);
    const err = await failure(p, async (fs) => {
      for await (const e of fs.walk()) void e;
    });
    expect(err.message).toMatch(/directory \d+: corrupt entry at byte 0/);
  }, QUICK);
});

describe('a hostile partition table is an error', () => {
  async function mbrWithLogicals(): Promise<string> {
    const p = join(dir.path, `mbr-${n++}.img`);
    await execa('truncate', ['-s', String(64 * MiB), p]);
    await execa('sfdisk', ['-q', p], { input: ['label: dos', 'start=2048, size=10000, type=83', 'size=1000, type=83', 'size=1000, type=83', 'size=100000, type=5', 'size=10000, type=83', 'size=10000, type=83', 'size=10000, type=83'].join('\n') });
    return p;
  }

  async function tableError(p: string): Promise<FilesystemError> {
    const ep = await FileEndpoint.open(p);
    try {
      const t = await readPartitions(ep);
      throw new Error(`no error; got ${JSON.stringify(t)}`);
    } catch (err) {
      if (!(err instanceof FilesystemError)) throw err;
      return err;
    } finally {
      await ep.close();
    }
  }

  it('a chain of logical partitions that loops', async () => {
    const p = await mbrWithLogicals();
    const ext = readAt(p, 446 + 3 * 16, 16).readUInt32LE(8);
    // The second EBR's link to the next EBR points back to the first one (relative start 0).
    const first = readAt(p, ext * 512, 512);
    const second = first.readUInt32LE(446 + 16 + 8) + ext;
    const sec = readAt(p, second * 512, 512);
    sec.writeUInt32LE(0, 446 + 16 + 8);
    writeAt(p, second * 512, sec);
    expect((await tableError(p)).message).toMatch(/loops back to sector/);
  }, QUICK);

  it('a partition past the end of the disk', async () => {
    const p = await mbrWithLogicals();
    const e = readAt(p, 446, 16);
    e.writeUInt32LE(10_000_000, 12);
    writeAt(p, 446, e);
    expect((await tableError(p)).message).toMatch(/partition 1 .* lies outside the disk's 131072 sectors/);
  }, QUICK);

  it('GPT headers with an absurd entry count (both copies): the error names both', async () => {
    const p = join(dir.path, `gpt-${n++}.img`);
    await execa('truncate', ['-s', String(64 * MiB), p]);
    await execa('sfdisk', ['-q', p], { input: 'label: gpt\nsize=10000\n' });
    for (const lba of [1, 64 * 2048 - 1]) {
      const h = readAt(p, lba * 512, 92);
      h.writeUInt32LE(0xffffffff, 80);
      h.writeUInt32LE(0, 16);
      h.writeUInt32LE(crc32(h), 16);
      writeAt(p, lba * 512, h);
    }
    const msg = (await tableError(p)).message;
    expect(msg).toMatch(/primary header: absurd entry array \(4294967295 entries/);
    expect(msg).toMatch(/backup header: absurd entry array/);
  }, QUICK);
});
