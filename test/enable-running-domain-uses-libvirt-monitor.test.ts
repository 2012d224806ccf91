// Enabling a domain that is already running: tracking starts at once through libvirt's own
// monitor (virsh qemu-monitor-command); after the next restart virtcbtd uses its own QMP socket.
import { beforeAll, describe, expect, it } from 'vitest';
import type { GuestAgent } from '../src/guest/index.js';
import { diskChanges, guestAgent, guestWrite as write, KiB, MiB, waitConnected } from './support/cbt.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;

const vdb = (consumer: string) => diskChanges(daemon, guest.name, consumer);
const guestWrite = (offset: number) => write(agent, offset);

/** What `enable` answered and `status` said right after, on the running domain (beforeAll). */
let enabled: any;
let statusAfter: any;

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'live', scratchFormat: 'qcow2' });
  agent = guestAgent(guest.name);
  // Enabled while running, a consumer's pass committed, then one guest write: each case starts here.
  enabled = await daemon.cliJson(['enable', guest.name]);
  statusAfter = await daemon.cliJson(['status', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'a']);
  const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'a']);
  await daemon.cli(['pass', 'commit', guest.name, '--consumer', 'a', '--pass', String(p.pass)]);
  await guestWrite(2 * MiB);
});

describe('enable on a running domain', () => {
  it('tracks at once through libvirt\'s monitor', async () => {
    expect(enabled.running).toBe(true);
    expect(enabled.notes.join(' ')).toMatch(/next restart/);
    expect(statusAfter.connected).toBe(false);
    expect(statusAfter.pendingRestart).toBe(true);
    expect((await vdb('a')).extents).toEqual([[2 * MiB, 64 * KiB]]);
  });

  it('switches to its own QMP socket after a restart, without losing writes', async () => {
    await guestWrite(4 * MiB);
    await guest.destroy();
    await guest.start();
    await waitConnected(daemon, guest.name);
    expect((await vdb('a')).extents).toEqual([[2 * MiB, 64 * KiB], [4 * MiB, 64 * KiB]]);
  });
});
