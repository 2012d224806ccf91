// libvirt domain XML for the test/demo guest: TCG (type='qemu'), direct kernel boot of the built
// kernel and initramfs, virtio disks, a serial log, the guest-agent channel and optionally
// virtcbt's own QMP socket. Used by the test rig, the demo and the benchmarks.
import { GUEST_APPEND } from './build.js';
import { AGENT_PORT_NAME } from './initramfs.js';

export const QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0';

export interface GuestDiskSpec {
  /** Guest device name: vda, vdb, ... */
  target: string;
  file: string;
  format: 'qcow2' | 'raw';
}

export interface GuestDomainSpec {
  name: string;
  kernel: string;
  initrd: string;
  disks: GuestDiskSpec[];
  serialLog: string;
  /** Adds `<qemu:commandline>` -qmp unix:PATH,server=on,wait=off. */
  qmpSocket?: string;
  memoryMiB: number;
  vcpus?: number;
  /** Leave the guest-agent channel out (a domain virtcbt can only back up crash-consistent). */
  noAgentChannel?: boolean;
  /** Network interfaces (user-mode: no bridge or tap needed), each with its MAC and link state. */
  interfaces?: { mac: string; linkDown?: boolean }[];
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

export function guestDomainXml(d: GuestDomainSpec): string {
  const qmp = d.qmpSocket
    ? `
  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value='unix:${esc(d.qmpSocket)},server=on,wait=off'/>
  </qemu:commandline>`
    : '';
  const disks = d.disks.map((k) => `
    <disk type='file' device='disk'>
      <driver name='qemu' type='${k.format}' discard='unmap'/>
      <source file='${esc(k.file)}'/>
      <target dev='${esc(k.target)}' bus='virtio'/>
    </disk>`).join('');
  const agent = d.noAgentChannel ? '' : `
    <channel type='unix'>
      <target type='virtio' name='${AGENT_PORT_NAME}'/>
    </channel>`;
  const nics = (d.interfaces ?? []).map((n) => `
    <interface type='user'>
      <mac address='${esc(n.mac)}'/>
      <model type='virtio'/>${n.linkDown ? `
      <link state='down'/>` : ''}
    </interface>`).join('');
  return `<domain type='qemu' xmlns:qemu='${QEMU_NS}'>
  <name>${esc(d.name)}</name>
  <memory unit='MiB'>${d.memoryMiB}</memory>
  <vcpu>${d.vcpus ?? 1}</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>${esc(d.kernel)}</kernel>
    <initrd>${esc(d.initrd)}</initrd>
    <cmdline>${esc(GUEST_APPEND)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>${disks}
    <serial type='file'>
      <source path='${esc(d.serialLog)}'/>
      <target port='0'/>
    </serial>${agent}${nics}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>${qmp}
</domain>
`;
}
