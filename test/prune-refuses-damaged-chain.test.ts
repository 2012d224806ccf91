// prune on a damaged chain (an image missing in the middle or at the base, a header that names
// another backing file, a child it would rebase gone) fails naming the damaged file and changes
// nothing: every file of the chain directory has the same content and mtime as before, and no
// journal is left to hide intact points. With two disks, the intact one's base is not committed
// into either.
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { PRUNE_JOURNAL, pruneChain, restoreDisk } from '../src/repo/index.js';
import { sameContent, tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { handmadeRepo, type HandmadeRepo } from './support/handmade-repo.js';

useCleanup();

/** Every file of `dir`: content hash, size and mtime. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(dir).sort()) {
    const st = statSync(join(dir, f));
    out[f] = `${createHash('sha256').update(readFileSync(join(dir, f))).digest('hex')} ${st.size} ${st.mtimeMs}`;
  }
  return out;
}

function image(h: HandmadeRepo, point: number, target = 'vda'): string {
  return join(h.dir, h.points[point]!.manifest.disks.find((d) => d.target === target)!.file);
}

async function expectRefused(h: HandmadeRepo, damaged: string): Promise<void> {
  const before = snapshot(h.dir);
  const err = await pruneChain(h.repo, h.domain, h.consumer, 2).then(() => undefined, (e: Error) => e);
  expect(err, 'the prune did not fail').toBeInstanceOf(Error);
  expect(err!.message).toContain(damaged);
  expect(err!.message).toContain('nothing was changed');
  expect(readdirSync(h.dir)).not.toContain(PRUNE_JOURNAL);
  expect(snapshot(h.dir)).toEqual(before);
  // Every point is still listed.
  expect((await h.repo.list(h.domain)).map((m) => m.id)).toEqual(h.points.map((p) => p.id));
}

describe('prune refuses a damaged chain and changes nothing', () => {
  // 5 points of one chain, keep 2: point 4 (index 3) is kept, 1-3 are merged into the base.
  it('an image missing in the middle of the chain it merges', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 } });
    rmSync(image(h, 1));
    await expectRefused(h, image(h, 1));
  });

  it('the base image missing', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 } });
    rmSync(image(h, 0));
    await expectRefused(h, image(h, 0));
  });

  it('two disks, one intact: its base is not committed into before the other fails', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 }, disks: ['vda', 'vdb'] });
    rmSync(image(h, 1, 'vdb'));
    await expectRefused(h, image(h, 1, 'vdb'));
  });

  it('an image whose header names another backing file than the manifests', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 } });
    await execa('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', h.points[0]!.manifest.disks[0]!.file, '-F', 'qcow2', image(h, 2)]);
    await expectRefused(h, image(h, 2));
  });

  it('the child of the kept point, which the prune rebases, missing', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 } });
    rmSync(image(h, 4));
    await expectRefused(h, image(h, 4));
  });

  it('an intact chain is pruned and its kept points restore exactly', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 }, refs: true });
    const r = await pruneChain(h.repo, h.domain, h.consumer, 2);
    expect(r.kept).toEqual([h.points[3]!.id, h.points[4]!.id]);
    for (const p of h.points.slice(3)) {
      const out = join(tempDir('out'), `${p.id}.qcow2`);
      await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: out, at: p.id });
      expect((await sameContent(p.refs.vda!, 'raw', out, 'qcow2')).same, p.id).toBe(true);
    }
  });
});
