// Finds the tracked disks in a QEMU process: libvirt domains by device alias (query-block's qdev),
// storage-daemon processes by the node names virtcbt gave them.
import type { DomainXmlInfo } from '../libvirt/index.js';
import { findDisk, queryBlock, queryNamedBlockNodes, type BlockDeviceInfo, type QmpExecutor } from '../qmp/index.js';
import { VirtcbtError } from '../util/errors.js';
import type { TrackedDisk } from './reconciler.js';

/** A node's image file: QEMU reports options it cannot put in a path as `json:{...}`. */
export function imageFile(file: string): string {
  if (!file.startsWith('json:')) return file;
  try {
    const j = JSON.parse(file.slice(5)) as { file?: { filename?: string }; filename?: string };
    return j.file?.filename ?? j.filename ?? file;
  } catch {
    return file;
  }
}

/** The driver of the filter node blockdev-backup puts above a disk while it runs (fleecing). */
const FLEECING_FILTER = 'copy-before-write';

export async function libvirtDisks(qmp: QmpExecutor, info: DomainXmlInfo, targets: string[]): Promise<TrackedDisk[]> {
  const blocks = await queryBlock(qmp);
  let named: BlockDeviceInfo[] | undefined;
  const out: TrackedDisk[] = [];
  for (const target of targets) {
    const d = info.disks.find((k) => k.target === target);
    if (!d) {
      throw new VirtcbtError(`disk ${target} is tracked but no longer in the domain`, {
        domain: info.name, disk: target,
        hint: 'If it was detached on purpose, run `virtcbt disable` and `virtcbt enable` again',
      });
    }
    const node = (d.alias && findDisk(blocks, d.alias)) || undefined;
    if (!node) {
      throw new VirtcbtError(`QEMU reports no medium for disk ${target} (alias ${d.alias ?? 'none'})`, {
        domain: info.name, disk: target,
        hint: 'Check `virtcbt status` and the domain\'s disks with `virsh domblklist`',
      });
    }
    if (node.format === FLEECING_FILTER) {
      // A fleecing job (a backup under way, or one a killed daemon left) put its filter above the
      // disk: the format node is beneath it, libvirt's libvirt-N-format over the same file.
      named ??= await queryNamedBlockNodes(qmp);
      const file = node.info.inserted?.file;
      const under = named.find((n) => n['node-name'] === `libvirt-${d.sourceIndex}-format` && n.drv === 'qcow2')
        ?? named.find((n) => n.drv === 'qcow2' && n.file === file);
      if (under?.['node-name']) {
        out.push({ target, node: under['node-name'], sizeBytes: under.image['virtual-size'], layer: imageFile(under.file), bitmaps: under['dirty-bitmaps'] ?? [] });
        continue;
      }
    }
    if (node.format !== 'qcow2') {
      throw new VirtcbtError(`disk ${target}'s active layer is ${node.format}, not qcow2: persistent bitmaps need qcow2`, {
        domain: info.name, disk: target,
      });
    }
    out.push({ target, node: node.node, sizeBytes: node.virtualSize, layer: imageFile(node.info.inserted?.file ?? ''), bitmaps: node.bitmaps });
  }
  return out;
}

/** Disks in a qemu-storage-daemon where virtcbt named each format node after the disk's target. */
export async function storageDaemonDisks(qmp: QmpExecutor, nodes: { target: string; node: string }[]): Promise<TrackedDisk[]> {
  const all = await queryNamedBlockNodes(qmp);
  return nodes.map(({ target, node }) => {
    const n = all.find((x) => x['node-name'] === node);
    if (!n) throw new VirtcbtError(`storage daemon has no node ${node}`, { disk: target });
    return { target, node, sizeBytes: n.image['virtual-size'], layer: imageFile(n.file), bitmaps: n['dirty-bitmaps'] ?? [] };
  });
}
