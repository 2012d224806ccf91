// Changed-block tracking end to end on a real libvirt domain: the hook, virtcbtd and the CLI.
// Writes at known offsets of the scratch disk show up exactly (at bitmap granularity) for each
// consumer independently; they survive a VM restart; a killed QEMU forces a full pass. The scenario
// runs once, in order, in beforeAll (each step builds on the ones before); each case checks what
// its step recorded, so any case runs alone.
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import type { GuestAgent } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { guestAgent, guestWrite as write, KiB, MiB, waitConnected as connected } from './support/cbt.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;

const guestWrite = (offset: number) => write(agent, offset);
/** What the scenario saw at each step. */
const seen: Record<string, any> = {};

const vdb = (r: { disks: { target: string; full: boolean; reason?: string; extents: [number, number][] }[] }) => r.disks.find((d) => d.target === 'vdb')!;

const waitConnected = () => connected(daemon, guest.name);

/**
 * The text `changes --json` and `pass begin --json` have always printed for `r`: keys in this
 * order, extents as [offset, length] pairs. Scripts may read it byte for byte.
 */
function printedAsEver(r: any): string {
  const disks = r.disks.map((d: any) => ({
    target: d.target, blockSize: d.blockSize, sizeBytes: d.sizeBytes, full: d.full, reason: d.reason,
    extents: d.extents.map((e: unknown) => { expect(e).toEqual([expect.any(Number), expect.any(Number)]); return e; }),
    changedBytes: d.changedBytes,
  }));
  const pass = r.pass === undefined ? {} : { pass: r.pass, generation: r.generation };
  return JSON.stringify({ domain: r.domain, logId: r.logId, consumer: r.consumer, since: r.since, upTo: r.upTo, disks, ...pass }, null, 2);
}

/** Runs a `--json` command and checks its output is byte for byte what it has always been. */
async function cliJsonAsEver(args: string[]): Promise<any> {
  const out = (await daemon.cli([...args, '--json'])).stdout;
  const r = JSON.parse(out);
  expect(out, `virtcbt ${args.join(' ')} --json`).toBe(printedAsEver(r));
  return r;
}

/** A consumer's first pass, committed; returns its vdb part. */
async function fullPass(consumer: string) {
  const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', consumer]);
  await daemon.cli(['pass', 'commit', guest.name, '--consumer', consumer, '--pass', String(p.pass)]);
  return vdb(p);
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'cbt', scratchFormat: 'qcow2', start: false });
  agent = guestAgent(guest.name);
  const changes = async (c: string) => vdb(await daemon.cliJson(['changes', guest.name, '--consumer', c]));

  // Enabled while stopped.
  seen.enabled = await daemon.cliJson(['enable', guest.name]);
  seen.inactiveXml = (await virsh(['dumpxml', '--inactive', guest.name])).stdout;
  seen.bitmapsOffline = JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', guest.disks.scratch])).stdout)['format-specific'].data.bitmaps;
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  await daemon.cli(['consumer', 'add', guest.name, 'offsite']);

  // Started: connected through the hook; first passes.
  await guest.start();
  await waitConnected();
  seen.firstPasses = [await fullPass('nightly'), await fullPass('offsite')];

  // Writes, one consumer's pass, more writes, a new consumer.
  await guestWrite(1 * MiB);
  await guestWrite(3 * MiB + 64 * KiB);
  seen.nightlyBefore = await cliJsonAsEver(['changes', guest.name, '--consumer', 'nightly']);
  seen.nightlyPass = await cliJsonAsEver(['pass', 'begin', guest.name, '--consumer', 'nightly']);
  await daemon.cli(['pass', 'commit', guest.name, '--consumer', 'nightly', '--pass', String(seen.nightlyPass.pass)]);
  await guestWrite(5 * MiB);
  seen.nightlyAfter = await changes('nightly');
  seen.offsiteAfter = await changes('offsite');
  await daemon.cli(['consumer', 'add', guest.name, 'replica']);
  seen.replicaFirst = await changes('replica');

  // A pass opened and aborted.
  seen.openPass = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'offsite']);
  seen.statusWithPass = await daemon.cliJson(['status', guest.name]);
  await daemon.cli(['pass', 'abort', guest.name, '--consumer', 'offsite', '--pass', String(seen.openPass.pass)]);
  seen.offsiteAfterAbort = await changes('offsite');

  // A write, then shutdown and restart.
  await guestWrite(7 * MiB);
  await guest.destroy(); // SIGTERM: QEMU exits cleanly and stores its persistent bitmaps
  await connected(daemon, guest.name, false);
  await guest.start();
  await waitConnected();
  seen.nightlyAfterRestart = await changes('nightly');

  // An external snapshot of vdb.
  const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'nightly']);
  await daemon.cli(['pass', 'commit', guest.name, '--consumer', 'nightly', '--pass', String(p.pass)]);
  await virsh(['snapshot-create-as', guest.name, '--disk-only', '--no-metadata', '--atomic',
    '--diskspec', 'vda,snapshot=no', '--diskspec', `vdb,file=${guest.dir}/scratch-overlay.qcow2`]);
  seen.afterSnapshot = await changes('nightly');
  const q = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'nightly']);
  await daemon.cli(['pass', 'commit', guest.name, '--consumer', 'nightly', '--pass', String(q.pass)]);
  await guestWrite(11 * MiB);
  seen.onNewLayer = await changes('nightly');

  // kill -9 of QEMU.
  await guestWrite(9 * MiB);
  const pid = Number(readFileSync(`/run/libvirt/qemu/${guest.name}.pid`, 'utf8'));
  process.kill(pid, 'SIGKILL');
  await pollUntil(async () => /shut off|crashed/.test((await virsh(['domstate', guest.name])).stdout), 'domain to stop', { timeoutMs: 30_000 });
  seen.afterKill = {} as Record<string, any>;
  for (const c of ['nightly', 'offsite', 'replica']) seen.afterKill[c] = await changes(c);
});

