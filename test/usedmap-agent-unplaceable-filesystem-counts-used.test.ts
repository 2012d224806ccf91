// Faults the tiny test guest cannot show, through an in-memory agent: a filesystem on
// device-mapper (LVM) has no place on a disk and frees nothing there; a partition is placed by
// its sysfs start and named by libvirt's PCI address; an agent that refuses guest-exec still
// freezes (through qemu-ga, thawed after) and every filesystem then counts as used, with why.
import { describe, expect, it } from 'vitest';
import { AgentCommandError, GuestAgent, type AgentTransport } from '../src/guest/index.js';
import { AgentMapFreezer, agentDiskUsedMap, guestFilesystems, partitionParent } from '../src/usedmap/index.js';

const pci = (slot: number) => ({ 'pci-controller': { domain: 0, bus: 0, slot, function: 0 }, 'bus-type': 'virtio', bus: 0, target: 0, unit: 0 });
const XML = `<domain type='qemu'><name>vm1</name><devices>
  <disk type='file' device='disk'><target dev='vda' bus='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></disk>
  <disk type='file' device='disk'><target dev='vdc' bus='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></disk>
</devices></domain>`;

const SYSFS: Record<string, string> = {
  '/sys/class/block/vda/dev': '254:0\n',
  '/sys/class/block/vda/size': '2097152\n',
  '/sys/class/block/vdb1/dev': '254:17\n',
  '/sys/class/block/vdb1/size': '204800\n',
  '/sys/class/block/vdb1/start': '2048\n',
  '/sys/class/block/dm-0/dev': '253:0\n',
  '/sys/class/block/dm-0/size': '409600\n',
};

/** An agent with three filesystems; guest-exec refused as a hardened guest's qemu-ga does (-b guest-exec). */
function fakeTransport(): AgentTransport & { calls: string[] } {
  const handles = new Map<number, { path: string; done: boolean }>();
  let next = 1000;
  const calls: string[] = [];
  return {
    description: 'fake agent',
    domain: 'vm1',
    calls,
    async close() {},
    async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
      calls.push(command);
      switch (command) {
        case 'guest-get-fsinfo':
          return [
            { name: 'vda', mountpoint: '/', type: 'ext4', disk: [{ ...pci(3), dev: '/dev/vda' }] },
            { name: 'vdb1', mountpoint: '/boot', type: 'ext4', disk: [{ ...pci(4), dev: '/dev/vdb1' }] },
            { name: 'dm-0', mountpoint: '/srv', type: 'xfs', disk: [{ ...pci(4), dev: '/dev/vdb2' }] },
          ] as T;
        case 'guest-get-disks':
          return [
            { name: '/dev/vda', partition: false, dependencies: [], address: { ...pci(3), dev: '/dev/vda' } },
            { name: '/dev/vdb', partition: false, dependencies: [], address: { ...pci(4), dev: '/dev/vdb' } },
            { name: '/dev/vdb1', partition: true, dependencies: ['/dev/vdb'] },
            { name: '/dev/dm-0', partition: false, dependencies: ['/dev/vdb2'] },
          ] as T;
        case 'guest-file-open': {
          const path = String(args?.path);
          if (!(path in SYSFS)) throw new AgentCommandError(command, { class: 'GenericError', desc: `failed to open file '${path}': No such file or directory` });
          handles.set(++next, { path, done: false });
          return next as T;
        }
        case 'guest-file-read': {
          const h = handles.get(Number(args?.handle))!;
          const first = !h.done;
          h.done = true;
          return { count: first ? SYSFS[h.path].length : 0, 'buf-b64': first ? Buffer.from(SYSFS[h.path]).toString('base64') : '', eof: true } as T;
        }
        case 'guest-file-close':
          handles.delete(Number(args?.handle));
          return {} as T;
        case 'guest-exec':
          throw new AgentCommandError(command, { class: 'GenericError', desc: 'Command guest-exec has been disabled' });
        case 'guest-fsfreeze-freeze':
          return 3 as T;
        case 'guest-fsfreeze-thaw':
          return 3 as T;
        default:
          throw new Error(`unexpected ${command}`);
      }
    },
  };
}

describe('guest filesystems placed on disks', () => {
  it('places a whole disk and a partition, names their libvirt targets, and gives LVM a problem instead of a place', async () => {
    const fss = await guestFilesystems(new GuestAgent(fakeTransport()), { domainXml: XML });
    expect(fss).toEqual([
      { mountpoint: '/', type: 'ext4', device: 'vda', devNumber: '254:0', size: 2097152 * 512, offset: 0, target: 'vda', guestDisk: 'vda' },
      { mountpoint: '/boot', type: 'ext4', device: 'vdb1', devNumber: '254:17', size: 204800 * 512, offset: 2048 * 512, target: 'vdc', guestDisk: 'vdb' },
      expect.objectContaining({ mountpoint: '/srv', device: 'dm-0', target: 'vdc', problem: expect.stringMatching(/device-mapper, LVM or RAID/) }),
    ]);
  });

  it('without guest-exec it still freezes (qemu-ga, thawed after) and every filesystem counts as used, with the reason', async () => {
    const t = fakeTransport();
    const f = new AgentMapFreezer(new GuestAgent(t), { domainXml: XML });
    const { value, capture } = await f.freezeAndMap(async () => 'snapshot taken', { timeoutMs: 5_000 });
    expect(value).toBe('snapshot taken');
    expect(t.calls.filter((c) => c.startsWith('guest-fsfreeze'))).toEqual(['guest-fsfreeze-freeze', 'guest-fsfreeze-thaw']);
    expect(capture.via).toBe('agent-freeze');
    expect(capture.filesystems.every((x) => !x.mapped && x.free.length === 0)).toBe(true);
    expect(capture.note).toMatch(/guest-exec refused \(Command guest-exec has been disabled\)/);
    const size = 4 * 1024 * 1024 * 1024;
    const vdc = agentDiskUsedMap(capture, { target: 'vdc', size });
    expect(vdc.used).toEqual([{ offset: 0, length: size }]);
    expect(vdc.unmapped.map((u) => u.mountpoint).sort()).toEqual(['/boot', '/srv']);
  });

  it('names a partition\'s disk from the partition name when the agent has no guest-get-disks', () => {
    expect(['vdb1', 'sda12', 'nvme0n1p2', 'mmcblk0p1', 'xvda3'].map(partitionParent)).toEqual(['vdb', 'sda', 'nvme0n1', 'mmcblk0', 'xvda']);
  });
});
