// Allocated extents of a disk (base:allocation over NBD): what a full pass must cover. Areas the
// whole backing chain leaves unallocated read as zeros and need no copying.
import type { Extent } from '../extent/index.js';
import { CONTEXT_BASE_ALLOCATION, NBD_STATE_HOLE, NbdClient, selectExtents } from '../nbd/index.js';
import type { QmpExecutor } from '../qmp/index.js';
import { addReadOnlyExport, ensureNbdServer, nbdUnixUri, removeExport } from '../snapshot/nbd-server.js';
import type { TrackedDisk } from './reconciler.js';

export async function allocatedExtents(qmp: QmpExecutor, nbdSocket: string, disk: TrackedDisk, opts: { timeoutMs?: number } = {}): Promise<Extent[]> {
  const id = `virtcbt-alloc-${disk.target}`;
  await ensureNbdServer(qmp, nbdSocket);
  await addReadOnlyExport(qmp, { id, node: disk.node, name: id });
  try {
    const nbd = await NbdClient.connect(nbdUnixUri(nbdSocket, id), { metaContexts: [CONTEXT_BASE_ALLOCATION], timeoutMs: opts.timeoutMs });
    try {
      return await selectExtents(nbd.blockStatus(CONTEXT_BASE_ALLOCATION, 0, Math.min(disk.sizeBytes, nbd.size)), (f) => (f & NBD_STATE_HOLE) === 0);
    } finally {
      await nbd.close();
    }
  } finally {
    await removeExport(qmp, id);
  }
}