describe('changed-block tracking on a libvirt domain', () => {
  it('enables a stopped domain: QMP socket in the XML, bitmaps created offline', () => {
    expect(seen.enabled.disks.map((d: { target: string }) => d.target)).toEqual(['vda', 'vdb']);
    expect(seen.inactiveXml).toContain(seen.enabled.qmpSocket);
    expect(seen.bitmapsOffline.map((b: { name: string }) => b.name)).toEqual(['virtcbt-1']);
  });

  it('connects through the hook when the domain starts; first passes are full', () => {
    expect(seen.firstPasses.map((d: { full: boolean }) => d.full)).toEqual([true, true]);
  });

  it('each consumer sees exactly the writes since its own last pass', () => {
    expect(vdb(seen.nightlyBefore)).toMatchObject({ full: false, extents: [[1 * MiB, 64 * KiB], [3 * MiB + 64 * KiB, 64 * KiB]] });
    expect(vdb(seen.nightlyPass).extents).toEqual([[1 * MiB, 64 * KiB], [3 * MiB + 64 * KiB, 64 * KiB]]);
    expect(seen.nightlyAfter.extents).toEqual([[5 * MiB, 64 * KiB]]);
    expect(seen.offsiteAfter.extents).toEqual([[1 * MiB, 64 * KiB], [3 * MiB + 64 * KiB, 64 * KiB], [5 * MiB, 64 * KiB]]);
    // A new consumer's pass is full, narrowed to what is allocated: the written blocks, not the whole disk.
    const full = seen.replicaFirst as { full: boolean; extents: [number, number][] };
    expect(full.full).toBe(true);
    for (const off of [1 * MiB, 3 * MiB + 64 * KiB, 5 * MiB]) {
      expect(full.extents.some(([o, l]) => o <= off && off + 64 * KiB <= o + l), `allocated extents cover ${off}`).toBe(true);
    }
    expect(full.extents.reduce((s, [, l]) => s + l, 0)).toBeLessThan(16 * MiB);
  });

  it('an open pass is visible in status and never moves the consumer', () => {
    expect(seen.statusWithPass.openPasses.map((o: { id: number }) => o.id)).toContain(seen.openPass.pass);
    expect(seen.offsiteAfterAbort.extents.length).toBe(3);
  });

  it('writes of one VM session are still reported after shutdown and restart', () => {
    expect(seen.nightlyAfterRestart.extents).toEqual([[5 * MiB, 64 * KiB], [7 * MiB, 64 * KiB]]);
  });

  it('an external snapshot moves the active layer away from the bitmap: the floor rises', () => {
    expect(seen.afterSnapshot.full).toBe(true);
    expect(seen.afterSnapshot.reason).toMatch(/active layer/);
    // Tracking goes on, on the new active layer.
    expect(seen.onNewLayer.extents).toEqual([[11 * MiB, 64 * KiB]]);
  });

  it('kill -9 of QEMU: the next changes is a full pass for every consumer', () => {
    for (const c of ['nightly', 'offsite', 'replica']) {
      expect(seen.afterKill[c].full, c).toBe(true);
      if (c !== 'replica') expect(seen.afterKill[c].reason).toMatch(/inconsistent|lost/);
    }
  });

  it('status reports the domain, disks and consumers', async () => {
    const st = await daemon.cliJson(['status', guest.name]);
    expect(st.disks.map((d: { target: string }) => d.target)).toEqual(['vda', 'vdb']);
    expect(st.consumers.map((c: { name: string }) => c.name).sort()).toEqual(['nightly', 'offsite', 'replica']);
    const human = await daemon.cli(['status', guest.name]);
    expect(human.stdout).toContain(`${guest.name}: shut off`);
  });
});
