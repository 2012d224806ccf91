// The GETFSMAP parser on real `xfs_io -r -c fsmap` output of loop-mounted ext4 (several mkfs
// feature sets) and XFS images, after files were written and some deleted: its free space equals
// what dumpe2fs (block bitmaps) and xfs_db (free-space btrees) read from the unmounted image, and
// its used map is the rest of the device. Bad output is an error, never an empty map.
import { execa } from 'execa';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { merge, totalBytes as total, type Extent } from '../src/extent/index.js';
import { complement, freeExtents, parseFsmap, usedExtents, FsmapParseError } from '../src/usedmap/index.js';
import { patternBuffer } from '../src/guestimage/index.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { ext4FreeExtents, xfsFreeExtents } from './support/fs-tools.js';

useCleanup();
const MiB = 1024 * 1024;

/** mkfs on a sparse file, loop-mount it, write and delete files, run xfs_io fsmap, unmount. */
async function mapOf(mkfs: string[], size: number): Promise<{ image: string; fsmap: string; device: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'virtcbt-fsmap-'));
  onCleanup(() => rm(dir, { recursive: true, force: true }));
  const image = join(dir, 'fs.img');
  const mnt = join(dir, 'mnt');
  await mkdir(mnt);
  await execa('truncate', ['-s', String(size), image]);
  await execa(mkfs[0], [...mkfs.slice(1), image]);
  await execa('mount', ['-o', 'loop', image, mnt]);
  let mounted = true;
  onCleanup(() => (mounted ? execa('umount', [mnt], { reject: false }) : undefined));
  // Files of several sizes, then every other one deleted: the free map gets holes in the middle.
  for (let i = 0; i < 24; i++) {
    await mkdir(join(mnt, `d${i % 4}`), { recursive: true });
    await writeFile(join(mnt, `d${i % 4}`, `f${i}`), patternBuffer((i + 1) * 97 * 1024, i + 1));
  }
  await execa('sync');
  for (let i = 0; i < 24; i += 2) await rm(join(mnt, `d${i % 4}`, `f${i}`));
  // Read while frozen, as the guest does: the freeze commits the journal and releases freed blocks.
  await execa('fsfreeze', ['--freeze', mnt]);
  let fsmap: string;
  try {
    fsmap = (await execa('xfs_io', ['-r', '-c', 'fsmap', mnt])).stdout;
  } finally {
    await execa('fsfreeze', ['--unfreeze', mnt]);
  }
  const { stdout: dev } = await execa('findmnt', ['-n', '-o', 'MAJ:MIN', mnt]);
  await execa('umount', [mnt]);
  mounted = false;
  return { image, fsmap, device: dev.trim() };
}

describe('GETFSMAP (xfs_io fsmap) parsed', () => {
  const ext4Cases: [string, string[], number][] = [
    ['ext4 4 KiB blocks, 64bit, metadata_csum', ['mkfs.ext4', '-q', '-F', '-b', '4096', '-O', '64bit,metadata_csum'], 96 * MiB],
    ['ext4 1 KiB blocks, small groups (uninitialised bitmaps)', ['mkfs.ext4', '-q', '-F', '-b', '1024', '-g', '2048', '-N', '256'], 48 * MiB],
    ['ext4 without flex_bg', ['mkfs.ext4', '-q', '-F', '-b', '4096', '-O', '^flex_bg'], 80 * MiB],
  ];
  for (const [name, mkfs, size] of ext4Cases) {
    it(`${name}: free space equals dumpe2fs's, used is the rest`, async () => {
      const { image, fsmap, device } = await mapOf(mkfs, size);
      const records = parseFsmap(fsmap);
      expect(records.length).toBeGreaterThan(3);
      const ref = await ext4FreeExtents(image);
      expect(freeExtents(records, device)).toEqual(ref.free);
      expect(usedExtents(records, device, ref.size)).toEqual(complement(ref.free, ref.size));
    });
  }

  // ext3 (block-mapped files) through the ext4 driver: the kernel still holds some blocks of
  // deleted files, or preallocated for them, that the on-disk bitmap already calls free. GETFSMAP
  // then says "used" where dumpe2fs says free: the safe side (a sync copies a little more), never
  // the other way round.
  it('ext3 (journal, block-mapped files): nothing GETFSMAP calls free is used in the bitmaps', async () => {
    const { image, fsmap, device } = await mapOf(['mkfs.ext3', '-q', '-F', '-b', '1024'], 48 * MiB);
    const ref = await ext4FreeExtents(image);
    const free = freeExtents(parseFsmap(fsmap), device);
    expect(subtract(free, ref.free)).toEqual([]);
    expect(total(free)).toBeGreaterThan(0.9 * total(ref.free));
  });

  it('XFS: free space equals xfs_db freesp less the AG free lists', async () => {
    const { image, fsmap, device } = await mapOf(['mkfs.xfs', '-q', '-f'], 320 * MiB);
    const records = parseFsmap(fsmap);
    const ref = await xfsFreeExtents(image);
    expect(freeExtents(records, device)).toEqual(ref.free);
    expect(usedExtents(records, device, ref.size)).toEqual(complement(ref.free, ref.size));
  });

  it('records of another device (an external log) are left out of this device\'s map', () => {
    const text = '\t0: 254:1 [0..7]: static fs metadata 8\n\t1: 254:1 [8..15]: free space 8\n\t2: 254:9 [0..2047]: free space 2048\n';
    const r = parseFsmap(text);
    expect(freeExtents(r, '254:1')).toEqual([{ offset: 4096, length: 4096 }]);
    // Space past the map's end counts as used, never as free.
    expect(usedExtents(r, '254:1', 16384)).toEqual([{ offset: 0, length: 4096 }, { offset: 8192, length: 8192 }]);
  });

  it('an error message, a truncated line or a length that does not match its range is an error', () => {
    expect(() => parseFsmap("xfs_io: xfsctl(XFS_IOC_GETFSMAP) iflags=0x0 [\"m\"]: Invalid argument\n")).toThrow(FsmapParseError);
    expect(() => parseFsmap('\t0: 254:1 [0..7]: static fs metadata 8\n\t1: 254:1 [8..1')).toThrow(/line 2/);
    expect(() => parseFsmap('\t0: 254:1 [0..7]: free space 9\n')).toThrow(/does not match its length/);
  });
});

/** a minus b (both merged). */
function subtract(a: Extent[], b: Extent[]): Extent[] {
  const size = Math.max(0, ...a.map((e) => e.offset + e.length), ...b.map((e) => e.offset + e.length));
  const notB = complement(b, size);
  const out: Extent[] = [];
  for (const x of a) {
    for (const y of notB) {
      const s = Math.max(x.offset, y.offset);
      const e = Math.min(x.offset + x.length, y.offset + y.length);
      if (e > s) out.push({ offset: s, length: e - s });
    }
  }
  return merge(out);
}
