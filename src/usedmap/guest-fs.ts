// Which guest filesystems sit where on which disk, as the guest agent sees it: guest-get-fsinfo
// for mountpoints and disk addresses, sysfs (read through guest-file-read) for partition offsets.
import { XMLParser } from 'fast-xml-parser';
import type { GuestAgent, GuestDiskAddress, GuestDiskInfo } from '../guest/index.js';

const SECTOR = 512; // sysfs `start` and `size` count 512-byte sectors whatever the disk's block size

export interface GuestFilesystem {
  mountpoint: string;
  type: string;
  /** Kernel name of the device the filesystem is on: "vda", "vdb1", "dm-0". */
  device: string;
  /** "major:minor" of that device (GETFSMAP records name it). */
  devNumber?: string;
  /** Kernel name of the disk it is on ("vdb" for "vdb1"), when it sits on one disk region. */
  guestDisk?: string;
  /** libvirt's target for that disk (as `virsh domfsinfo` maps it: PCI address, then serial). */
  target?: string;
  /** Byte offset of the device on the disk: the partition's start, 0 for a whole disk. */
  offset: number;
  /** Bytes of the device. */
  size: number;
  /** Why the filesystem cannot be placed on one disk region (then its disks count as used). */
  problem?: string;
}

export interface DiskAddressEntry {
  target: string;
  pci?: { domain: number; bus: number; slot: number; function: number };
  serial?: string;
}

const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', isArray: (n) => n === 'disk', parseAttributeValue: false, parseTagValue: false });

/** The libvirt disks' targets with their PCI addresses and serials, from the live domain XML. */
export function diskAddressesFromXml(xml: string): DiskAddressEntry[] {
  const doc = parser.parse(xml) as { domain?: { devices?: { disk?: Record<string, unknown>[] } } };
  const out: DiskAddressEntry[] = [];
  for (const d of doc.domain?.devices?.disk ?? []) {
    const target = (d.target as Record<string, string> | undefined)?.['@dev'];
    if (!target) continue;
    const a = d.address as Record<string, string> | undefined;
    const e: DiskAddressEntry = { target };
    if (a?.['@type'] === 'pci') {
      e.pci = { domain: Number(a['@domain']), bus: Number(a['@bus']), slot: Number(a['@slot']), function: Number(a['@function']) };
    }
    const serial = d.serial;
    if (typeof serial === 'string' && serial) e.serial = serial;
    out.push(e);
  }
  return out;
}

/** The libvirt target of the disk the agent describes: same PCI function, else same serial. */
export function targetOf(addr: GuestDiskAddress | undefined, disks: readonly DiskAddressEntry[]): string | undefined {
  if (!addr) return undefined;
  const p = addr['pci-controller'];
  const byPci = p && disks.filter((d) => d.pci && d.pci.domain === p.domain && d.pci.bus === p.bus && d.pci.slot === p.slot && d.pci.function === p.function);
  if (byPci && byPci.length === 1) return byPci[0].target;
  if (addr.serial) return disks.find((d) => d.serial === addr.serial)?.target;
  return undefined;
}

/**
 * The guest's mounted filesystems (those guest-fsfreeze-freeze would freeze), each placed on its
 * disk: partition start and size from /sys/class/block/NAME/{start,size}, the disk's libvirt
 * target from `domainXml` (the live XML) when given. A filesystem on device-mapper, RAID or
 * several disks gets a `problem` instead of a place.
 */
export async function guestFilesystems(agent: GuestAgent, opts: { domainXml?: string; timeoutMs?: number } = {}): Promise<GuestFilesystem[]> {
  const call = { timeoutMs: opts.timeoutMs };
  const fsinfo = await agent.getFsinfo(call);
  // guest-get-disks (qemu-ga >= 5.2) names a partition's disk; older agents: from the name.
  const disks: GuestDiskInfo[] = await agent.getDisks(call).catch(() => []);
  const addresses = opts.domainXml ? diskAddressesFromXml(opts.domainXml) : [];
  const sys = async (name: string, attr: string): Promise<string | undefined> => {
    try {
      return (await agent.readFile(`/sys/class/block/${name}/${attr}`, { ...call, maxBytes: 4096 })).toString('utf8').trim();
    } catch {
      return undefined;
    }
  };
  return Promise.all(
    fsinfo.map(async (f): Promise<GuestFilesystem> => {
      const device = f.name;
      const base: GuestFilesystem = { mountpoint: f.mountpoint, type: f.type, device, offset: 0, size: 0 };
      if (!/^[\w.-]+$/.test(device)) return { ...base, problem: `the agent names its device ${JSON.stringify(device)}, which is no block device name` };
      const [devNumber, size, start] = await Promise.all([sys(device, 'dev'), sys(device, 'size'), sys(device, 'start')]);
      const fs: GuestFilesystem = { ...base, devNumber, size: Number(size) * SECTOR };
      if (!devNumber || !size || !Number.isSafeInteger(fs.size)) {
        return { ...fs, size: 0, problem: `cannot read /sys/class/block/${device} in the guest` };
      }
      if (f.disk.length !== 1) {
        return { ...fs, problem: f.disk.length === 0 ? 'the agent names no disk under it' : `it spans ${f.disk.length} disks (RAID or LVM)` };
      }
      fs.target = targetOf(f.disk[0], addresses);
      const entry = disks.find((d) => d.name === `/dev/${device}`);
      if (start !== undefined) {
        const parent = entry?.dependencies?.length === 1 ? entry.dependencies[0].replace(/^\/dev\//, '') : partitionParent(device);
        return { ...fs, guestDisk: parent, offset: Number(start) * SECTOR };
      }
      const wholeDisk = entry ? !entry.partition && entry.address !== undefined : f.disk[0].dev === `/dev/${device}`;
      if (wholeDisk && !device.startsWith('dm-') && !device.startsWith('md')) return { ...fs, guestDisk: device };
      return { ...fs, problem: `it sits on ${device}, neither a partition nor a whole disk (device-mapper, LVM or RAID): its place on the disk is unknown` };
    }),
  );
}

/** "vdb1" → "vdb", "nvme0n1p2" → "nvme0n1", "mmcblk0p1" → "mmcblk0". */
export function partitionParent(name: string): string {
  const m = /^(.*\d)p\d+$/.exec(name) ?? /^(.*\D)\d+$/.exec(name);
  return m ? m[1] : name;
}
