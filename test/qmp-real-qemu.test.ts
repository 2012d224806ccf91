// The QMP client against a booted guest under real QEMU: bitmaps count the guest's writes, events, errors, and QEMU killed mid-call.
import { beforeAll, describe, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startQemuGuest, type QemuGuest } from './support/qemu.js';
import {
  QmpClient,
  QmpCommandError,
  QmpConnectionError,
  actions,
  blockDirtyBitmapAdd,
  blockDirtyBitmapRemove,
  cont,
  findDisk,
  queryBlock,
  queryDisk,
  queryStatus,
  stop,
  transaction,
} from '../src/qmp/index.js';
import { GuestAgent, SocketTransport } from '../src/guest/index.js';

useCleanup();

const K64 = 65536;

describe('QMP against a running guest', () => {
  let guest: QemuGuest;
  let qmp: QmpClient;
  let agent: GuestAgent;

  beforeAll(async () => {
    guest = await startQemuGuest();
    // Cleanups run last-registered first: the client lets go of the single-client sockets before QEMU is stopped.
    agent = new GuestAgent(new SocketTransport(guest.agentSocket, { domain: 'qmp-real-qemu' }));
    onCleanup(() => agent.close());
    qmp = await QmpClient.connect(guest.qmpSocket, { domain: 'qmp-real-qemu' });
    onCleanup(() => qmp.close());
    await agent.waitReady({ timeoutMs: 60_000 });
  });

  async function guestDd(seekBlocks: number): Promise<void> {
    const r = await agent.exec(
      '/bin/dd',
      ['if=/dev/urandom', 'of=/dev/vdb', `bs=${K64}`, `seek=${seekBlocks}`, 'count=1', 'oflag=direct', 'conv=fsync,notrunc'],
      { timeoutMs: 30_000 },
    );
    expect(r.exitCode, `dd stderr: ${r.stderr}`).toBe(0);
  }

  it('finds the disks by device id with an empty legacy device name', async () => {
    const blocks = await queryBlock(qmp);
    const vda = findDisk(blocks, 'vda');
    expect(vda).toMatchObject({ node: 'data', device: '', qdev: '/machine/peripheral/vda/virtio-backend', format: 'qcow2' });
    expect(findDisk(blocks, '/machine/peripheral/vdb/virtio-backend')?.node).toBe('scratch');
    expect(findDisk(blocks, 'scratch')?.format).toBe('raw');
    expect(findDisk(blocks, 'vdz')).toBeUndefined();
  });

  it('a bitmap added over QMP counts exactly the blocks the guest wrote with dd', async () => {
    // scratch is raw: QEMU refuses a persistent bitmap there (only qcow2 can store one).
    const refused = await blockDirtyBitmapAdd(qmp, { node: 'scratch', name: 'p', persistent: true }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(QmpCommandError);
    expect((refused as QmpCommandError).errorClass).toBe('GenericError');

    await blockDirtyBitmapAdd(qmp, { node: 'scratch', name: 'cbt', granularity: K64 });
    onCleanup(() => blockDirtyBitmapRemove(qmp, { node: 'scratch', name: 'cbt' }).catch(() => {}));
    const before = (await queryDisk(qmp, 'vdb'))!.bitmaps.find((b) => b.name === 'cbt');
    expect(before).toMatchObject({ count: 0, recording: true, granularity: K64, persistent: false });

    for (const seek of [10, 100, 1000]) await guestDd(seek);

    const after = (await queryDisk(qmp, 'vdb'))!.bitmaps.find((b) => b.name === 'cbt');
    expect(after?.count).toBe(3 * K64);
  });

  it('a persistent bitmap on the qcow2 data node records the guest\'s file writes, and rotates in one transaction', async () => {
    await blockDirtyBitmapAdd(qmp, { node: 'data', name: 'gen1', persistent: true });
    const w = await agent.exec('/bin/dd', ['if=/dev/urandom', 'of=/mnt/data/f1', 'bs=65536', 'count=16', 'conv=fsync'], { timeoutMs: 30_000 });
    expect(w.exitCode, w.stderr).toBe(0);
    const gen1 = (await queryDisk(qmp, 'vda'))!.bitmaps.find((b) => b.name === 'gen1')!;
    expect(gen1).toMatchObject({ persistent: true, recording: true });
    expect(gen1.count).toBeGreaterThanOrEqual(16 * K64);
    expect(gen1.count % K64).toBe(0);

    await transaction(qmp, [
      actions.bitmapAdd({ node: 'data', name: 'gen2', persistent: true }),
      actions.bitmapDisable({ node: 'data', name: 'gen1' }),
    ]);
    const bms = (await queryDisk(qmp, 'vda'))!.bitmaps;
    expect(bms.find((b) => b.name === 'gen1')).toMatchObject({ recording: false, count: gen1.count });
    expect(bms.find((b) => b.name === 'gen2')).toMatchObject({ recording: true, count: 0 });
    for (const name of ['gen1', 'gen2']) await blockDirtyBitmapRemove(qmp, { node: 'data', name });
  });

  it('waitFor resolves on STOP and RESUME caused by stop and cont', async () => {
    const stopped = qmp.waitFor('STOP', undefined, { timeoutMs: 10_000 });
    await stop(qmp);
    await stopped;
    expect(await queryStatus(qmp)).toMatchObject({ running: false, status: 'paused' });
    const resumed = qmp.waitFor('RESUME', undefined, { timeoutMs: 10_000 });
    await cont(qmp);
    expect((await resumed).timestamp.seconds).toBeGreaterThan(0);
    expect(await queryStatus(qmp)).toMatchObject({ running: true, status: 'running' });
  });

  it('surfaces QMP\'s error class for an unknown command and for bad arguments, and stays usable', async () => {
    const e1 = (await qmp.execute('no-such-command').catch((e: unknown) => e)) as QmpCommandError;
    expect(e1).toBeInstanceOf(QmpCommandError);
    expect(e1.errorClass).toBe('CommandNotFound');
    const e2 = (await qmp.execute('block-dirty-bitmap-remove', { node: 'data', name: 'nope' }).catch((e: unknown) => e)) as QmpCommandError;
    expect(e2.errorClass).toBe('GenericError');
    expect(e2.message).toMatch(/block-dirty-bitmap-remove node=data name=nope failed: .*nope/);
    expect((await queryStatus(qmp)).running).toBe(true);
  });
});

describe('QEMU killed with calls in flight', () => {
  it('rejects pending calls and waiters at once when QEMU dies', async () => {
    const guest = await startQemuGuest();
    const qmp = await QmpClient.connect(guest.qmpSocket);
    onCleanup(() => qmp.close());
    // Freeze QEMU so the commands stay unanswered, then kill it: nothing but the close can settle them.
    process.kill(guest.pid, 'SIGSTOP');
    onCleanup(() => {
      try {
        process.kill(guest.pid, 'SIGCONT');
      } catch {
        // already gone
      }
    });
    const calls = [qmp.execute('query-status'), qmp.execute('query-block')].map((p) =>
      p.then(
        () => new Error('expected a rejection'),
        (e: unknown) => ({ err: e, at: Date.now() }),
      ),
    );
    const shutdown = qmp.waitFor('SHUTDOWN').catch((e: unknown) => ({ err: e, at: Date.now() }));
    // Proves the calls are really pending: none settles while QEMU is stopped.
    const early = await Promise.race([Promise.race(calls), new Promise((r) => setTimeout(() => r('pending'), 200))]);
    expect(early).toBe('pending');

    const killedAt = Date.now();
    await guest.kill('SIGKILL');
    for (const r of [...(await Promise.all(calls)), await shutdown]) {
      const { err, at } = r as { err: unknown; at: number };
      expect(err).toBeInstanceOf(QmpConnectionError);
      expect((err as Error).message).toMatch(/closed by the peer/);
      expect(at - killedAt).toBeLessThan(2000);
    }
    expect(await qmp.closed).toBeInstanceOf(QmpConnectionError);
  });
});
