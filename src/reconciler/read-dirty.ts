// Reads a disabled dirty bitmap's set bits over NBD (meta context qemu:dirty-bitmap:NAME).
import { CONTEXT_DIRTY_BITMAP_PREFIX, NBD_STATE_DIRTY, NbdClient, selectExtents, type Extent } from '../nbd/index.js';

export async function readDirtyExtents(uri: string, bitmap: string, sizeBytes: number, opts: { timeoutMs?: number } = {}): Promise<Extent[]> {
  const context = `${CONTEXT_DIRTY_BITMAP_PREFIX}${bitmap}`;
  const nbd = await NbdClient.connect(uri, { metaContexts: [context], timeoutMs: opts.timeoutMs });
  try {
    return await selectExtents(nbd.blockStatus(context, 0, Math.min(sizeBytes, nbd.size)), (f) => (f & NBD_STATE_DIRTY) !== 0);
  } finally {
    await nbd.close();
  }
}
