// Shared steps of the changed-block-tracking tests on a libvirt guest: writing at exact offsets
// of a guest disk through the agent, and waiting for virtcbtd's QMP connection.
import { expect } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../../src/guest/index.js';
import { pollUntil } from '../../src/util/abort.js';
import type { TestDaemon } from './daemon.js';
import { LIBVIRT_URI } from './libvirt.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

export function guestAgent(domain: string): GuestAgent {
  return new GuestAgent(new LibvirtTransport(domain, { uri: LIBVIRT_URI }));
}

/** dd of random data at `offset` of a guest block device, bypassing the guest's page cache. */
export async function guestWrite(agent: GuestAgent, offset: number, length = 64 * KiB, device = '/dev/vdb'): Promise<void> {
  const bs = 4 * KiB;
  const r = await agent.exec('/bin/dd', ['if=/dev/urandom', `of=${device}`, `bs=${bs}`, `seek=${offset / bs}`, `count=${length / bs}`,
    'oflag=direct', 'conv=notrunc'], { timeoutMs: 60_000 });
  expect(r.exitCode, r.stderr).toBe(0);
}

/** Waits until virtcbtd holds (or, with want=false, no longer holds) its QMP connection to the domain. */
export async function waitConnected(daemon: TestDaemon, domain: string, want = true): Promise<void> {
  await pollUntil(async () => (await daemon.cliJson(['status', domain])).connected === want,
    `virtcbtd to ${want ? 'connect to' : 'disconnect from'} ${domain}`, { timeoutMs: 60_000, intervalMs: 250 });
}

export interface DiskChanges { target: string; full: boolean; reason?: string; extents: [number, number][] }

/** `virtcbt changes` for one consumer, one disk. */
export async function diskChanges(daemon: TestDaemon, domain: string, consumer: string, target = 'vdb'): Promise<DiskChanges> {
  const r = await daemon.cliJson(['changes', domain, '--consumer', consumer]);
  return r.disks.find((d: DiskChanges) => d.target === target);
}
