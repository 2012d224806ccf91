// `virtcbt pass begin --export` hands a third-party backup tool the view virtcbt's own backup
// reads: per disk a read-only NBD export of the disk at the pass's instant (the guest's later
// writes do not show), with the consumer's changes as the dirty bitmap meta context; the exports
// go away at commit or abort. For a stopped domain, a read-only storage daemon serves them.
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { patternBuffer } from '../src/guestimage/index.js';
import { CONTEXT_DIRTY_BITMAP_PREFIX, NBD_STATE_DIRTY, NbdClient, selectExtents } from '../src/nbd/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, guestDd, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;

const exp = (p: any, t: string) => p.exports.find((e: { target: string }) => e.target === t);
const disk = (p: any, t: string) => p.disks.find((d: { target: string }) => d.target === t);

async function dirtyExtents(uri: string, bitmap: string): Promise<[number, number][]> {
  const ctx = `${CONTEXT_DIRTY_BITMAP_PREFIX}${bitmap}`;
  const nbd = await NbdClient.connect(uri, { metaContexts: [ctx] });
  try {
    return (await selectExtents(nbd.blockStatus(ctx), (f) => (f & NBD_STATE_DIRTY) !== 0)).map((e) => [e.offset, e.length]);
  } finally {
    await nbd.close();
  }
}

async function read(uri: string, offset: number, length: number): Promise<Buffer> {
  const nbd = await NbdClient.connect(uri);
  try {
    const buf = Buffer.alloc(length);
    await nbd.pread(buf, offset);
    return buf;
  } finally {
    await nbd.close();
  }
}

async function fleeceNodes(): Promise<string[]> {
  const r = await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute: 'query-named-block-nodes', arguments: { flat: true } })]);
  return (JSON.parse(r.stdout).return as { 'node-name': string }[]).map((n) => n['node-name']).filter((n) => n.startsWith('vcbt-'));
}

const connected = async () => (await daemon.cliJson(['status', guest.name])).connected as boolean;

/** The domain running and virtcbtd connected to it (a test may have stopped it). */
async function ensureRunning(): Promise<void> {
  const st = await virsh(['domstate', guest.name], { reject: false });
  if (!/running/.test(st.stdout)) await guest.start();
  await pollUntil(connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
}

/**
 * A consumer of the test's own; unless `fresh`, placed by a committed first (full) pass, so that
 * its changes are exactly the writes the test makes after this.
 */
async function consumer(name: string, fresh = false): Promise<string> {
  await daemon.cli(['consumer', 'add', guest.name, name]);
  if (!fresh) {
    const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', name]);
    await daemon.cli(['pass', 'commit', guest.name, '--consumer', name, '--pass', String(p.pass)]);
  }
  return name;
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'pexp', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  await daemon.cli(['enable', guest.name]);
});

