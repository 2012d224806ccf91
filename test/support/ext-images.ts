// Test images for the filesystem room: ext2/3/4 made by mkfs on sparse files, and what e2fsprogs says about them.
import { closeSync, mkdirSync, openSync, readSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import type { Extent, ExtentPair } from '../../src/extent/index.js';
import { lcg } from './nbd-servers.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** Creates a sparse file of `size` bytes and runs `mkfs` on it (e.g. ['mkfs.ext4', '-b', '1024']). */
export async function makeFs(path: string, size: number, mkfs: string[], populateFrom?: string): Promise<void> {
  await execa('truncate', ['-s', String(size), path]);
  const args = [...mkfs.slice(1), '-q', '-F', ...(populateFrom ? ['-d', populateFrom] : []), path];
  await execa(mkfs[0], args);
}

/** A tree with the shapes a reader must handle: small and large files, holes, many extents, a big directory, symlinks. */
export function writeTree(dir: string, seed = 1): void {
  const rnd = lcg(seed);
  const bytes = (n: number) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = rnd() >>> 24;
    return b;
  };
  mkdirSync(join(dir, 'docs/deep/er/still'), { recursive: true });
  mkdirSync(join(dir, 'big-dir'), { recursive: true });
  writeFileSync(join(dir, 'empty'), '');
  writeFileSync(join(dir, 'tiny.txt'), 'hello, world\n');
  writeFileSync(join(dir, 'docs/deep/er/still/note.txt'), 'deep note\n');
  writeFileSync(join(dir, 'medium.bin'), bytes(300 * KiB + 17));
  writeFileSync(join(dir, 'large.bin'), bytes(3 * MiB + 5));
  // Islands of data in a sparse file: many extents (an extent tree of depth >= 1 on ext4).
  const fd = openSync(join(dir, 'islands.bin'), 'w');
  const island = bytes(4 * KiB);
  for (let i = 0; i < 200; i++) writeSync(fd, island, 0, island.length, i * 64 * KiB + (i % 3) * 512);
  closeSync(fd);
  // A hole up front, data far in: the indirect levels of an ext2/3 block map.
  const fd2 = openSync(join(dir, 'far.bin'), 'w');
  writeSync(fd2, Buffer.from('start'), 0, 5, 0);
  writeSync(fd2, Buffer.from('far away'), 0, 8, 70 * MiB);
  closeSync(fd2);
  // Enough entries for an htree (dir_index) directory.
  for (let i = 0; i < 400; i++) writeFileSync(join(dir, 'big-dir', `file-with-a-longish-name-${i}.txt`), `content ${i}\n`);
  symlinkSync('tiny.txt', join(dir, 'fast-link'));
  symlinkSync('docs/deep/er/still/note.txt', join(dir, 'rel-link'));
  symlinkSync('/docs/deep/er/still/note.txt'.padStart(120, '/'), join(dir, 'slow-link'));
}

export async function debugfs(image: string, request: string, write = false): Promise<string> {
  const r = await execa('debugfs', [...(write ? ['-w'] : []), '-R', request, image]);
  return r.stdout;
}

/** What dumpe2fs says: geometry, and the used blocks as byte extents (the complement of its free ranges). */
export async function dumpe2fsUsed(image: string): Promise<{ blockSize: number; blocks: number; used: Extent[]; uninitGroups: number; groups: number }> {
  const out = (await execa('dumpe2fs', [image])).stdout;
  const field = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(out);
    if (!m) throw new Error(`dumpe2fs printed no ${name}`);
    return Number(m[1]);
  };
  const blockSize = field('Block size');
  const blocks = field('Block count');
  const free: [number, number][] = [];
  for (const m of out.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1].split(',').map((s) => s.trim()).filter(Boolean)) {
      const [a, b] = part.split('-').map(Number);
      free.push([a, (b ?? a) + 1]);
    }
  }
  free.sort((x, y) => x[0] - y[0]);
  const used: Extent[] = [];
  let at = 0;
  for (const [a, b] of free) {
    if (a > at) used.push({ offset: at * blockSize, length: (a - at) * blockSize });
    at = Math.max(at, b);
  }
  if (at < blocks) used.push({ offset: at * blockSize, length: (blocks - at) * blockSize });
  const groups = [...out.matchAll(/^Group \d+:/gm)].length;
  const uninitGroups = [...out.matchAll(/^Group \d+:.*BLOCK_UNINIT/gm)].length;
  return { blockSize, blocks, used, uninitGroups, groups };
}

/**
 * The `granule`-sized pieces (64 KiB by default) in which two images of one size differ, merged, as
 * [offset, length]: what a dirty bitmap of that granularity records between the two states.
 */
export function changedGranules(a: string, b: string, granule = 64 * KiB): ExtentPair[] {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.alloc(granule);
  const bb = Buffer.alloc(granule);
  const out: ExtentPair[] = [];
  try {
    for (let at = 0; at < statSync(a).size; at += granule) {
      readSync(fa, ba, 0, granule, at);
      readSync(fb, bb, 0, granule, at);
      if (ba.equals(bb)) continue;
      const last = out.at(-1);
      if (last && last[0] + last[1] === at) last[1] += granule;
      else out.push([at, granule]);
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return out;
}
