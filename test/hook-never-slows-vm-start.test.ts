// The libvirt hook never slows or fails a VM start: with virtcbtd running, and with it down (the
// event is spooled and replayed when the daemon starts).
import { readdirSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
let daemon: TestDaemon;
let guest: LibvirtGuest;

async function timedStart(): Promise<number> {
  const t0 = performance.now();
  await virsh(['start', guest.name]);
  return performance.now() - t0;
}

const connected = async () => (await daemon.cliJson(['status', guest.name])).connected as boolean;

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'hook', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', guest.name]);
});

describe('libvirt hook', () => {
  const times: Record<string, number> = {};

  it('with the daemon running: the VM starts and virtcbtd connects', async () => {
    times.daemonUp = await timedStart();
    await pollUntil(connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
    await guest.destroy();
    await pollUntil(async () => !(await connected()), 'virtcbtd to see the stop', { timeoutMs: 30_000, intervalMs: 250 });
  });

  it('with the daemon down: the VM starts all the same, the events wait in the spool and are replayed', async () => {
    await daemon.stop();
    times.daemonDown = await timedStart();
    const spooled = readdirSync(daemon.spoolDir).filter((f) => f.endsWith('.event'));
    expect(spooled.some((f) => f.includes('-started-'))).toBe(true);
    await daemon.start();
    await pollUntil(connected, 'virtcbtd to connect after replaying the spool', { timeoutMs: 60_000, intervalMs: 250 });
    expect(readdirSync(daemon.spoolDir).filter((f) => f.endsWith('.event'))).toEqual([]);
  });

  it('the daemon being down does not slow the start', () => {
    console.log(`virsh start: ${times.daemonUp.toFixed(0)} ms with virtcbtd running, ${times.daemonDown.toFixed(0)} ms with it down`);
    // Both are dominated by QEMU start-up under TCG; the hook itself spools in a few ms (see install test).
    expect(times.daemonDown).toBeLessThan(times.daemonUp * 2 + 1000);
  });
});
