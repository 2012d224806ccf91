// kill -9 of virtcbtd at each step of a fold (rotate, record, export, fold, remove), then a
// restart: no block the guest wrote is ever missing from the next `changes`, neither the one
// written just before the kill nor those of earlier cases that were in the log before it.
import { beforeAll, describe, expect, it } from 'vitest';
import type { GuestAgent } from '../src/guest/index.js';
import { RECONCILE_STEPS } from '../src/reconciler/index.js';
import { pollUntil } from '../src/util/abort.js';
import { diskChanges, guestAgent, guestWrite as write, KiB, MiB, waitConnected } from './support/cbt.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
const written: number[] = [];

async function guestWrite(offset: number): Promise<void> {
  await write(agent, offset);
  written.push(offset);
}

const vdbExtents = () => diskChanges(daemon, guest.name, 'a');
const connected = () => waitConnected(daemon, guest.name);

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'kill', scratchFormat: 'qcow2', start: false });
  agent = guestAgent(guest.name);
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'a']);
  await guest.start();
  await connected();
  const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'a']);
  await daemon.cli(['pass', 'commit', guest.name, '--consumer', 'a', '--pass', String(p.pass)]);
});

describe('virtcbtd killed mid-fold', () => {
  for (const [i, step] of RECONCILE_STEPS.entries()) {
    it(`loses nothing when killed before "${step}"`, async () => {
      // The earlier cases' writes that are in the log now must still be there after this kill (a
      // write an earlier case lost is that case's failure, not this one's).
      const before = await vdbExtents();
      const kept = written.filter((off) => before.extents.some(([o, l]: [number, number]) => o <= off && off < o + l));
      written.length = 0;
      written.push(...kept);
      await guestWrite((i + 1) * MiB);
      await daemon.stop();
      // The connect-time reconcile may hit the fault at once, even before start() sees "ready".
      await daemon.start({ VIRTCBT_FAULT_STEP: step }).catch(() => undefined);
      if (daemon.running) await connected().catch(() => undefined);
      if (daemon.running) {
        const r = await daemon.cli(['reconcile', guest.name], { reject: false });
        expect(r.exitCode).not.toBe(0);
      }
      await pollUntil(() => !daemon.running, 'virtcbtd to die at the fault', { timeoutMs: 30_000 });
      await daemon.start();
      await connected();
      const vdb = await vdbExtents();
      expect(vdb.full).toBe(false);
      for (const off of written) expect(vdb.extents, `write at ${off} after kill before ${step}`).toContainEqual([off, 64 * KiB]);
    });
  }
});
