// Reads a disabled dirty bitmap's set bits over NBD (meta context qemu:dirty-bitmap:NAME).
import type { Extent } from '../extent/index.js';
import { CONTEXT_DIRTY_BITMAP_PREFIX, NBD_STATE_DIRTY, NbdClient } from '../nbd/index.js';

/**
 * The dirty ranges, merged and sorted. A terabyte bitmap at 1% scattered is hundreds of thousands of
 * extents: walking the client's flat per-reply runs (no object or await per extent) and allocating
 * only the dirty ranges keeps this close to `nbdinfo --map` reading the same bitmap.
 */
export async function readDirtyExtents(uri: string, bitmap: string, sizeBytes: number, opts: { timeoutMs?: number } = {}): Promise<Extent[]> {
  const context = `${CONTEXT_DIRTY_BITMAP_PREFIX}${bitmap}`;
  const nbd = await NbdClient.connect(uri, { metaContexts: [context], timeoutMs: opts.timeoutMs });
  try {
    const out: Extent[] = [];
    let last: Extent | undefined;
    for await (const run of nbd.blockStatusRuns(context, 0, Math.min(sizeBytes, nbd.size))) {
      const ex = run.extents;
      let pos = run.offset;
      for (let i = 0; i < ex.length; i += 2) {
        const len = ex[i]!;
        if ((ex[i + 1]! & NBD_STATE_DIRTY) !== 0) {
          if (last !== undefined && last.offset + last.length === pos) last.length += len;
          else out.push((last = { offset: pos, length: len }));
        }
        pos += len;
      }
    }
    return out;
  } finally {
    await nbd.close();
  }
}
