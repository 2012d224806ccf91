// Helpers for backup tests: guest writes through the agent, reference copies of a domain's disks
// at an instant (the VM is suspended, which makes QEMU flush its image metadata), and image
// comparison with qemu-img.
import { execa } from 'execa';
import { join } from 'node:path';
import { expect } from 'vitest';
import type { GuestAgent } from '../../src/guest/index.js';
import { virsh, type LibvirtGuest } from './libvirt.js';
import { KiB } from './files.js';

// Guest-side helpers; the plain ones live in files.ts (re-exported here for the files that use both).
export { KiB, MiB, sameContent, tempDir } from './files.js';

/** dd of random data at OFFSET of a guest block device, bypassing the guest's page cache. */
export async function guestDd(agent: GuestAgent, dev: string, offsetBytes: number, lengthBytes: number): Promise<void> {
  const bs = 64 * KiB;
  const r = await agent.exec('/bin/dd', ['if=/dev/urandom', `of=${dev}`, `bs=${bs}`, `seek=${offsetBytes / bs}`,
    `count=${lengthBytes / bs}`, 'oflag=direct', 'conv=notrunc'], { timeoutMs: 60_000 });
  expect(r.exitCode, r.stderr).toBe(0);
}

/** Writes a file of random data on the guest's ext4 (/mnt/data) and syncs it to the disk. */
export async function guestFile(agent: GuestAgent, name: string, lengthBytes: number): Promise<void> {
  const r = await agent.exec('/bin/dd', ['if=/dev/urandom', `of=/mnt/data/${name}`, `bs=${64 * KiB}`, `count=${lengthBytes / (64 * KiB)}`, 'conv=fsync'], { timeoutMs: 60_000 });
  expect(r.exitCode, r.stderr).toBe(0);
  const s = await agent.exec('/bin/sync', [], { timeoutMs: 60_000 });
  expect(s.exitCode, s.stderr).toBe(0);
}

/**
 * Raw copies of the domain's disks as they are now: the VM is suspended for the copy (QEMU
 * flushes its caches to the images on stop) and resumed after.
 */
export async function referenceCopy(guest: LibvirtGuest, dir: string, label: string): Promise<Record<string, string>> {
  await virsh(['suspend', guest.name]);
  try {
    const out: Record<string, string> = {};
    for (const [target, image] of [['vda', guest.disks.data], ['vdb', guest.disks.scratch]] as const) {
      const p = join(dir, `${label}.${target}.raw`);
      await execa('qemu-img', ['convert', '-U', '-O', 'raw', image, p]);
      out[target] = p;
    }
    return out;
  } finally {
    await virsh(['resume', guest.name]);
  }
}


/** `virtcbt backup ... --json`: JSON lines of progress events; the last one is the result. */
export async function backupJson(daemon: { cli(args: string[], o?: { reject?: boolean }): Promise<{ stdout: string }> }, args: string[]): Promise<any> {
  const r = await daemon.cli(['backup', ...args, '--json']);
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const last = lines[lines.length - 1];
  expect(last?.type, r.stdout.slice(-500)).toBe('result');
  return Object.assign(last, { events: lines });
}

/**
 * A stopped domain's backup answers only once its qemu-storage-daemon has let go of the images,
 * so the image is writable (and the domain startable) the moment the command returns.
 */
export async function expectImageUnlocked(image: string): Promise<void> {
  const { execa } = await import('execa');
  const r = await execa('qemu-img', ['info', image], { reject: false });
  expect(r.exitCode, `${image} still locked right after the backup returned: ${r.stderr}`).toBe(0);
}

/**
 * Writes `length` bytes of `pattern` at `offset` of a stopped domain's qcow2 image, as the guest
 * would (its persistent bitmaps record it): the image must be free of any QEMU first. Cache mode
 * unsafe: qemu-io still writes data, metadata and bitmaps into the file before it exits, but skips
 * the fsyncs, which only a host crash would need (a 1 GiB write takes a third less time).
 */
export async function offlineWrite(image: string, offset: number, length: number, pattern: number): Promise<void> {
  await expectImageUnlocked(image);
  await execa('qemu-io', ['-t', 'unsafe', '-f', 'qcow2', '-c', `write -P ${pattern} ${offset} ${length}`, image]);
}
