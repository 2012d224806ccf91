// Domain XML: disks with formats, aliases and source indexes; the agent channel; adding and
// removing virtcbt's QMP socket leaves the rest of the XML alone.
import { describe, expect, it } from 'vitest';
import { addQmpSocket, parseDomainXml, removeQmpSocket, trackableDisks } from '../src/libvirt/index.js';

const live = `<domain type='qemu' id='3'>
  <name>vm1</name>
  <uuid>6f1c1b5e-0000-4000-8000-000000000001</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/vm1.qcow2' index='2'/>
      <backingStore type='file' index='3'><format type='qcow2'/><source file='/base.qcow2'/><backingStore/></backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/scratch.raw' index='1'/>
      <target dev='vdb' bus='virtio'/>
      <alias name='virtio-disk1'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-vm1/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
  </devices>
</domain>
`;

describe('domain XML', () => {
  it('reads disks, formats, aliases, source indexes and backing depth', () => {
    const info = parseDomainXml(live);
    expect(info.name).toBe('vm1');
    expect(info.hasAgentChannel).toBe(true);
    expect(info.disks.map((d) => [d.target, d.format, d.sourceIndex, d.alias, d.backingDepth])).toEqual([
      ['vda', 'qcow2', 2, 'virtio-disk0', 1],
      ['vdb', 'raw', 1, 'virtio-disk1', 0],
      ['sda', 'raw', undefined, undefined, 0],
    ]);
    expect(trackableDisks(info).map((d) => d.target)).toEqual(['vda', 'vdb']);
  });

  it('adds the QMP socket once, and removes it again', () => {
    const withQmp = addQmpSocket(live, '/var/lib/libvirt/qemu/virtcbt/vm1.qmp');
    expect(withQmp).toContain(`xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'`.replace(/'/g, '"'));
    expect(parseDomainXml(withQmp).qmpSockets).toEqual(['/var/lib/libvirt/qemu/virtcbt/vm1.qmp']);
    expect(addQmpSocket(withQmp, '/var/lib/libvirt/qemu/virtcbt/vm1.qmp')).toBe(withQmp);
    const removed = removeQmpSocket(withQmp, '/var/lib/libvirt/qemu/virtcbt/vm1.qmp');
    expect(parseDomainXml(removed).qmpSockets).toEqual([]);
    expect(removed).not.toContain('qemu:commandline');
    expect(parseDomainXml(removed).disks).toEqual(parseDomainXml(live).disks);
  });

  it('keeps other qemu:commandline arguments', () => {
    const other = live.replace('<domain type=\'qemu\' id=\'3\'>', `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>`)
      .replace('</domain>', `  <qemu:commandline>\n    <qemu:arg value='-no-hpet'/>\n  </qemu:commandline>\n</domain>`);
    const withQmp = addQmpSocket(other, '/q.sock');
    expect(withQmp.match(/xmlns:qemu/g)?.length).toBe(1);
    expect(withQmp).toContain('-no-hpet');
    expect(parseDomainXml(withQmp).qmpSockets).toEqual(['/q.sock']);
    expect(removeQmpSocket(withQmp, '/q.sock')).toContain('-no-hpet');
  });

  it('rejects XML that is not a domain', () => {
    expect(() => parseDomainXml('<network/>')).toThrow(/no <domain>/);
  });
});
