// The guest-agent used map (GETFSMAP read in the real tiny guest under libvirt while its own
// script holds the freeze) equals what e2fsprogs and xfs_db read from a copy of the disks taken in
// that same frozen window: ext4 on a whole disk, XFS in a GPT partition at 1 MiB (the partition
// start from the guest's sysfs). qemu-ga knows nothing of that freeze and keeps answering. The
// guest ends thawed on every path: the host's work failing, the host's timeout, no word from the
// host at all (the script's deadline), and the script killed (its watchdog).
import { execa } from 'execa';
import { chown, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { complement } from '../src/usedmap/index.js';
import { AgentMapFreezer, agentDiskUsedMap, FREEZE_SCRIPT, guestFilesystems, parseScriptReport } from '../src/usedmap/index.js';
import { rotateFrozen } from '../src/snapshot/index.js';
import { TimeoutError } from '../src/util/errors.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { ext4FreeExtents, xfsFreeExtents } from './support/fs-tools.js';
import { guestImages } from './support/images.js';
import { LIBVIRT_URI, startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
const MiB = 1024 * 1024;
const XFS_START = MiB;
const XFS_BYTES = 320 * MiB;
const DATA_BYTES = 256 * MiB;

let vm: LibvirtGuest;
let agent: GuestAgent;

beforeAll(async () => {
  vm = await startLibvirtGuest({ name: 'usedmap', start: false });
  // vdb becomes a GPT disk whose first partition, at 1 MiB, holds the cached empty XFS.
  const images = await guestImages();
  const part = join(vm.dir, 'xfs-part.raw');
  await execa('qemu-img', ['convert', '-q', '-O', 'raw', images.dataXfs, part]);
  await rm(vm.disks.scratch, { force: true });
  await execa('truncate', ['-s', String(XFS_START + XFS_BYTES + MiB), vm.disks.scratch]);
  await execa('sfdisk', ['-q', vm.disks.scratch], { input: `label: gpt\nstart=${XFS_START / 512}, size=${XFS_BYTES / 512}, type=linux\n` });
  await execa('dd', [`if=${part}`, `of=${vm.disks.scratch}`, 'bs=1M', `seek=${XFS_START / MiB}`, 'conv=notrunc,sparse', 'status=none']);
  await rm(part);
  await chown(vm.disks.scratch, ...(await libvirtQemuIds()));
  await vm.start();
  agent = new GuestAgent(new LibvirtTransport(vm.name, { uri: LIBVIRT_URI }));
}, 300_000);

async function libvirtQemuIds(): Promise<[number, number]> {
  const { stdout } = await execa('id', ['libvirt-qemu']);
  return [Number(/uid=(\d+)/.exec(stdout)![1]), Number(/gid=(\d+)/.exec(stdout)![1])];
}

async function sh(script: string, timeoutMs = 60_000): Promise<string> {
  return (await agent.exec('/bin/sh', ['-c', script], { timeoutMs, reject: true })).stdout;
}

/** Both filesystems take a write now: neither is frozen (a write to a frozen one would hang until `timeout` kills the shell). */
async function expectThawed(): Promise<void> {
  expect(await agent.fsfreezeStatus()).toBe('thawed');
  const out = await sh('timeout 10 sh -c "echo x > /mnt/data/probe && echo x > /mnt/xfs/probe && sync" && echo wrote', 40_000);
  expect(out.trim()).toBe('wrote');
}

async function freezer(opts: { lookUpFirst?: boolean } = {}): Promise<AgentMapFreezer> {
  const { stdout: xml } = await virsh(['dumpxml', vm.name]);
  const filesystems = opts.lookUpFirst ? await guestFilesystems(agent, { domainXml: xml }) : undefined;
  return new AgentMapFreezer(agent, { domainXml: xml, filesystems });
}

describe('guest-agent used map', () => {
  it('equals dumpe2fs and xfs_db of the disks copied in the same frozen window', async () => {
    // Files written, some deleted: free space with holes in both filesystems.
    await sh(`
      for d in /mnt/data /mnt/xfs; do
        for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=$d/f$i bs=64k count=$((i * 5)) 2>/dev/null; done
        rm $d/f2 $d/f4 $d/f7 $d/blob.bin 2>/dev/null
      done; sync`, 120_000);
    const f = await freezer();
    const copyExt4 = join(vm.dir, 'copy-data.raw');
    const copyXfs = join(vm.dir, 'copy-xfs.raw');
    const seenWhileFrozen: string[] = [];
    const { capture } = await f.freezeAndMap(async () => {
      // qemu-ga is not the one freezing: it keeps answering everything.
      seenWhileFrozen.push(await agent.fsfreezeStatus());
      seenWhileFrozen.push((await agent.getFsinfo()).map((x) => x.mountpoint).sort().join(','));
      await virsh(['suspend', vm.name]);
      try {
        await execa('qemu-img', ['convert', '-U', '-q', '-f', 'qcow2', '-O', 'raw', vm.disks.data, copyExt4]);
        await execa('qemu-img', ['convert', '-U', '-q', '-f', 'raw', '-O', 'raw', vm.disks.scratch, copyXfs]);
      } finally {
        await virsh(['resume', vm.name]);
      }
    }, { timeoutMs: 90_000 });
    onCleanup(() => rm(copyExt4, { force: true }));
    onCleanup(() => rm(copyXfs, { force: true }));
    expect(seenWhileFrozen).toEqual(['thawed', '/mnt/data,/mnt/xfs']);
    expect(capture.via).toBe('guest-script');
    expect(capture.released).toBe('go');
    console.log(`freeze window ${capture.freezeWindowMs} ms by the guest's clock (stopped while suspended), ${capture.hostWindowMs} ms by the host's; freeze ${capture.freezeCallMs} ms, GETFSMAP ${capture.readMs} ms, whole call ${capture.hostMs} ms`);
    expect(capture.freezeWindowMs).toBeGreaterThan(0);

    const data = capture.filesystems.find((x) => x.mountpoint === '/mnt/data')!;
    expect(data).toMatchObject({ type: 'ext4', device: 'vda', target: 'vda', offset: 0, size: DATA_BYTES, mapped: true });
    const ext4 = await ext4FreeExtents(copyExt4);
    expect(data.free).toEqual(ext4.free);
    expect(agentDiskUsedMap(capture, { target: 'vda', size: DATA_BYTES }).used).toEqual(complement(ext4.free, DATA_BYTES));

    const xfs = capture.filesystems.find((x) => x.mountpoint === '/mnt/xfs')!;
    expect(xfs).toMatchObject({ type: 'xfs', device: 'vdb1', guestDisk: 'vdb', target: 'vdb', offset: XFS_START, size: XFS_BYTES, mapped: true });
    const part = join(vm.dir, 'copy-xfs-part.raw');
    onCleanup(() => rm(part, { force: true }));
    await execa('dd', [`if=${copyXfs}`, `of=${part}`, 'bs=1M', `skip=${XFS_START / MiB}`, `count=${XFS_BYTES / MiB}`, 'conv=sparse', 'status=none']);
    const ref = await xfsFreeExtents(part);
    expect(xfs.free).toEqual(ref.free.map((e) => ({ offset: e.offset + XFS_START, length: e.length })));
    // The partition table before it and the space after it are used: nothing outside a mapped filesystem is free.
    const diskSize = XFS_START + XFS_BYTES + MiB;
    const used = agentDiskUsedMap(capture, { target: 'vdb', size: diskSize }).used;
    expect(used[0]).toEqual({ offset: 0, length: XFS_START + (ref.free[0]?.offset ?? XFS_BYTES) });
    expect(used.at(-1)!.offset + used.at(-1)!.length).toBe(diskSize);
    await expectThawed();
  });

  it('serves the snapshot room\'s rotateFrozen as its agent: the transaction runs frozen, the maps come with it', async () => {
    // Filesystems looked up before the rotation, so the freeze does not wait for that.
    const f = await freezer({ lookUpFirst: true });
    let inTransaction: string | undefined;
    const { freeze } = await rotateFrozen(async (around) => {
      await around!(async () => {
        // Frozen now: a second freeze is refused at once (EBUSY); a write would hang until the thaw.
        inTransaction = await sh('if fsfreeze --freeze /mnt/data 2>/dev/null; then fsfreeze --unfreeze /mnt/data; echo thawed; else echo frozen; fi');
      });
      return { disks: [] };
    }, f, { freezeTimeoutMs: 60_000 });
    expect(inTransaction?.trim()).toBe('frozen');
    expect(freeze.consistency).toBe('filesystem');
    expect(f.last?.via).toBe('guest-script');
    expect(f.last?.filesystems.map((x) => [x.mountpoint, x.mapped])).toEqual(expect.arrayContaining([['/mnt/data', true], ['/mnt/xfs', true]]));
    await expectThawed();
  });

  it('a filesystem it cannot map (no GETFSMAP reader in the guest) counts as used whole, with the reason', async () => {
    await sh('mv /bin/xfs_io /bin/xfs_io.away');
    onCleanup(() => sh('[ -e /bin/xfs_io.away ] && mv /bin/xfs_io.away /bin/xfs_io; true'));
    const f = await freezer();
    const { capture } = await f.freezeAndMap(async () => undefined, { timeoutMs: 60_000 });
    const xfs = capture.filesystems.find((x) => x.mountpoint === '/mnt/xfs')!;
    expect(xfs).toMatchObject({ mapped: false, free: [], used: [{ offset: XFS_START, length: XFS_BYTES }] });
    expect(xfs.reason).toMatch(/xfs_io \(xfsprogs\) is not installed in the guest/);
    const diskSize = XFS_START + XFS_BYTES + MiB;
    expect(agentDiskUsedMap(capture, { target: 'vdb', size: diskSize })).toEqual({
      used: [{ offset: 0, length: diskSize }],
      unmapped: [{ mountpoint: '/mnt/xfs', reason: xfs.reason }],
    });
    await expectThawed();
  });

  it('thaws when the work in the frozen window fails, and passes its error on', async () => {
    const f = await freezer();
    const boom = new Error('snapshot transaction failed');
    await expect(f.withFrozen(async () => { throw boom; }, { timeoutMs: 60_000 })).rejects.toBe(boom);
    await expectThawed();
  });

  it('thaws at the host\'s timeout without waiting for the work', async () => {
    const f = await freezer();
    let stepSignal: AbortSignal | undefined;
    const err = await f.withFrozen((signal) => {
      stepSignal = signal;
      return new Promise(() => {});
    }, { timeoutMs: 3_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect(stepSignal?.aborted).toBe(true);
    await expectThawed();
  });

  it('thaws at its own deadline when the host never sends its word', async () => {
    const dir = '/run/virtcbt-freeze-test-deadline';
    const r = await agent.exec('/bin/sh', ['-c', FREEZE_SCRIPT, 'virtcbt-freeze', dir, '4', '/mnt/xfs', '/mnt/data'], { timeoutMs: 60_000 });
    expect(r.exitCode).toBe(0);
    const report = parseScriptReport(r.stdout)!;
    expect(report.released).toBe('deadline');
    expect(report.maps.map((m) => m.rc)).toEqual([0, 0]);
    await expectThawed();
  });

  it('its watchdog thaws when the script itself is killed while frozen', async () => {
    const dir = '/run/virtcbt-freeze-test-watchdog';
    const { pid } = await agent.execute<{ pid: number }>('guest-exec', { path: '/bin/sh', arg: ['-c', FREEZE_SCRIPT, 'virtcbt-freeze', dir, '4', '/mnt/xfs', '/mnt/data'] });
    // Killed as soon as it says frozen: no EXIT trap runs on SIGKILL, only the watchdog is left.
    await sh(`i=0; while [ ! -e ${dir}/frozen ]; do i=$((i+1)); [ $i -gt 600 ] && exit 1; usleep 50000; done; kill -9 ${pid}`);
    const frozenNow = await sh('timeout 1 sh -c "echo x > /mnt/data/probe2" && echo wrote || echo blocked');
    expect(frozenNow.trim()).toBe('blocked');
    const out = await sh(`i=0; while [ ! -e ${dir}/watchdog ]; do i=$((i+1)); [ $i -gt 300 ] && exit 1; usleep 100000; done; echo thawed-by-watchdog`);
    expect(out.trim()).toBe('thawed-by-watchdog');
    await expectThawed();
    await sh(`rm -rf ${dir}`);
  });
});