describe('pass begin --export', () => {
  it('a first pass exports the whole disks, marked dirty in the bitmap', async () => {
    await ensureRunning();
    const c = await consumer('first', true);
    const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', c, '--export']);
    expect(p.exports.map((e: { target: string }) => e.target)).toEqual(['vda', 'vdb']);
    expect(exp(p, 'vdb').uri).toMatch(/^nbd\+unix:\/\/\/virtcbt-pass-\d+-vdb\?socket=/);
    expect(await dirtyExtents(exp(p, 'vdb').uri, exp(p, 'vdb').bitmap)).toEqual([[0, disk(p, 'vdb').sizeBytes]]);
    // nbdinfo, as a third-party tool would use it.
    const map = await execa('nbdinfo', [`--map=qemu:dirty-bitmap:${exp(p, 'vdb').bitmap}`, exp(p, 'vdb').uri]);
    expect(map.stdout).toMatch(/dirty/);
    await daemon.cli(['pass', 'commit', guest.name, '--consumer', c, '--pass', String(p.pass)]);
    expect(await fleeceNodes()).toEqual([]);
  });

  it('later passes: the bitmap is the consumer\'s changes, the data the disk at the pass\'s instant', async () => {
    await ensureRunning();
    const c = await consumer('later');
    // 1 MiB of a known pattern (the guest's blob.bin) at 4 MiB, random data at 12 MiB.
    const w = await agent.exec('/bin/dd', ['if=/mnt/data/blob.bin', 'of=/dev/vdb', `bs=${64 * 1024}`, `seek=${(4 * MiB) / (64 * 1024)}`, 'oflag=direct', 'conv=notrunc']);
    expect(w.exitCode, w.stderr).toBe(0);
    await guestDd(agent, '/dev/vdb', 12 * MiB, 2 * MiB);
    const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', c, '--export']);
    expect(disk(p, 'vdb').extents).toEqual([[4 * MiB, 1 * MiB], [12 * MiB, 2 * MiB]]);
    expect(await dirtyExtents(exp(p, 'vdb').uri, exp(p, 'vdb').bitmap)).toEqual(disk(p, 'vdb').extents);
    // The guest overwrites the region after the pass began: the export still shows the old data.
    await guestDd(agent, '/dev/vdb', 4 * MiB, 1 * MiB);
    expect((await read(exp(p, 'vdb').uri, 4 * MiB, MiB)).equals(patternBuffer(MiB, 0x5eed))).toBe(true);
    // A write to a read-only export is refused.
    const nbd = await NbdClient.connect(exp(p, 'vdb').uri);
    await expect(nbd.pwrite(Buffer.alloc(4096), 0)).rejects.toThrow(/read-only/);
    await nbd.close();
    // The export survives a fold meanwhile (the periodic reconcile).
    await daemon.cli(['reconcile', guest.name]);
    expect((await read(exp(p, 'vdb').uri, 4 * MiB, MiB)).equals(patternBuffer(MiB, 0x5eed))).toBe(true);
    await daemon.cli(['pass', 'commit', guest.name, '--consumer', c, '--pass', String(p.pass)]);
    expect(await fleeceNodes()).toEqual([]);
    await expect(NbdClient.connect(exp(p, 'vdb').uri)).rejects.toThrow();
    // The overwrite came after the committed pass: it is the consumer's next change.
    expect(disk(await daemon.cliJson(['changes', guest.name, '--consumer', c]), 'vdb').extents).toEqual([[4 * MiB, 1 * MiB]]);
  });

  it('abort removes the exports and leaves the consumer where it was', async () => {
    await ensureRunning();
    const c = await consumer('aborted');
    await guestDd(agent, '/dev/vdb', 20 * MiB, 1 * MiB);
    const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', c, '--export']);
    await daemon.cli(['pass', 'abort', guest.name, '--consumer', c, '--pass', String(p.pass)]);
    expect(await fleeceNodes()).toEqual([]);
    const ch = await daemon.cliJson(['changes', guest.name, '--consumer', c]);
    expect(disk(ch, 'vdb').extents).toEqual([[20 * MiB, 1 * MiB]]);
  });

  it('a stopped domain is exported read-only from its images until the pass ends', async () => {
    await ensureRunning();
    const c = await consumer('stopped');
    await guestDd(agent, '/dev/vdb', 30 * MiB, 1 * MiB);
    await guestDd(agent, '/dev/vdb', 36 * MiB, 1 * MiB);
    await guest.destroy();
    await pollUntil(async () => !(await connected()), 'disconnect', { timeoutMs: 30_000, intervalMs: 250 });
    const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', c, '--export']);
    expect(disk(p, 'vdb').extents).toEqual([[30 * MiB, 1 * MiB], [36 * MiB, 1 * MiB]]);
    expect(await dirtyExtents(exp(p, 'vdb').uri, exp(p, 'vdb').bitmap)).toEqual(disk(p, 'vdb').extents);
    const raw = join(tempDir('img'), 'vdb.raw');
    await execa('qemu-img', ['convert', '-U', '-O', 'raw', guest.disks.scratch, raw]);
    expect((await read(exp(p, 'vdb').uri, 30 * MiB, MiB)).equals(readFileSync(raw).subarray(30 * MiB, 31 * MiB))).toBe(true);
    await daemon.cli(['pass', 'commit', guest.name, '--consumer', c, '--pass', String(p.pass)]);
    // The images are free again: the domain starts.
    await guest.start();
  });
});
