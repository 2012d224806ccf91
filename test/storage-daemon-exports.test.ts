// The storage-daemon rig exports an image over NBD with its dirty bitmaps, and its QMP socket answers.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { qmpOnce } from './support/qmp-raw.js';
import { startStorageDaemon } from './support/storage-daemon.js';

useCleanup();

async function imageWithDirtyBitmap(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'virtcbt-image-'));
  onCleanup(() => rm(dir, { recursive: true, force: true }));
  const image = join(dir, 'disk.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  await execa('qemu-img', ['bitmap', '--add', image, 'b1']);
  // qemu-io writes through the qcow2 driver, so the enabled persistent bitmap records the write.
  await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 1M 64k', image]);
  // A read-only export can only carry a disabled bitmap.
  await execa('qemu-img', ['bitmap', '--disable', image, 'b1']);
  return image;
}

describe('qemu-storage-daemon rig', () => {
  it('exports the image over NBD with a dirty bitmap nbdinfo can read', async () => {
    const image = await imageWithDirtyBitmap();
    const qsd = await startStorageDaemon({ image, nbd: { exportName: 'vda', bitmaps: ['b1'] } });
    expect(qsd.uri).toBe(`nbd+unix:///vda?socket=${qsd.nbdSocket}`);

    const info = JSON.parse((await execa('nbdinfo', ['--json', qsd.uri!])).stdout) as {
      exports: { 'export-name': string; 'export-size': number; contexts: string[]; is_read_only: boolean }[];
    };
    expect(info.exports[0]['export-name']).toBe('vda');
    expect(info.exports[0]['export-size']).toBe(64 * 1024 * 1024);
    expect(info.exports[0].contexts).toContain('qemu:dirty-bitmap:b1');
    expect(info.exports[0].is_read_only).toBe(true);

    const map = JSON.parse((await execa('nbdinfo', ['--json', '--map=qemu:dirty-bitmap:b1', qsd.uri!])).stdout) as {
      offset: number; length: number; type: number;
    }[];
    const dirty = map.filter((e) => e.type === 1).map((e) => ({ offset: e.offset, length: e.length }));
    expect(dirty).toEqual([{ offset: 1024 * 1024, length: 64 * 1024 }]);

    const data = await execa('nbdcopy', [qsd.uri!, '-'], { encoding: 'buffer' });
    expect(data.stdout.subarray(1024 * 1024, 1024 * 1024 + 65536).every((b) => b === 0xab)).toBe(true);

    const exports = await qmpOnce(qsd.qmpSocket, 'query-block-exports');
    expect(exports.return).toEqual([expect.objectContaining({ id: 'export0', 'node-name': 'disk', type: 'nbd' })]);

    await qsd.stop();
    expect(await qsd.exited).toBe(0);
  });

  it('fails with the daemon stderr when the image is missing', async () => {
    await expect(startStorageDaemon({ image: '/nonexistent/virtcbt.qcow2' })).rejects.toThrow(/exited.*nonexistent/s);
  });
});
