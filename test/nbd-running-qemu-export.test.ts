// Our NBD client against a running QEMU's own NBD server: block status for base:allocation and a
// disabled dirty bitmap equals nbdinfo --map, and the data read equals what nbdcopy reads.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint, NbdEndpoint, copyExtents, wholeDisk } from '../src/copy/index.js';
import { MapWriter, NbdClient } from '../src/nbd/index.js';
import { QmpClient } from '../src/qmp/index.js';
import { GuestAgent, SocketTransport } from '../src/guest/index.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startQemuGuest, type QemuGuest } from './support/qemu.js';

useCleanup();

let guest: QemuGuest;
let qmp: QmpClient;
let socket: string;
const uriOf = (name: string) => `nbd+unix:///${name}?socket=${socket}`;

async function ourMap(uri: string, context: string): Promise<string> {
  const c = await NbdClient.connect(uri, { metaContexts: [context], timeoutMs: 30_000 });
  try {
    const blocks: Buffer[] = [];
    const w = new MapWriter(context, false, (b) => blocks.push(Buffer.from(b)));
    for await (const run of c.blockStatusRuns(context)) {
      let pos = run.offset;
      for (let i = 0; i < run.extents.length; i += 2) {
        w.extent(pos, run.extents[i]!, run.extents[i + 1]!);
        pos += run.extents[i]!;
      }
    }
    w.end();
    return Buffer.concat(blocks).toString().trimEnd();
  } finally {
    await c.close();
  }
}

beforeAll(async () => {
  guest = await startQemuGuest();
  qmp = await QmpClient.connect(guest.qmpSocket);
  onCleanup(() => qmp.close());
  const agent = new GuestAgent(new SocketTransport(guest.agentSocket, { domain: 'nbd-running-qemu' }));
  onCleanup(() => agent.close());
  await agent.waitReady({ timeoutMs: 60_000 });
  await qmp.execute('block-dirty-bitmap-add', { node: guest.nodes.data, name: 'b0', persistent: true });
  await qmp.execute('block-dirty-bitmap-add', { node: guest.nodes.scratch, name: 's0' });
  // The guest writes: a file on its ext4 data disk, and raw blocks at known places on the scratch disk.
  const sh = async (cmd: string) => {
    const r = await agent.exec('/bin/sh', ['-c', cmd]);
    expect(r.exitCode, `${cmd}: ${r.stderr}`).toBe(0);
  };
  await sh('dd if=/dev/urandom of=/mnt/data/nbd-test.bin bs=4096 count=75 && sync');
  await sh('dd if=/dev/urandom of=/dev/vdb bs=65536 seek=16 count=1 conv=fsync');   // 64 KiB at 1 MiB
  await sh('dd if=/dev/urandom of=/dev/vdb bs=4096 seek=1792 count=50 conv=fsync'); // 200 KiB at 7 MiB
  await sh('dd if=/dev/urandom of=/dev/vdb bs=4096 seek=10240 count=1 conv=fsync'); // 4 KiB at 40 MiB
  await qmp.execute('block-dirty-bitmap-disable', { node: guest.nodes.data, name: 'b0' });
  await qmp.execute('block-dirty-bitmap-disable', { node: guest.nodes.scratch, name: 's0' });
  socket = join(guest.dir, 'nbd.sock');
  await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } });
  await qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': guest.nodes.data, name: 'data', writable: false, bitmaps: ['b0'] });
  await qmp.execute('block-export-add', { type: 'nbd', id: 'e1', 'node-name': guest.nodes.scratch, name: 'scratch', writable: false, bitmaps: ['s0'] });
  // A paused guest keeps the disks still while two readers compare them.
  await qmp.execute('stop');
});

describe('NBD against a running QEMU export', () => {
  it('block status for base:allocation and the disabled bitmaps equals nbdinfo --map', async () => {
    for (const [name, bitmap] of [['data', 'b0'], ['scratch', 's0']] as const) {
      for (const ctx of ['base:allocation', `qemu:dirty-bitmap:${bitmap}`]) {
        const ref = (await execa('nbdinfo', [`--map=${ctx}`, uriOf(name)])).stdout;
        expect(await ourMap(uriOf(name), ctx), `${name} ${ctx}`).toBe(ref);
      }
    }
    expect(await ourMap(uriOf('data'), 'qemu:dirty-bitmap:b0')).toMatch(/ dirty$/m);
    const dirty = (await ourMap(uriOf('scratch'), 'qemu:dirty-bitmap:s0')).split('\n').filter((l) => l.endsWith('dirty'));
    // Whole 64 KiB clusters: 1 at 1 MiB, 4 at 7 MiB (200 KiB), 1 at 40 MiB (4 KiB).
    expect(dirty.map((l) => l.trim().split(/\s+/).slice(0, 2).map(Number))).toEqual([
      [1 << 20, 65536], [7 << 20, 4 * 65536], [40 << 20, 65536],
    ]);
  });

  it('data read through our client equals what nbdcopy reads', async () => {
    for (const name of ['data', 'scratch']) {
      const ours = join(guest.dir, `ours-${name}.raw`);
      const ref = join(guest.dir, `ref-${name}.raw`);
      const src = await NbdEndpoint.open(uriOf(name), { metaContexts: ['base:allocation'] });
      const dst = await FileEndpoint.open(ours, { create: { size: src.size } });
      try {
        await copyExtents(src, dst, wholeDisk(src));
      } finally {
        await Promise.allSettled([src.close(), dst.close()]);
      }
      await execa('nbdcopy', [uriOf(name), ref]);
      const cmp = await execa('cmp', [ours, ref], { reject: false });
      expect(cmp.exitCode, `${name}: ${cmp.stdout}`).toBe(0);
    }
    // What the guest wrote is there (random bytes: not all zero).
    const b = readFileSync(join(guest.dir, 'ours-scratch.raw'));
    expect(b.subarray(7 << 20, (7 << 20) + 200 * 1024).some((x) => x !== 0)).toBe(true);
  });
});
