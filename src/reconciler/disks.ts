// Finds the tracked disks in a QEMU process: libvirt domains by device alias (query-block's qdev),
// storage-daemon processes by the node names virtcbt gave them.
import type { DomainXmlInfo } from '../libvirt/index.js';
import { findDisk, queryBlock, queryNamedBlockNodes, type QmpExecutor } from '../qmp/index.js';
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

export async function libvirtDisks(qmp: QmpExecutor, info: DomainXmlInfo, targets: string[]): Promise<TrackedDisk[]> {
  const blocks = await queryBlock(qmp);
  return targets.map((target) => {
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
    if (node.format !== 'qcow2') {
      throw new VirtcbtError(`disk ${target}'s active layer is ${node.format}, not qcow2: persistent bitmaps need qcow2`, {
        domain: info.name, disk: target,
      });
    }
    return { target, node: node.node, sizeBytes: node.virtualSize, layer: imageFile(node.info.inserted?.file ?? ''), bitmaps: node.bitmaps };
  });
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
