// A dirty bitmap with chosen contents, for exporting a consumer's change set as the NBD meta
// context `qemu:dirty-bitmap:NAME`. QMP cannot set bits directly, so the bitmap lives on a
// throw-away null-co node of the disk's size: the block layer marks a bitmap dirty for every
// write that reaches its node, and null-co discards the data. Zero-writes over the extents set
// exactly their bits; then the bitmap is disabled (read-only exports require that).
import {
  blockDirtyBitmapAdd,
  blockDirtyBitmapDisable,
  blockExportAddNbd,
  blockdevAdd,
  type QmpExecutor,
} from '../qmp/index.js';
import type { Extent } from '../extent/index.js';
import { NbdClient } from '../nbd/index.js';
import { ensureNbdServer, nbdUnixUri, removeExport } from './nbd-server.js';
import { PASS_MAP_PREFIX } from './fleece.js';

export interface ExtentBitmapSpec {
  /** Names the node: `vcbt-pm-TAG-TARGET` (torn down with the fleece of the same tag). */
  tag: string;
  target: string;
  name: string;
  sizeBytes: number;
  granularity: number;
  extents: readonly Extent[];
}

/** Zero-writes in flight while marking: they cost QEMU nothing on null-co. */
const MARK_INFLIGHT = 64;

export function passMapNodeName(tag: string, target: string): string {
  return `${PASS_MAP_PREFIX}${tag}-${target}`;
}

/** Creates the node and the disabled bitmap; returns the reference to put in an export's `bitmaps`. */
export async function buildExtentBitmap(qmp: QmpExecutor, nbdSocket: string, spec: ExtentBitmapSpec): Promise<{ node: string; name: string }> {
  const node = passMapNodeName(spec.tag, spec.target);
  await blockdevAdd(qmp, { driver: 'null-co', 'node-name': node, size: spec.sizeBytes });
  await blockDirtyBitmapAdd(qmp, { node, name: spec.name, granularity: spec.granularity, persistent: false });
  if (spec.extents.length > 0) {
    const id = `${node}-w`;
    await ensureNbdServer(qmp, nbdSocket);
    await blockExportAddNbd(qmp, { id, 'node-name': node, name: id, writable: true });
    try {
      const nbd = await NbdClient.connect(nbdUnixUri(nbdSocket, id));
      try {
        let i = 0;
        const worker = async () => {
          while (i < spec.extents.length) {
            const { offset, length } = spec.extents[i++]!;
            await nbd.writeZeroes(offset, length);
          }
        };
        await Promise.all(Array.from({ length: Math.min(MARK_INFLIGHT, spec.extents.length) }, worker));
      } finally {
        await nbd.close();
      }
    } finally {
      await removeExport(qmp, id);
    }
  }
  await blockDirtyBitmapDisable(qmp, { node, name: spec.name });
  return { node, name: spec.name };
}
