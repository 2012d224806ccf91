// Prune: keep the newest N restore points of a consumer's chain. Older chains go whole; in the
// chain of the oldest kept point K, every older overlay is committed into the chain's base
// (qemu-img commit), which then becomes K's standalone image under a new name (a hard link),
// and K's child is rebased onto it. A journal written first hides the points being removed and
// lets the next prune finish a killed one. At every step each kept point still reads right:
// committing into the base only changes clusters that the overlays above it mask. Nothing is
// changed before every image the prune touches has been checked against the manifests; until its
// first commit a prune can be dropped (--abort), after it only finished: the commit destroys the
// removed points' data, which is why they are hidden from the moment the journal exists.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { link, lstat, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError, VirtcbtError, errorMessage } from '../util/errors.js';
import { checkDiskChain, checkImageFile, diskChain } from './chain.js';
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
    // The hint (what is lost, what to do) is added by pruneChain, which knows how far the prune got.
    throw new VirtcbtError(`${what} failed: ${r.stderr.trim() || `qemu-img exit ${r.exitCode}`}`);
  }
}

/** Points between which a crash test kills the prune (VIRTCBT_FAULT_PRUNE_STEP). */
export type PruneStep = 'journal' | 'commit' | 'rebase' | 'manifest' | 'delete';
export const PRUNE_STEPS: readonly PruneStep[] = ['journal', 'commit', 'rebase', 'manifest', 'delete'];

export interface PruneOptions {
  fault?: (step: PruneStep) => void;
}

/**
 * The journal as prune writes it. `committing` is set (durably) before the first commit into a
 * base: from then on the removed points' images no longer hold their data, and the prune can only
 * be finished, not dropped.
 */
type Journal = PruneJournal & { committing?: boolean };

/** Whether the prune may have committed into a base (a journal of an older virtcbt does not say: assume it has). */
function irreversible(j: Journal): boolean {
  return j.into !== null && j.committing !== false;
}

function journalPath(repo: Repository, domain: string, consumer: string): string {
  return join(repo.chainDir(domain, consumer), PRUNE_JOURNAL);
}

