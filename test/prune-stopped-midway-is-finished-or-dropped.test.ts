// A prune that stops after its journal (an error, not a kill) says truthfully what state it left:
// before its first commit it has merged nothing and can be dropped (--abort) or finished; after
// it, it can only be finished, and running it again does; a retry that finds the chain damaged
// before any commit drops the prune by itself, naming the file. The kept points always restore.
import { execa } from 'execa';
import { readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PRUNE_JOURNAL, abortPrune, pruneChain, restoreDisk, type PruneStep } from '../src/repo/index.js';
import { sameContent, tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { handmadeRepo, type HandmadeRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

/** A fault that fails (throws, as a full disk or an I/O error would) right after `step`. */
function failAfter(step: PruneStep) {
  return { fault: (s: PruneStep) => { if (s === step) throw new Error(`injected failure after ${s}`); } };
}

async function expectRestores(h: HandmadeRepo, ids: string[]): Promise<void> {
  expect((await h.repo.list(h.domain)).map((m) => m.id)).toEqual(ids);
  for (const id of ids) {
    const p = h.points.find((x) => x.id === id)!;
    const out = join(tempDir('out'), `${id}.qcow2`);
    await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: out, at: id });
    expect((await sameContent(p.refs.vda!, 'raw', out, 'qcow2')).same, id).toBe(true);
  }
}

const ids = (h: HandmadeRepo, from: number) => h.points.slice(from).map((p) => p.id);

describe('a prune that stopped half way', () => {
  it('before its first commit: the message says nothing was merged; --abort gives every point back', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 }, refs: true });
    const err = await pruneChain(h.repo, h.domain, h.consumer, 2, failAfter('journal')).then(() => undefined, (e: Error) => e);
    expect(err?.message).toContain('injected failure after journal');
    expect((err as { hint?: string }).hint).toMatch(/has not merged anything.*--abort/);
    await expectRestores(h, ids(h, 3));
    // Through the CLI, as an admin would.
    const r = await execa('node', [CLI, 'prune', '--repo', h.root, h.domain, '--consumer', h.consumer, '--abort', '--json'], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).restored).toEqual(ids(h, 0).slice(0, 3));
    expect(readdirSync(h.dir)).not.toContain(PRUNE_JOURNAL);
    await expectRestores(h, ids(h, 0));
  });

  it('before its first commit: running it again finishes it', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 }, refs: true });
    await expect(pruneChain(h.repo, h.domain, h.consumer, 2, failAfter('journal'))).rejects.toThrow(/injected/);
    const r = await pruneChain(h.repo, h.domain, h.consumer, 2);
    expect(r).toMatchObject({ resumed: true, kept: ids(h, 3) });
    await expectRestores(h, ids(h, 3));
  });

  it('after a commit: the message says the removed points no longer restore; --abort refuses; running it again finishes it', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 }, refs: true });
    const err = await pruneChain(h.repo, h.domain, h.consumer, 2, failAfter('commit')).then(() => undefined, (e: Error) => e);
    expect(err?.message).toContain('injected failure after commit');
    const hint = (err as { hint?: string }).hint ?? '';
    expect(hint).toContain('kept restore points are intact');
    expect(hint).toContain('no longer restore');
    expect(hint).not.toContain('--abort');
    await expectRestores(h, ids(h, 3));
    await expect(abortPrune(h.repo, h.domain, h.consumer)).rejects.toThrow(/cannot be undone/);
    const r = await pruneChain(h.repo, h.domain, h.consumer, 2);
    expect(r).toMatchObject({ resumed: true, kept: ids(h, 3), removed: ids(h, 0).slice(0, 3) });
    expect(readdirSync(h.dir)).not.toContain(PRUNE_JOURNAL);
    await expectRestores(h, ids(h, 3));
  });

  it('a retry that finds the chain damaged before any commit drops the prune, naming the file', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 }, refs: true });
    await expect(pruneChain(h.repo, h.domain, h.consumer, 2, failAfter('journal'))).rejects.toThrow(/injected/);
    const base = join(h.dir, h.points[0]!.manifest.disks[0]!.file);
    rmSync(base);
    const err = await pruneChain(h.repo, h.domain, h.consumer, 2).then(() => undefined, (e: Error) => e);
    expect(err?.message).toContain(base);
    expect((err as { hint?: string }).hint).toContain('dropped');
    expect(readdirSync(h.dir)).not.toContain(PRUNE_JOURNAL);
    // The points that do not need the lost base are listed again (and still restore).
    expect((await h.repo.list(h.domain)).map((m) => m.id)).toEqual(ids(h, 0));
  });

  it('a whole old chain being removed, stopped after one deletion: --abort gives the rest back intact', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 5 }, fullAt: [4], refs: true });
    await expect(pruneChain(h.repo, h.domain, h.consumer, 2, failAfter('delete'))).rejects.toThrow(/injected/);
    const r = await abortPrune(h.repo, h.domain, h.consumer);
    // Deleted newest first: the older points left have their whole chain.
    expect(r.restored).toEqual(ids(h, 0).slice(0, 2));
    await expectRestores(h, [...ids(h, 0).slice(0, 2), ...ids(h, 3)]);
  });
});
