// Files, directories, symlinks and block maps read by src/fs equal what debugfs reads from the same image, on ext2/3/4
// feature sets and block sizes, through a file and through a real NBD export; block owners equal debugfs's icheck.
import { closeSync, lstatSync, mkdirSync, openSync, readFileSync, readlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint, NbdEndpoint } from '../src/copy/index.js';
import type { Endpoint } from '../src/copy/index.js';
import { ExtFilesystem, type WalkEntry } from '../src/fs/index.js';
import { debugfs, makeFs, MiB, writeTree } from './support/ext-images.js';
import { startQemuNbd, tempDir, type RunningServer, type TempDir } from './support/nbd-servers.js';

let dir: TempDir;
let tree: string;
const servers: RunningServer[] = [];

beforeAll(() => {
  dir = tempDir('fs-files');
  tree = join(dir.path, 'tree');
  writeTree(tree, 7);
});
afterAll(async () => {
  await Promise.allSettled(servers.map((s) => s.stop()));
  dir?.remove();
});

async function withFs<T>(ep: Endpoint, fn: (fs: ExtFilesystem) => Promise<T>): Promise<T> {
  try {
    return await fn(await ExtFilesystem.open(ep));
  } finally {
    await ep.close();
  }
}

async function walkAll(fs: ExtFilesystem): Promise<WalkEntry[]> {
  const out: WalkEntry[] = [];
  for await (const e of fs.walk()) out.push(e);
  return out.sort((a, b) => a.path.localeCompare(b.path));
}

/** debugfs's own block list of a file ("blocks PATH"): every data block, preallocated ones included. */
async function debugfsBlocks(image: string, path: string): Promise<number[]> {
  const out = (await debugfs(image, `blocks ${path}`)).trim();
  return out ? out.split(/\s+/).map(Number) : [];
}

const cases: [string, string[]][] = [
  ['ext4 default', ['mkfs.ext4']],
  ['ext4 1 KiB blocks', ['mkfs.ext4', '-b', '1024']],
  ['ext4 without 64bit, flex_bg, metadata_csum', ['mkfs.ext4', '-O', '^64bit,^flex_bg,^metadata_csum']],
  ['ext4 inline_data', ['mkfs.ext4', '-O', 'inline_data']],
  ['ext3 1 KiB blocks (triple indirect)', ['mkfs.ext3', '-b', '1024']],
  ['ext2 4 KiB blocks', ['mkfs.ext2']],
];

