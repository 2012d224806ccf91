// The owner index (src/fs/ext/owner-index.ts) brought forward by the changed 64 KiB granules of
// real e2fsprogs images answers every round's ownership exactly as reading every inode table
// does, marks changed only the inodes that changed (not the neighbours sharing their granule),
// and ends equal to an index built afresh. On a filesystem of many files it reads a small part of
// what reading the inode tables does.
import { closeSync, copyFileSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint } from '../src/copy/index.js';
import { fromPairs, type Extent } from '../src/extent/index.js';
import { ExtFilesystem, OwnerIndex, OwnerIndexTooLarge, type Ownership } from '../src/fs/index.js';
import { changedGranules, makeFs, MiB, writeTree } from './support/ext-images.js';
import { tempDir, type TempDir } from './support/nbd-servers.js';

let dir: TempDir;
let tree: string;

beforeAll(() => {
  dir = tempDir('owner-index');
  tree = join(dir.path, 'tree');
  writeTree(tree, 11);
});
afterAll(() => dir?.remove());

/** The granules in which two images differ: what the change log would send. */
const changed = (a: string, b: string): Extent[] => fromPairs(changedGranules(a, b));

async function openFs(image: string): Promise<{ fs: ExtFilesystem; close: () => Promise<void> }> {
  const ep = await FileEndpoint.open(image);
  return { fs: await ExtFilesystem.open(ep), close: () => ep.close() };
}

const shape = (o: Ownership) => ({
  owners: o.owners.map((w) => `${w.ino}:${w.blocks ? 'b' : '-'}${w.inode ? 'i' : '-'}`).sort(),
  unowned: o.unowned,
});

/** Overwrites a file's first block in place, as a guest writing into an open file without touching its inode would. */
async function overwriteInPlace(image: string, path: string): Promise<void> {
  const { fs, close } = await openFs(image);
  try {
    const { data } = await fs.map(await fs.lookup(path));
    const fd = openSync(image, 'r+');
    writeSync(fd, Buffer.alloc(fs.sb.blockSize, 0x5a), 0, fs.sb.blockSize, data[0]!.physical * fs.sb.blockSize);
    closeSync(fd);
  } finally {
    await close();
  }
}

const cases: [string, string[]][] = [
  ['ext4 default', ['mkfs.ext4']],
  ['ext4 inline_data, 1 KiB blocks', ['mkfs.ext4', '-b', '1024', '-O', 'inline_data']],
  ['ext3 1 KiB blocks (indirect blocks)', ['mkfs.ext3', '-b', '1024']],
  ['ext2 without group checksums', ['mkfs.ext2', '-O', '^uninit_bg']],
];

