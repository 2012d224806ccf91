// Block-status extents: runs of NBD block status merged by flags, and the plain extents (the extent
// room's shape) whose flags satisfy a predicate.
import type { Extent } from '../extent/index.js';

/** One block-status extent: `flags` as the metadata context defines them (base:allocation: hole=1, zero=2). */
export interface StatusExtent extends Extent {
  flags: number;
}

/** Merges adjacent status extents with equal flags, fed one at a time (synchronous, for hot loops). */
export class RunMerger {
  private cur: StatusExtent | undefined;

  /** Adds `e`; returns the run it closed, if any. */
  push(e: StatusExtent): StatusExtent | undefined {
    const cur = this.cur;
    if (cur && cur.flags === e.flags && cur.offset + cur.length === e.offset) {
      cur.length += e.length;
      return undefined;
    }
    this.cur = { offset: e.offset, length: e.length, flags: e.flags };
    return cur;
  }

  /** The last open run. */
  end(): StatusExtent | undefined {
    const cur = this.cur;
    this.cur = undefined;
    return cur;
  }
}

/** Merges adjacent status extents with equal flags (what `nbdinfo --map` prints). */
export async function* coalesce(it: AsyncIterable<StatusExtent> | Iterable<StatusExtent>): AsyncGenerator<StatusExtent> {
  const m = new RunMerger();
  for await (const e of it) {
    const done = m.push(e);
    if (done) yield done;
  }
  const last = m.end();
  if (last) yield last;
}

/** coalesce() over batches of extents: one await per batch. */
export async function* coalesceBatches(it: AsyncIterable<StatusExtent[]>): AsyncGenerator<StatusExtent[]> {
  const m = new RunMerger();
  for await (const batch of it) {
    const out: StatusExtent[] = [];
    for (const e of batch) {
      const done = m.push(e);
      if (done) out.push(done);
    }
    if (out.length) yield out;
  }
  const last = m.end();
  if (last) yield [last];
}

/** The extents whose flags satisfy `pred`, merged: e.g. dirty ranges, or data (non-zero) ranges. */
export async function selectExtents(
  it: AsyncIterable<StatusExtent> | Iterable<StatusExtent>,
  pred: (flags: number) => boolean,
): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) {
    if (!pred(e.flags)) continue;
    const last = out[out.length - 1];
    if (last && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length });
  }
  return out;
}
