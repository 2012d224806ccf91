// Changed-block tracking end to end on a real libvirt domain: the hook, virtcbtd and the CLI.
// Writes at known offsets of the scratch disk show up exactly (at bitmap granularity) for each
// consumer independently; they survive a VM restart; a killed QEMU forces a full pass.
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

async function fullPass(consumer: string): Promise<void> {
  const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', consumer]);
  expect(vdb(p).full).toBe(true);
  await daemon.cli(['pass', 'commit', guest.name, '--consumer', consumer, '--pass', String(p.pass)]);
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'cbt', scratchFormat: 'qcow2', start: false });
  agent = guestAgent(guest.name);
});

describe('changed-block tracking on a libvirt domain', () => {
  it('enables a stopped domain: QMP socket in the XML, bitmaps created offline', async () => {
    const r = await daemon.cliJson(['enable', guest.name]);
    expect(r.disks.map((d: { target: string }) => d.target)).toEqual(['vda', 'vdb']);
    const xml = (await virsh(['dumpxml', '--inactive', guest.name])).stdout;
    expect(xml).toContain(r.qmpSocket);
    const info = (await import('node:child_process')).execFileSync('qemu-img', ['info', '--output=json', '-U', guest.disks.scratch]).toString();
    expect(JSON.parse(info)['format-specific'].data.bitmaps.map((b: { name: string }) => b.name)).toEqual(['virtcbt-1']);
    await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
    await daemon.cli(['consumer', 'add', guest.name, 'offsite']);
  });

  it('connects through the hook when the domain starts; first passes are full', async () => {
    await guest.start();
    await waitConnected();
    await fullPass('nightly');
    await fullPass('offsite');
  });

  it('each consumer sees exactly the writes since its own last pass', async () => {
    await guestWrite(1 * MiB);
    await guestWrite(3 * MiB + 64 * KiB);
    const a = await cliJsonAsEver(['changes', guest.name, '--consumer', 'nightly']);
    expect(vdb(a)).toMatchObject({ full: false, extents: [[1 * MiB, 64 * KiB], [3 * MiB + 64 * KiB, 64 * KiB]] });

    const p = await cliJsonAsEver(['pass', 'begin', guest.name, '--consumer', 'nightly']);
    expect(vdb(p).extents).toEqual([[1 * MiB, 64 * KiB], [3 * MiB + 64 * KiB, 64 * KiB]]);
    await daemon.cli(['pass', 'commit', guest.name, '--consumer', 'nightly', '--pass', String(p.pass)]);

    await guestWrite(5 * MiB);
    expect(vdb(await daemon.cliJson(['changes', guest.name, '--consumer', 'nightly'])).extents).toEqual([[5 * MiB, 64 * KiB]]);
    expect(vdb(await daemon.cliJson(['changes', guest.name, '--consumer', 'offsite'])).extents)
      .toEqual([[1 * MiB, 64 * KiB], [3 * MiB + 64 * KiB, 64 * KiB], [5 * MiB, 64 * KiB]]);
    await daemon.cli(['consumer', 'add', guest.name, 'replica']);
    // A new consumer's pass is full, narrowed to what is allocated: the written blocks, not the whole disk.
    const full = vdb(await daemon.cliJson(['changes', guest.name, '--consumer', 'replica']));
    expect(full.full).toBe(true);
    for (const off of [1 * MiB, 3 * MiB + 64 * KiB, 5 * MiB]) {
      expect(full.extents.some(([o, l]) => o <= off && off + 64 * KiB <= o + l), `allocated extents cover ${off}`).toBe(true);
    }
    expect(full.extents.reduce((s, [, l]) => s + l, 0)).toBeLessThan(16 * MiB);
  });

  it('an open pass is visible in status and never moves the consumer', async () => {
    const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'offsite']);
    const st = await daemon.cliJson(['status', guest.name]);
    expect(st.openPasses.map((o: { id: number }) => o.id)).toContain(p.pass);
    await daemon.cli(['pass', 'abort', guest.name, '--consumer', 'offsite', '--pass', String(p.pass)]);
    expect(vdb(await daemon.cliJson(['changes', guest.name, '--consumer', 'offsite'])).extents.length).toBe(3);
  });

  it('writes of one VM session are still reported after shutdown and restart', async () => {
    await guestWrite(7 * MiB);
    await guest.destroy(); // SIGTERM: QEMU exits cleanly and stores its persistent bitmaps
    await connected(daemon, guest.name, false);
    await guest.start();
    await waitConnected();
    expect(vdb(await daemon.cliJson(['changes', guest.name, '--consumer', 'nightly'])).extents).toEqual([[5 * MiB, 64 * KiB], [7 * MiB, 64 * KiB]]);
  });

  it('an external snapshot moves the active layer away from the bitmap: the floor rises', async () => {
    const p = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'nightly']);
    await daemon.cli(['pass', 'commit', guest.name, '--consumer', 'nightly', '--pass', String(p.pass)]);
    await virsh(['snapshot-create-as', guest.name, '--disk-only', '--no-metadata', '--atomic',
      '--diskspec', 'vda,snapshot=no', '--diskspec', `vdb,file=${guest.dir}/scratch-overlay.qcow2`]);
    const r = vdb(await daemon.cliJson(['changes', guest.name, '--consumer', 'nightly']));
    expect(r.full).toBe(true);
    expect(r.reason).toMatch(/active layer/);
    // Tracking goes on, on the new active layer.
    await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'nightly']).then((q) =>
      daemon.cli(['pass', 'commit', guest.name, '--consumer', 'nightly', '--pass', String(q.pass)]));
    await guestWrite(11 * MiB);
    expect(vdb(await daemon.cliJson(['changes', guest.name, '--consumer', 'nightly'])).extents).toEqual([[11 * MiB, 64 * KiB]]);
  });

  it('kill -9 of QEMU: the next changes is a full pass for every consumer', async () => {
    await guestWrite(9 * MiB);
    const pid = Number((await import('node:fs')).readFileSync(`/run/libvirt/qemu/${guest.name}.pid`, 'utf8'));
    process.kill(pid, 'SIGKILL');
    await pollUntil(async () => /shut off|crashed/.test((await virsh(['domstate', guest.name])).stdout), 'domain to stop', { timeoutMs: 30_000 });
    for (const c of ['nightly', 'offsite', 'replica']) {
      const r = await daemon.cliJson(['changes', guest.name, '--consumer', c]);
      expect(vdb(r).full, c).toBe(true);
      if (c !== 'replica') expect(vdb(r).reason).toMatch(/inconsistent|lost/);
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