describe('files and directories match debugfs', () => {
  for (const [name, mkfs] of cases) {
    it(name, async () => {
      const image = join(dir.path, `${name.replace(/\W+/g, '-')}.img`);
      await makeFs(image, 128 * MiB, mkfs, tree);
      // mkfs -d writes linear directories; e2fsck -D indexes the large ones (htree), as a long-lived filesystem has them.
      const fsck = await execa('e2fsck', ['-fyD', image], { reject: false });
      expect(fsck.exitCode, fsck.stdout).toBeLessThanOrEqual(1);
      const prealloc = mkfs[0] === 'mkfs.ext4' && !name.includes('inline');
      if (prealloc) {
        // (debugfs cannot fallocate a file whose data is inline.) A preallocated (uninitialised) extent: allocated, reads as zeroes.
        await debugfs(image, 'write /dev/null /prealloc', true);
        await debugfs(image, 'fallocate /prealloc 0 39', true);
        await debugfs(image, 'sif /prealloc size 163840', true);
        // Old data in the preallocated blocks (as after a delete): a reader must still return zeroes.
        const bs = Number(/Block size:\s+(\d+)/.exec(await debugfs(image, 'stats'))![1]);
        const fd = openSync(image, 'r+');
        for (const b of await debugfsBlocks(image, '/prealloc')) writeSync(fd, Buffer.alloc(bs, 0xaa), 0, bs, b * bs);
        closeSync(fd);
      }
      const dumped = join(dir.path, `${name.replace(/\W+/g, '-')}.dump`);
      mkdirSync(dumped);
      await debugfs(image, `rdump / ${dumped}`);

      await withFs(await FileEndpoint.open(image), async (fs) => {
        const entries = await walkAll(fs);
        expect(entries.length).toBeGreaterThan(400);
        for (const e of entries) {
          const there = join(dumped, e.path);
          const st = lstatSync(there);
          if (e.type === 'file') {
            expect(st.isFile(), e.path).toBe(true);
            const mine = await fs.readFile(e.ino);
            // debugfs 1.47 dumps an inline file as its whole 60-byte area, past i_size: compare up to the size.
            expect(mine.equals(readFileSync(there).subarray(0, mine.length)), e.path).toBe(true);
            expect(mine.length, e.path).toBe((await fs.inode(e.ino)).size);
            if (!['/prealloc'].includes(e.path) && !e.path.startsWith('/lost+found')) {
              expect(mine.equals(readFileSync(join(tree, e.path))), e.path).toBe(true);
            }
          } else if (e.type === 'symlink') {
            expect(await fs.readlink(e.ino), e.path).toBe(readlinkSync(there));
          } else expect(st.isDirectory(), e.path).toBe(e.type === 'dir');
        }
        // The walk found what mkfs was given (debugfs could be wrong the same way).
        expect((await fs.readFile('/large.bin')).equals(readFileSync(join(tree, 'large.bin')))).toBe(true);
        expect((await fs.readFile('/far.bin')).equals(readFileSync(join(tree, 'far.bin')))).toBe(true);
        expect((await fs.readFile('/rel-link')).toString()).toBe('deep note\n');
        expect((await fs.readFile('/slow-link')).toString()).toBe('deep note\n');
        expect(await fs.lookup('/fast-link', { noFollow: true })).not.toBe(await fs.lookup('/fast-link'));

        // Listings (an htree directory, a deep one, the root) against "ls -p": names and inode numbers.
        for (const d of ['/', '/big-dir', '/docs/deep/er/still']) {
          const want = (await debugfs(image, `ls -p ${d}`))
            .split('\n')
            .filter((l) => l.startsWith('/'))
            .map((l) => {
              const f = l.split('/');
              return `${f[5]}:${f[1]}`;
            })
            .sort();
          const got = (await fs.readdir(await fs.lookup(d))).map((e) => `${e.name}:${e.ino}`).sort();
          expect(got, d).toEqual(want);
        }

        // Block lists (data, extent tree nodes, indirect blocks) of the files against "blocks PATH"; a few of big-dir's.
        for (const e of entries.filter((x) => x.type === 'file' && !/name-[1-9]\d*\.txt$/.test(x.path))) {
          const inode = await fs.inode(e.ino);
          const { data, meta } = await fs.map(inode);
          const mine = [...data, ...meta.map((m) => ({ physical: m.offset, count: m.length }))]
            .flatMap((r) => Array.from({ length: r.count }, (_, i) => r.physical + i))
            .filter((b) => b !== inode.fileAcl)
            .sort((a, b) => a - b);
          expect(mine, e.path).toEqual((await debugfsBlocks(image, e.path)).sort((a, b) => a - b));
        }
        if (prealloc) {
          const { data } = await fs.map(await fs.lookup('/prealloc'));
          expect(data.every((r) => r.uninit)).toBe(true);
          expect((await fs.readFile('/prealloc')).equals(Buffer.alloc(163840))).toBe(true);
        }
        expect((await fs.inode(await fs.lookup('/big-dir'))).flags & 0x1000, 'big-dir is an htree directory').toBe(0x1000);
        if (name.includes('inline')) expect((await fs.map(await fs.lookup('/tiny.txt'))).inline).toBe(true);
        if (name.startsWith('ext4 default')) {
          const islands = await fs.inode(await fs.lookup('/islands.bin'));
          expect(islands.iBlock.readUInt16LE(6), 'islands.bin has an extent tree of depth >= 1').toBeGreaterThan(0);
        }

        // Block owners against icheck: a sample of used blocks (data, tree nodes, indirect blocks, journal, tables).
        const bs = fs.sb.blockSize;
        const used = await fs.usedExtents();
        const blocks: number[] = [];
        for (const u of used) for (let b = u.offset / bs; b < (u.offset + u.length) / bs; b += 37) blocks.push(b);
        const sample = blocks.filter((_, i) => i % Math.ceil(blocks.length / 300) === 0);
        // And every mapping block (extent tree nodes, indirect blocks) of the files with any, first in line.
        const mapping: number[] = [];
        for (const f of ['/far.bin', '/islands.bin', '/large.bin', '/medium.bin']) {
          for (const m of (await fs.map(await fs.lookup(f))).meta) for (let b = m.offset; b < m.offset + m.length; b++) mapping.push(b);
        }
        if (!name.includes('inline')) expect(mapping.length).toBeGreaterThan(0);
        sample.unshift(...mapping);
        const icheck = new Map<number, number>();
        for (const line of (await debugfs(image, `icheck ${sample.join(' ')}`)).split('\n').slice(1)) {
          const [b, ino] = line.split('\t');
          if (/^\d+$/.test(ino ?? '')) icheck.set(Number(b), Number(ino));
        }
        expect(icheck.size).toBeGreaterThan(20);
        for (const b of [...mapping, ...sample.filter((_, i) => i % 10 === 0)]) {
          const owners = (await fs.blockOwners([{ offset: b * bs, length: bs }])).filter((o) => o.blocks).map((o) => o.ino);
          expect(owners, `block ${b}`).toEqual(icheck.has(b) ? [icheck.get(b)] : []);
        }
        const all = await fs.blockOwners(sample.map((b) => ({ offset: b * bs, length: bs })));
        expect(new Set(all.filter((o) => o.blocks).map((o) => o.ino))).toEqual(new Set(icheck.values()));
      });
    });
  }

  it('reads the same through a real NBD export (qemu-nbd) as through the file', async () => {
    const image = join(dir.path, 'nbd.img');
    await makeFs(image, 64 * MiB, ['mkfs.ext4'], tree);
    const s = await startQemuNbd(image, dir.path, { format: 'raw', readOnly: true });
    servers.push(s);
    const viaFile = await withFs(await FileEndpoint.open(image), async (fs) => ({ used: await fs.usedExtents(), walk: await walkAll(fs), large: await fs.readFile('/large.bin') }));
    const viaNbd = await withFs(await NbdEndpoint.open(s.uri), async (fs) => ({ used: await fs.usedExtents(), walk: await walkAll(fs), large: await fs.readFile('/large.bin') }));
    expect(viaNbd.used).toEqual(viaFile.used);
    expect(viaNbd.walk).toEqual(viaFile.walk);
    expect(viaNbd.large.equals(readFileSync(join(tree, 'large.bin')))).toBe(true);
  });
});
