// What a sync copies: the blocks modified since the target's last sync *and* in use by the guest's
// filesystems at the snapshot's instant (patent US8694746). Blocks modified and free now are
// skipped (deleted files, temp files); anything the used map could not read counts as used. A
// target that is new or not the one synced last time is seeded with every used block. With
// discard, the target also frees what is free now and may hold stale data there.
import { intersect, merge, subtract, totalBytes, type Extent } from '../extent/index.js';

export interface UsedMapInput {
  /** Byte extents of the disk in use (filesystem blocks in use, and every region not mapped). */
  used: readonly Extent[];
}

export interface SyncPlanInput {
  sizeBytes: number;
  /** The disk's changes since the target's consumer's last pass (sorted, merged). */
  modified: readonly Extent[];
  used: UsedMapInput;
  /** Why the target is seeded with everything used (new target, another target, full pass), or undefined. */
  seed?: string;
  discard: boolean;
  /** The used map of the last sync to this target, when known: blocks freed since then are discarded. */
  previousUsed?: readonly Extent[];
}

export interface SyncPlan {
  seed: boolean;
  reason?: string;
  copy: Extent[];
  discard: Extent[];
  modifiedBytes: number;
  modifiedUsedBytes: number;
  /** Modified, but free now: not shipped. */
  skippedFreeBytes: number;
  usedBytes: number;
}

export function planSync(i: SyncPlanInput): SyncPlan {
  const whole: Extent[] = [{ offset: 0, length: i.sizeBytes }];
  const used = merge(i.used.used);
  const free = subtract(whole, used);
  const modified = merge(i.modified);
  const modifiedUsed = intersect(modified, used);
  const modifiedBytes = totalBytes(modified);
  const modifiedUsedBytes = totalBytes(modifiedUsed);
  const base = { modifiedBytes, modifiedUsedBytes, skippedFreeBytes: modifiedBytes - modifiedUsedBytes, usedBytes: totalBytes(used) };
  if (i.seed !== undefined) {
    return { ...base, seed: true, reason: i.seed, copy: used, discard: i.discard ? free : [] };
  }
  // Free now and possibly holding data on the target: modified since (the guest wrote, then freed),
  // or used at the last sync. Without the last map, every free block.
  const stale = i.previousUsed ? intersect(merge([...modified, ...i.previousUsed]), free) : free;
  return { ...base, seed: false, copy: modifiedUsed, discard: i.discard ? stale : [] };
}
