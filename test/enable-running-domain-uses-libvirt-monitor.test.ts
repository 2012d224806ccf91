// Enabling a domain that is already running: tracking starts at once through libvirt's own
// monitor (virsh qemu-monitor-command); after the next restart virtcbtd uses its own QMP socket.
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
const KiB = 1024;
const MiB = 1024 * KiB;
let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;

const vdb = async (consumer: string) =>
  (await daemon.cliJson(['changes', guest.name, '--consumer', consumer])).disks.find((d: { target: string }) => d.target === 'vdb') as { full: boolean; extents: [number, number][] };

async function guestWrite(offset: number): Promise<void> {
  const r = await agent.exec('/bin/dd', ['if=/dev/urandom', 'of=/dev/vdb', `bs=${64 * KiB}`, `seek=${offset / (64 * KiB)}`, 'count=1', 'oflag=direct', 'conv=notrunc'], { timeoutMs: 60_000 });
  expect(r.exitCode, r.stderr).toBe(0);
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'live', scratchFormat: 'qcow2' });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
});

describe('enable on a running domain', () => {
  it('tracks at once through libvirt\'s monitor', async () => {
    const r = await daemon.cliJson(['enable', guest.name]);
    expect(r.running).toBe(true);
    expect(r.notes.join(' ')).toMatch(/next restart/);
    const st = await daemon.cliJson(['status', guest.name]);
    expect(st.connected).toBe(false);
    expect(st.pendingRestart).toBe(true);
    await daemon.cli(['consumer', 'add', guest.name, 'a']);
    const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'a']);
    await daemon.cli(['pass', 'commit', guest.name, '--consumer', 'a', '--pass', String(p.pass)]);
    await guestWrite(2 * MiB);
    expect((await vdb('a')).extents).toEqual([[2 * MiB, 64 * KiB]]);
  });

  it('switches to its own QMP socket after a restart, without losing writes', async () => {
    await guestWrite(4 * MiB);
    await guest.destroy();
    await guest.start();
    await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'own QMP socket', { timeoutMs: 60_000, intervalMs: 250 });
    expect((await vdb('a')).extents).toEqual([[2 * MiB, 64 * KiB], [4 * MiB, 64 * KiB]]);
  });
});
