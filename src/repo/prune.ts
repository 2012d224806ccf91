// Prune: keep the newest N restore points of a consumer's chain. Older chains go whole; in the
// chain of the oldest kept point K, every older overlay is committed into the chain's base
// (qemu-img commit), which then becomes K's standalone image under a new name (a hard link),
// and K's child is rebased onto it. A journal written first hides the points being removed and
// lets the next prune finish a killed one. At every step each kept point still reads right:
// committing into the base only changes clusters that the overlays above it mask.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { link, lstat, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError, VirtcbtError } from '../util/errors.js';
import { fsyncDir, readManifest, writeFileDurable, writeManifest, type Manifest } from './manifest.js';
import { inChain, manifestName } from './names.js';
import { PRUNE_JOURNAL, Repository, type PruneJournal } from './repository.js';

export interface PruneResult {
  domain: string;
  consumer: string;
  kept: string[];
  removed: string[];
  /** The restore point older increments were merged into (null: none needed merging). */
  mergedInto: string | null;
  /** Files deleted. */
  deleted: string[];
  /** An interrupted prune was finished first. */
  resumed: boolean;
}

async function qemuImg(args: string[], cwd: string, what: string): Promise<void> {
  const r = await execa('qemu-img', args, { cwd, reject: false });
  if (r.exitCode !== 0) {
    throw new VirtcbtError(`${what} failed: ${r.stderr.trim() || `qemu-img exit ${r.exitCode}`}`, {
      hint: 'Nothing is lost: run the prune again to finish it (the points it removes stay hidden until then)',
    });
  }
}

/** Image files of `target` from `top` down to its standalone base, by following the manifests' backing fields. */
function diskChain(chain: Manifest[], top: Manifest, target: string): string[] {
  const files: string[] = [];
  let cur = top.disks.find((d) => d.target === target);
  while (cur) {
    files.push(cur.file);
    if (!cur.backing) return files;
    const backing = cur.backing;
    cur = chain.find((m) => m.disks.some((d) => d.target === target && d.file === backing))?.disks.find((d) => d.target === target);
    if (!cur) throw new VirtcbtError(`restore point ${top.id}, disk ${target}: no manifest names its backing file ${backing}`, { hint: 'Run `virtcbt verify`' });
  }
  return files;
}

/** Points between which a crash test kills the prune (VIRTCBT_FAULT_PRUNE_STEP). */
export type PruneStep = 'journal' | 'commit' | 'rebase' | 'manifest' | 'delete';
export const PRUNE_STEPS: readonly PruneStep[] = ['journal', 'commit', 'rebase', 'manifest', 'delete'];

export interface PruneOptions {
  fault?: (step: PruneStep) => void;
}

export async function pruneChain(repo: Repository, domain: string, consumer: string, keep: number, opts: PruneOptions = {}): Promise<PruneResult> {
  if (!Number.isInteger(keep) || keep < 1) throw new UsageError('--keep must be at least 1');
  const lock = await repo.lock(domain, consumer, `prune of ${domain} for ${consumer}`);
  try {
    const dir = repo.chainDir(domain, consumer);
    let resumed = false;
    const pending = await repo.pruneJournal(domain, consumer);
    let finished: { removed: string[]; mergedInto: string | null; deleted: string[] } = { removed: [], mergedInto: null, deleted: [] };
    if (pending) {
      finished = await applyJournal(repo, domain, consumer, pending, opts);
      resumed = true;
    }
    const chain = await repo.chain(domain, consumer);
    if (chain.length <= keep) {
      return { domain, consumer, kept: chain.map((m) => m.id), ...finished, resumed };
    }
    const k = chain[chain.length - keep]!;
    const removing = chain.slice(0, chain.length - keep).map((m) => m.id);
    const disks = k.disks.flatMap((d) => {
      const files = diskChain(chain, k, d.target);
      if (files.length === 1) return [];
      return [{ target: d.target, base: files[files.length - 1]!, top: d.file, merged: `${k.id}.${d.target}.merged.qcow2` }];
    });
    // Every image the merge writes or links is a regular file of the chain (a symlink there is
    // refused, naming it) before anything changes.
    for (const d of disks) for (const f of diskChain(chain, k, d.target)) await repo.imagePath(domain, consumer, f);
    const journal: PruneJournal = { keep, removing, into: disks.length > 0 ? k.id : null, disks, startedAt: new Date().toISOString() };
    await writeFileDurable(join(dir, PRUNE_JOURNAL), JSON.stringify(journal, null, 2));
    opts.fault?.('journal');
    const r = await applyJournal(repo, domain, consumer, journal, opts);
    const kept = (await repo.chain(domain, consumer)).map((m) => m.id);
    return {
      domain, consumer, kept, removed: [...finished.removed, ...r.removed], mergedInto: r.mergedInto ?? finished.mergedInto,
      deleted: [...finished.deleted, ...r.deleted], resumed,
    };
  } finally {
    await lock.release();
  }
}