export async function pruneChain(repo: Repository, domain: string, consumer: string, keep: number, opts: PruneOptions = {}): Promise<PruneResult> {
  if (!Number.isInteger(keep) || keep < 1) throw new UsageError('--keep must be at least 1');
  const lock = await repo.lock(domain, consumer, `prune of ${domain} for ${consumer}`);
  try {
    const dir = repo.chainDir(domain, consumer);
    let resumed = false;
    const pending = await repo.pruneJournal(domain, consumer) as Journal | undefined;
    let finished: { removed: string[]; mergedInto: string | null; deleted: string[] } = { removed: [], mergedInto: null, deleted: [] };
    if (pending) {
      await checkJournal(repo, domain, consumer, pending);
      finished = await runJournal(repo, domain, consumer, pending, opts);
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
    // Everything this prune will touch is checked before the journal exists: a damaged chain is
    // reported with nothing changed.
    await checkPrunable(repo, domain, consumer, chain, k, disks);
    const journal: Journal = { keep, removing, into: disks.length > 0 ? k.id : null, disks, startedAt: new Date().toISOString(), committing: false };
    await writeFileDurable(join(dir, PRUNE_JOURNAL), JSON.stringify(journal, null, 2));
    try {
      opts.fault?.('journal');
    } catch (err) {
      throw await stopped(repo, domain, consumer, journal, err);
    }
    const r = await runJournal(repo, domain, consumer, journal, opts);
    const kept = (await repo.chain(domain, consumer)).map((m) => m.id);
    return {
      domain, consumer, kept, removed: [...finished.removed, ...r.removed], mergedInto: r.mergedInto ?? finished.mergedInto,
      deleted: [...finished.deleted, ...r.deleted], resumed,
    };
  } finally {
    await lock.release();
  }
}

/**
 * Drops a prune under way that has not committed anything yet: its journal goes, and the points
 * it was removing are visible (and intact) again. Returns those points.
 */
export async function abortPrune(repo: Repository, domain: string, consumer: string): Promise<{ dropped: boolean; restored: string[] }> {
  const lock = await repo.lock(domain, consumer, `prune --abort of ${domain} for ${consumer}`);
  try {
    const j = await repo.pruneJournal(domain, consumer) as Journal | undefined;
    if (!j) return { dropped: false, restored: [] };
    if (irreversible(j)) {
      throw new VirtcbtError(`the prune of ${domain} for ${consumer} has already merged images into ${j.into}: it cannot be undone`, {
        domain, hint: `Run \`virtcbt prune --repo ${repo.root} ${domain} --consumer ${consumer} --keep ${j.keep}\` to finish it`,
      });
    }
    // Before the first commit a prune has only deleted manifests, newest first: the points still
    // listed in the journal have their whole chains.
    const present = new Set((await repo.chain(domain, consumer, { includePruning: true })).map((m) => m.id));
    await rm(journalPath(repo, domain, consumer), { force: true });
    await fsyncDir(repo.chainDir(domain, consumer));
    return { dropped: true, restored: j.removing.filter((id) => present.has(id)) };
  } finally {
    await lock.release();
  }
}

/**
 * Checks, changing nothing, that every image the prune touches is what the manifests say: the
 * chain it merges (K's, down to the base) and the images it rebases (K's children); and that the
 * chain does not branch (no image outside it is backed by a file it merges but the top).
 */
async function checkPrunable(repo: Repository, domain: string, consumer: string, chain: readonly Manifest[], k: Manifest, disks: PruneJournal['disks']): Promise<void> {
  const dir = repo.chainDir(domain, consumer);
  const refuse = (what: string) => new VirtcbtError(`cannot prune ${domain} for ${consumer}: ${what}; nothing was changed`, {
    domain, hint: 'Run `virtcbt verify` for the whole report',
  });
  for (const d of k.disks) {
    const files = await checkDiskChain(dir, chain, k, d.target).catch((err) => { throw refuse(errorMessage(err)); });
    if (files.length === 1) continue;
    const inChain = new Set(files);
    const merged = disks.find((x) => x.target === d.target)!.merged;
    if (await lstat(join(dir, merged)).then(() => true, () => false)) {
      throw refuse(`${join(dir, merged)} already exists, where the merged image of ${k.id} would go (no manifest names it: move it away)`);
    }
    for (const m of chain) {
      for (const x of m.disks) {
        if (x.target !== d.target) continue;
        if (m.id !== k.id && inChain.has(x.file) && chain.indexOf(m) > chain.indexOf(k)) {
          throw refuse(`restore point ${m.id} names the image ${x.file} of ${k.id}'s chain as its own`);
        }
        if (x.backing === null || !inChain.has(x.backing) || inChain.has(x.file)) continue;
        if (x.backing !== d.file) throw refuse(`restore point ${m.id}'s image ${x.file} is backed by ${x.backing}, inside the chain the prune merges (the chain branches)`);
        // K's child: rebased onto the merged image.
        await checkImageFile(dir, x.file, [d.file], { domain, disk: x.target, id: m.id }).catch((err) => { throw refuse(errorMessage(err)); });
      }
    }
  }
}

/**
 * Before a prune under way goes on: the images it still has to merge and rebase must be there. If
 * they are not and nothing has been committed yet, the prune is dropped (nothing was changed);
 * after a commit it can only be reported.
 */
async function checkJournal(repo: Repository, domain: string, consumer: string, j: Journal): Promise<void> {
  if (!j.into) return;
  const dir = repo.chainDir(domain, consumer);
  try {
    const all = await repo.chain(domain, consumer, { includePruning: true });
    const k = all.find((m) => m.id === j.into);
    if (!k) throw new VirtcbtError(`its journal names restore point ${j.into}, which has no manifest`);
    for (const d of j.disks) {
      const kd = k.disks.find((x) => x.target === d.target);
      if (!kd) throw new VirtcbtError(`restore point ${k.id} has no disk ${d.target}, which its journal merges`);
      if (kd.file === d.merged || existsSync(join(dir, d.merged))) continue; // merged already
      await checkDiskChain(dir, all, k, d.target, { journal: j });
    }
  } catch (err) {
    if (!irreversible(j)) {
      await rm(journalPath(repo, domain, consumer), { force: true });
      await fsyncDir(dir);
      throw new VirtcbtError(`the interrupted prune of ${domain} for ${consumer} cannot go on: ${errorMessage(err)}`, {
        domain, cause: err, hint: `It had not changed anything and was dropped: the restore points it was removing are listed again. Run \`virtcbt verify --repo ${repo.root} ${domain}\``,
      });
    }
    throw new VirtcbtError(`the interrupted prune of ${domain} for ${consumer} cannot be finished: ${errorMessage(err)}`, {
      domain, cause: err, hint: `It had already merged images into ${j.into}, so it cannot be dropped, and the points it removes (${j.removing.join(', ')}) stay hidden. Run \`virtcbt verify --repo ${repo.root} ${domain}\` to see which restore points still restore`,
    });
  }
}

/** Carries a journal out; a failure says truthfully what state it left and how to go on. */
async function runJournal(repo: Repository, domain: string, consumer: string, j: Journal, opts: PruneOptions): Promise<{ removed: string[]; mergedInto: string | null; deleted: string[] }> {
  try {
    return await applyJournal(repo, domain, consumer, j, opts);
  } catch (err) {
    throw await stopped(repo, domain, consumer, j, err);
  }
}

/** The error of a prune that stopped after writing its journal: what state it left, and how to go on. */
async function stopped(repo: Repository, domain: string, consumer: string, j: Journal, err: unknown): Promise<VirtcbtError> {
  const now = await repo.pruneJournal(domain, consumer) as Journal | undefined;
  const again = `virtcbt prune --repo ${repo.root} ${domain} --consumer ${consumer} --keep ${j.keep}`;
  const hint = !now
    ? 'The prune itself is complete; files it could not delete are removed by the next backup or prune'
    : !irreversible(now)
      ? `It has not merged anything, and the kept restore points are intact. Fix the cause, then run \`${again}\` to finish it, or \`virtcbt prune --repo ${repo.root} ${domain} --consumer ${consumer} --abort\` to drop it (the points it has not removed yet are listed again)`
      : `The kept restore points are intact; the points it removes (${now.removing.join(', ')}) no longer restore and stay hidden. Fix the cause, then run \`${again}\` to finish it`;
  return new VirtcbtError(`prune of ${domain} for ${consumer} stopped: ${errorMessage(err)}`, { domain, cause: err, hint });
}

/** Carries a journal out; every step is safe to repeat after a crash. */
async function applyJournal(repo: Repository, domain: string, consumer: string, j: Journal, opts: PruneOptions): Promise<{ removed: string[]; mergedInto: string | null; deleted: string[] }> {
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
        if (j.committing === false) {
          // From the first commit on, the removed points' data is gone: no more going back.
          j.committing = true;
          await writeFileDurable(inChain(dir, PRUNE_JOURNAL), JSON.stringify(j, null, 2));
        }
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
  // Newest first: a prune stopped half way (before any commit) leaves the older points it did
  // not get to with their whole chains, so that dropping it gives them back intact.
  for (const id of [...j.removing].reverse()) {
    const p = inChain(dir, manifestName(id));
    if (existsSync(p)) {
      await rm(p, { force: true });
      removed.push(id);
      opts.fault?.('delete');
    }
  }
  removed.reverse();
  await fsyncDir(dir);
  // With the journal's points gone, any image no manifest names is garbage.
  await rm(join(dir, PRUNE_JOURNAL), { force: true });
  const { removed: deleted } = await repo.cleanupLeftovers(domain, consumer, { keepMarker: true });
  await fsyncDir(dir);
  return { removed, mergedInto: j.into, deleted };
}
