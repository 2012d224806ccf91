// Free space of ext4 and XFS images as their own tools report it (dumpe2fs, xfs_db), as byte
// extents: the reference the GETFSMAP-based used-block maps are checked against.
import { execa } from 'execa';
import { merge, type Extent } from '../../src/extent/index.js';

/** ext2/3/4: every group's "Free blocks:" list from dumpe2fs (reads the block bitmaps). */
export async function ext4FreeExtents(image: string): Promise<{ free: Extent[]; size: number }> {
  const r = await execa('dumpe2fs', [image], { reject: false });
  if (r.exitCode !== 0) throw new Error(`dumpe2fs ${image} failed: ${r.stderr}`);
  const bs = Number(/^Block size:\s+(\d+)/m.exec(r.stdout)?.[1]);
  const count = Number(/^Block count:\s+(\d+)/m.exec(r.stdout)?.[1]);
  if (!bs || !count) throw new Error(`dumpe2fs ${image}: no block size or count`);
  const free: Extent[] = [];
  for (const m of r.stdout.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1].split(',').map((s) => s.trim()).filter(Boolean)) {
      const [a, b] = part.split('-').map(Number);
      free.push({ offset: a * bs, length: ((b ?? a) - a + 1) * bs });
    }
  }
  return { free: merge(free), size: count * bs };
}

/**
 * XFS: the free-space btrees as `xfs_db freesp -d` lists them, less the AG free lists (freesp
 * counts AGFL blocks as free; GETFSMAP reports them as AG metadata, which they are).
 */
export async function xfsFreeExtents(image: string): Promise<{ free: Extent[]; size: number }> {
  const db = (cmds: string[]) => execa('xfs_db', ['-r', ...cmds.flatMap((c) => ['-c', c]), image]).then((r) => r.stdout);
  const geo = await db(['sb 0', 'p agblocks blocksize agcount dblocks']);
  const num = (k: string) => Number(new RegExp(`^${k} = (\\d+)`, 'm').exec(geo)?.[1]);
  const agblocks = num('agblocks');
  const bs = num('blocksize');
  const agcount = num('agcount');
  const dblocks = num('dblocks');
  const agfl = new Set<string>();
  for (let ag = 0; ag < agcount; ag++) {
    const out = await db([`agf ${ag}`, 'p flfirst fllast flcount', `agfl ${ag}`, 'p bno']);
    const first = Number(/^flfirst = (\d+)/m.exec(out)?.[1]);
    const count = Number(/^flcount = (\d+)/m.exec(out)?.[1]);
    const slots = new Map<number, string>();
    for (const m of /^bno\[[^\]]*\] = (.*)$/m.exec(out)?.[1].matchAll(/(\d+):(\w+)/g) ?? []) slots.set(Number(m[1]), m[2]);
    for (let i = 0; i < count; i++) {
      const b = slots.get((first + i) % slots.size);
      if (b && b !== 'null') agfl.add(`${ag}:${b}`);
    }
  }
  const free: Extent[] = [];
  for (const m of (await db(['freesp -d'])).matchAll(/^\s+(\d+)\s+(\d+)\s+(\d+)$/gm)) {
    const [ag, bno, len] = [Number(m[1]), Number(m[2]), Number(m[3])];
    for (let b = bno; b < bno + len; b++) {
      if (len === 1 && agfl.has(`${ag}:${b}`)) continue;
      free.push({ offset: (ag * agblocks + b) * bs, length: bs });
    }
  }
  return { free: merge(free), size: dblocks * bs };
}