/** Carries a journal out; every step is safe to repeat after a crash. */
async function applyJournal(repo: Repository, domain: string, consumer: string, j: PruneJournal, opts: PruneOptions): Promise<{ removed: string[]; mergedInto: string | null; deleted: string[] }> {
  const dir = repo.chainDir(domain, consumer);
  const all = await repo.chain(domain, consumer, { includePruning: true });
  if (j.into) {
    let k = all.find((m) => m.id === j.into);
    if (!k) throw new VirtcbtError(`prune journal names restore point ${j.into}, which has no manifest`, { domain, hint: `Inspect ${join(dir, PRUNE_JOURNAL)}` });
    for (const d of j.disks) {
      const kd = k.disks.find((x) => x.target === d.target)!;
      if (kd.file === d.merged) continue;
      const merged = inChain(dir, d.merged);
      if (!(await lstat(merged).catch(() => undefined))) {
        // Through imagePath: a symlink at base or top is refused, never committed into or linked.
        const base = await repo.imagePath(domain, consumer, d.base);
        await qemuImg(['commit', '-q', '-d', '-b', base, await repo.imagePath(domain, consumer, d.top)], dir, `merging ${d.top} into ${d.base}`);
        opts.fault?.('commit');
        await link(base, merged);
        await fsyncDir(dir);
      } else {
        await repo.imagePath(domain, consumer, d.merged);
      }
      // The child of K reads K's state through the merged image from now on.
      for (const [i, cached] of all.entries()) {
        const at = cached.disks.findIndex((x) => x.target === d.target && x.backing === d.top);
        if (at < 0) continue;
        // The chain's manifests are shared and frozen: the rebased child's is changed as a copy.
        const child = structuredClone(cached);
        const cd = child.disks[at]!;
        await qemuImg(['rebase', '-u', '-b', d.merged, '-F', 'qcow2', await repo.imagePath(domain, consumer, cd.file)], dir, `rebasing ${cd.file} onto ${d.merged}`);
        opts.fault?.('rebase');
        cd.backing = d.merged;
        await writeManifest(dir, child);
        all[i] = child;
      }
    }
    k = await readManifest(inChain(dir, manifestName(k.id)), { domain, consumer });
    for (const d of j.disks) {
      const kd = k.disks.find((x) => x.target === d.target)!;
      kd.file = d.merged;
      kd.backing = null;
    }
    if (k.disks.every((d) => d.backing === null)) k.parent = null;
    k.merged = [...new Set([...(k.merged ?? []), ...j.removing])];
    await writeManifest(dir, k);
    opts.fault?.('manifest');
  }
  const removed: string[] = [];
  for (const id of j.removing) {
    const p = inChain(dir, manifestName(id));
    if (existsSync(p)) {
      await rm(p, { force: true });
      removed.push(id);
      opts.fault?.('delete');
    }
  }
  await fsyncDir(dir);
  // With the journal's points gone, any image no manifest names is garbage.
  await rm(join(dir, PRUNE_JOURNAL), { force: true });
  const { removed: deleted } = await repo.cleanupLeftovers(domain, consumer, { keepMarker: true });
  await fsyncDir(dir);
  return { removed, mergedInto: j.into, deleted };
}
