// The libvirt rig boots the test guest as a TCG domain: libvirt's agent channel answers, and the
// extra QMP socket from <qemu:commandline> accepts a client and greets it.
import { describe, expect, it } from 'vitest';
import { useCleanup } from './support/cleanup.js';
import { startLibvirtGuest, virsh } from './support/libvirt.js';
import { rawSession } from './support/qmp-raw.js';

useCleanup();

describe('test guest under libvirt', () => {
  it('answers guest-ping through virsh and greets on its own QMP socket', async () => {
    const guest = await startLibvirtGuest({ name: 'boots', withQmpSocket: true });
    console.info(`libvirt test guest ${guest.name} ready in ${guest.bootMs} ms`);

    const ping = await virsh(['qemu-agent-command', guest.name, JSON.stringify({ execute: 'guest-ping' })]);
    expect(JSON.parse(ping.stdout)).toEqual({ return: {} });

    expect(guest.qmpSocket).toMatch(/^\/var\/lib\/libvirt\/qemu\//);
    const qmp = await rawSession(guest.qmpSocket!, 15_000);
    try {
      const greeting = await qmp.next();
      expect(greeting).toHaveProperty('QMP.version.qemu');
      expect(greeting).toHaveProperty('QMP.capabilities');
    } finally {
      qmp.close();
    }

    // The disks are where the rig says, as libvirt's -blockdev nodes behind vda and vdb.
    const blk = await virsh(['domblklist', guest.name]);
    expect(blk.stdout).toContain(guest.disks.data);
    expect(blk.stdout).toContain(guest.disks.scratch);

    await guest.undefine();
    const list = await virsh(['list', '--all', '--name']);
    expect(list.stdout).not.toContain(guest.name);
  });
});