describe('an owner index brought forward by changed granules', () => {
  for (const [name, mkfs] of cases) {
    it(name, async () => {
      const base = join(dir.path, `${name.replace(/\W+/g, '-')}.img`);
      await makeFs(base, 128 * MiB, mkfs, tree);
      const src = join(dir.path, `${name.replace(/\W+/g, '-')}.src`);
      writeFileSync(src, Buffer.alloc(200 * 1024, 0x41));
      const rounds: { what: string; apply: (image: string) => Promise<void>; changed: string[]; unchanged?: string[] }[] = [
        {
          what: 'a file written, one removed, one chmod, a directory made',
          apply: (img) => execa('debugfs', ['-w', '-f', '-', img], { input: [`write ${src} new.bin`, 'rm medium.bin', 'sif tiny.txt mode 0100600', 'mkdir made'].join('\n') }).then(() => undefined),
          changed: ['/new.bin', '/tiny.txt'],
        },
        { what: 'data rewritten in place (no inode change)', apply: (img) => overwriteInPlace(img, '/large.bin'), changed: [], unchanged: ['/large.bin'] },
        {
          what: 'blocks punched out of a many-extent file, big-dir emptied in part',
          apply: (img) => execa('debugfs', ['-w', '-f', '-', img], {
            input: ['punch islands.bin 100 400', ...Array.from({ length: 60 }, (_, i) => `rm big-dir/file-with-a-longish-name-${i}.txt`)].join('\n'),
          }).then(() => undefined),
          changed: ['/islands.bin'],
        },
        {
          what: 'a hard link, a symlink, a file removed and its inode reused',
          apply: (img) => execa('debugfs', ['-w', '-f', '-', img], { input: ['ln large.bin large-again', 'symlink link-to-new new.bin', 'rm new.bin', `write ${src} newer.bin`].join('\n') }).then(() => undefined),
          changed: ['/newer.bin'],
        },
      ];
      const work = join(dir.path, `${name.replace(/\W+/g, '-')}.work`);
      copyFileSync(base, work);
      let index: OwnerIndex;
      {
        const { fs, close } = await openFs(work);
        index = (await OwnerIndex.build(fs, [])).index;
        await close();
      }
      for (const round of rounds) {
        const before = `${work}.before`;
        copyFileSync(work, before);
        await round.apply(work);
        const q = changed(before, work);
        expect(q.length, round.what).toBeGreaterThan(0);
        const { fs, close } = await openFs(work);
        try {
          const brought = await index.update(fs, q);
          const fresh = await OwnerIndex.build(fs, q);
          const streamed = await fs.ownership(q);
          expect(shape(brought), round.what).toEqual(shape(fresh.ownership));
          expect(shape(brought), round.what).toEqual(shape(streamed));
          expect(index.sameAs(fresh.index), `${round.what}: brought forward equals built afresh`).toBe(true);
          const changedInos = new Set(brought.owners.filter((o) => o.changed).map((o) => o.ino));
          for (const p of round.changed) expect(changedInos.has(await fs.lookup(p, { noFollow: true })), `${round.what}: ${p} changed`).toBe(true);
          for (const p of round.unchanged ?? []) {
            const ino = await fs.lookup(p);
            expect(brought.owners.find((o) => o.ino === ino), `${round.what}: ${p}`).toMatchObject({ blocks: true, changed: false });
          }
          // Neighbours sharing a changed slot's granule are not taken as changed: fewer changed than slot hits.
          if (round.changed.length) expect(changedInos.size, round.what).toBeLessThan(brought.owners.filter((o) => o.inode).length);
        } finally {
          await close();
        }
      }
    }, 120_000);
  }
});

describe('on a filesystem of many files', () => {
  it('reads the changed metadata, not every inode table', async () => {
    const many = join(dir.path, 'many');
    mkdirSync(many);
    for (let d = 0; d < 20; d++) {
      mkdirSync(join(many, `d${d}`));
      for (let i = 0; i < 1000; i++) writeFileSync(join(many, `d${d}`, `f${i}`), `file ${d}/${i}\n`.repeat(20));
    }
    const base = join(dir.path, 'many.img');
    await makeFs(base, 256 * MiB, ['mkfs.ext4', '-N', '40000'], many);
    const work = join(dir.path, 'many.work');
    copyFileSync(base, work);
    let index: OwnerIndex;
    {
      const { fs, close } = await openFs(work);
      index = (await OwnerIndex.build(fs, [])).index;
      await close();
    }
    const src = join(dir.path, 'many.src');
    writeFileSync(src, Buffer.alloc(100 * 1024, 0x42));
    await execa('debugfs', ['-w', '-f', '-', work], { input: [`write ${src} d3/new`, 'rm d7/f500', 'sif d15/f20 mode 0100600'].join('\n') });
    const q = changed(base, work);
    const { fs, close } = await openFs(work);
    try {
      const r0 = fs.disk.stats.bytesRead;
      const brought = await index.update(fs, q);
      const updateBytes = fs.disk.stats.bytesRead - r0;
      const r1 = fs.disk.stats.bytesRead;
      const streamed = await fs.ownership(q);
      const tableBytes = fs.disk.stats.bytesRead - r1;
      expect(shape(brought)).toEqual(shape(streamed));
      const changed = brought.owners.filter((o) => o.changed).map((o) => o.ino).sort((a, b) => a - b);
      expect(changed).toEqual([await fs.lookup('/d3/new'), await fs.lookup('/d15/f20')].sort((a, b) => a - b));
      console.log(`20,000 files: the index read ${updateBytes} bytes for ${q.length} changed granules; reading the inode tables ${tableBytes}`);
      expect(tableBytes).toBeGreaterThan(4 * MiB);
      expect(updateBytes).toBeLessThan(tableBytes / 4);
    } finally {
      await close();
    }
  }, 180_000);
});

