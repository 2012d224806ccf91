// The QMP client against a real qemu-storage-daemon on a qcow2: node listing, persistent bitmaps, transactions, exports.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startStorageDaemon, type StorageDaemon } from './support/storage-daemon.js';
import {
  QmpClient,
  QmpCommandError,
  actions,
  blockDirtyBitmapAdd,
  blockDirtyBitmapMerge,
  blockDirtyBitmapRemove,
  blockExportAddNbd,
  blockExportDel,
  nbdServerStart,
  nbdServerStop,
  queryBlockExports,
  queryNamedBlockNodes,
  transaction,
  unixAddress,
  type BlockDirtyInfo,
} from '../src/qmp/index.js';

useCleanup();

let image: string;
let qsd: StorageDaemon;
let qmp: QmpClient;

beforeAll(async () => {
  const dir = await mkdtemp(join(tmpdir(), 'virtcbt-qmp-qsd-'));
  onCleanup(() => rm(dir, { recursive: true, force: true }));
  image = join(dir, 'disk.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  qsd = await startStorageDaemon({ image, nodeName: 'disk' });
  qmp = await QmpClient.connect(qsd.qmpSocket, { timeoutMs: 10_000 });
  // Runs before qsd.stop (cleanups run last-registered first): the daemon's socket serves one client.
  onCleanup(() => qmp.close());
});

async function bitmaps(): Promise<BlockDirtyInfo[]> {
  const nodes = await queryNamedBlockNodes(qmp);
  const disk = nodes.find((n) => n['node-name'] === 'disk');
  expect(disk, 'format node "disk" in query-named-block-nodes').toBeDefined();
  return disk!['dirty-bitmaps'] ?? [];
}

describe('QMP against qemu-storage-daemon', () => {
  it('greets with QEMU 7.2 and lists the format and file nodes', async () => {
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    const nodes = await queryNamedBlockNodes(qmp);
    const byName = new Map(nodes.map((n) => [n['node-name'], n]));
    expect(byName.get('disk')?.drv).toBe('qcow2');
    expect(byName.get('disk-file')?.drv).toBe('file');
    expect(byName.get('disk')?.image['virtual-size']).toBe(64 * 1024 * 1024);
  });

  it('adds a persistent bitmap, rotates it in one transaction, merges, and removes', async () => {
    await blockDirtyBitmapAdd(qmp, { node: 'disk', name: 'b1', persistent: true });
    let bms = await bitmaps();
    expect(bms).toEqual([
      expect.objectContaining({ name: 'b1', recording: true, persistent: true, count: 0, granularity: 65536, busy: false }),
    ]);

    await transaction(qmp, [
      actions.bitmapAdd({ node: 'disk', name: 'b2', persistent: true }),
      actions.bitmapDisable({ node: 'disk', name: 'b1' }),
    ]);
    bms = await bitmaps();
    expect(bms.find((b) => b.name === 'b1')?.recording).toBe(false);
    expect(bms.find((b) => b.name === 'b2')?.recording).toBe(true);

    // A transaction is all or nothing: the failing second action undoes the first.
    const err = await transaction(qmp, [
      actions.bitmapAdd({ node: 'disk', name: 'b3' }),
      actions.bitmapRemove({ node: 'disk', name: 'missing' }),
    ]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect((err as QmpCommandError).errorClass).toBe('GenericError');
    expect((err as QmpCommandError).command).toBe('transaction');
    expect((await bitmaps()).map((b) => b.name).sort()).toEqual(['b1', 'b2']);

    await blockDirtyBitmapAdd(qmp, { node: 'disk', name: 'sum', disabled: true });
    await blockDirtyBitmapMerge(qmp, { node: 'disk', target: 'sum', bitmaps: ['b1', { node: 'disk', name: 'b2' }] });

    for (const name of ['b1', 'b2', 'sum']) await blockDirtyBitmapRemove(qmp, { node: 'disk', name });
    expect(await bitmaps()).toEqual([]);
  });

  it('surfaces QEMU\'s error for a bitmap on a missing node and for an unknown command', async () => {
    const e1 = (await blockDirtyBitmapAdd(qmp, { node: 'nope', name: 'x' }).catch((e: unknown) => e)) as QmpCommandError;
    expect(e1).toBeInstanceOf(QmpCommandError);
    expect(e1.errorClass).toBe('GenericError');
    expect(e1.desc).toMatch(/nope/);
    const e2 = (await qmp.execute('no-such-command').catch((e: unknown) => e)) as QmpCommandError;
    expect(e2).toBeInstanceOf(QmpCommandError);
    expect(e2.errorClass).toBe('CommandNotFound');
    expect(qmp.isOpen).toBe(true);
  });

  it('starts an NBD server with the legacy unix address and exports the node with a disabled bitmap', async () => {
    await blockDirtyBitmapAdd(qmp, { node: 'disk', name: 'exp', persistent: false, disabled: true });
    const sock = join(qsd.dir, 'nbd-test.sock');
    await nbdServerStart(qmp, { addr: unixAddress(sock) });
    await blockExportAddNbd(qmp, { id: 'e1', 'node-name': 'disk', name: 'vda', writable: false, bitmaps: ['exp'] });
    expect(await queryBlockExports(qmp)).toEqual([expect.objectContaining({ id: 'e1', 'node-name': 'disk', type: 'nbd' })]);
    const info = JSON.parse((await execa('nbdinfo', ['--json', `nbd+unix:///vda?socket=${sock}`])).stdout) as {
      exports: { contexts: string[] }[];
    };
    expect(info.exports[0].contexts).toContain('qemu:dirty-bitmap:exp');

    const deleted = qmp.waitFor('BLOCK_EXPORT_DELETED', (ev) => ev.data.id === 'e1', { timeoutMs: 10_000 });
    await blockExportDel(qmp, 'e1');
    await deleted;
    await nbdServerStop(qmp);
    await blockDirtyBitmapRemove(qmp, { node: 'disk', name: 'exp' });
  });
});