describe('an owner index\'s geometry', () => {
  it('stays the same when only needs_recovery changes (snapshots with and without the guest\'s freeze), and not across a new mkfs', async () => {
    const a = join(dir.path, 'geometry.img');
    await makeFs(a, 64 * MiB, ['mkfs.ext4'], tree);
    const b = `${a}.recovering`;
    copyFileSync(a, b);
    await execa('debugfs', ['-w', '-R', 'feature needs_recovery', b]);
    const c = `${a}.again`;
    await makeFs(c, 64 * MiB, ['mkfs.ext4'], tree);
    const geometry = async (img: string) => {
      const { fs, close } = await openFs(img);
      try {
        return { g: OwnerIndex.geometryOf(fs), recovering: fs.sb.needsRecovery };
      } finally {
        await close();
      }
    };
    const [ga, gb, gc] = [await geometry(a), await geometry(b), await geometry(c)];
    expect(gb.recovering).toBe(true);
    expect(gb.g).toBe(ga.g);
    expect(gc.g).not.toBe(ga.g);
  });
});

describe('an owner index over its memory bound', () => {
  it('is refused while it grows, in a build and in an update (descriptors can understate the inodes in use)', async () => {
    const base = join(dir.path, 'bound.img');
    await makeFs(base, 64 * MiB, ['mkfs.ext4'], tree);
    const grown = join(dir.path, 'bound-grown.img');
    copyFileSync(base, grown);
    const src = join(dir.path, 'bound.src');
    writeFileSync(src, 'x'.repeat(5000));
    await execa('debugfs', ['-w', '-f', '-', grown], { input: ['mkdir many', ...Array.from({ length: 200 }, (_, i) => `write ${src} many/f${i}`)].join('\n') });
    const a = await openFs(base);
    let index: OwnerIndex;
    try {
      index = (await OwnerIndex.build(a.fs, [])).index;
      await expect(OwnerIndex.build(a.fs, [], { maxBytes: index.bytes / 2 })).rejects.toBeInstanceOf(OwnerIndexTooLarge);
    } finally {
      await a.close();
    }
    const b = await openFs(grown);
    try {
      const q = changed(base, grown);
      await expect(index.update(b.fs, q, index.bytes + 1000)).rejects.toBeInstanceOf(OwnerIndexTooLarge);
      // The growth was real: 200 new files own changed blocks.
      expect((await OwnerIndex.build(b.fs, q)).ownership.owners.length).toBeGreaterThan(200);
    } finally {
      await b.close();
    }
  });
});

describe('an owner index saved as bytes', () => {
  it('comes back the same (entries, bitmaps, digests) and answers the same; bytes cut short or inflated are refused, never over-allocated', async () => {
    const image = join(dir.path, 'saved.img');
    await makeFs(image, 32 * MiB, ['mkfs.ext4'], tree);
    const { fs, close } = await openFs(image);
    try {
      const { index } = await OwnerIndex.build(fs, []);
      const someIno = 2; // the root directory: every ext filesystem has it
      index.setDigests(someIno, new Map([[3, Buffer.alloc(8, 7)], [9, Buffer.alloc(8, 1)]]));
      const bytes = index.toBytes();
      const back = OwnerIndex.fromBytes(bytes);
      expect(back.sameAs(index)).toBe(true);
      expect(back.geometry).toBe(index.geometry);
      expect(back.digestsOf(someIno)).toEqual(index.digestsOf(someIno));
      expect(back.toBytes().equals(bytes)).toBe(true);
      // The same answers for a query over the whole filesystem.
      const all = [{ offset: 0, length: fs.byteLength }];
      expect(shape(await back.update(fs, all))).toEqual(shape(await index.update(fs, all)));
      // Every truncation throws; so does a count inflated past what the bytes hold.
      for (const cut of [0, 4, 8, 20, bytes.length >> 1, bytes.length - 1]) expect(() => OwnerIndex.fromBytes(bytes.subarray(0, cut))).toThrow();
      const inflated = Buffer.from(bytes);
      const geometryEnd = 8 + 4 + index.geometry.length;
      inflated.writeUInt32LE(0xffffffff, geometryEnd);
      expect(() => OwnerIndex.fromBytes(inflated)).toThrow(/counts more than it holds/);
      expect(() => OwnerIndex.fromBytes(Buffer.concat([bytes, Buffer.alloc(1)]))).toThrow(/trailing/);
    } finally {
      await close();
    }
  });
});
