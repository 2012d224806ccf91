// virtcbt's own qcow2 writer (src/qcow2): empty images of several sizes, with and without a
// backing file, and images written through the Endpoint interface (whole clusters, pieces split by
// holes, zero ranges, data past the first L2 table, many refcount blocks with small clusters) are
// clean for `qemu-img check`, described as expected by `qemu-img info`, and read back (through
// their backing file) exactly what a raw reference holds, by `qemu-img compare`.
import { randomFillSync } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { Qcow2Writer, createQcow2 } from '../src/qcow2/index.js';
import { KiB, MiB, sameContent, tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';

useCleanup();
const GiB = 1024 * MiB;

async function check(image: string): Promise<void> {
  const r = await execa('qemu-img', ['check', '--output=json', image], { reject: false });
  expect(r.exitCode, `${image}: ${r.stdout}${r.stderr}`).toBe(0);
  const c = JSON.parse(r.stdout);
  expect(c.corruptions ?? 0).toBe(0);
  expect(c.leaks ?? 0).toBe(0);
  expect(c['check-errors'] ?? 0).toBe(0);
}

async function info(image: string): Promise<any> {
  return JSON.parse((await execa('qemu-img', ['info', '--output=json', image])).stdout);
}

/** A raw file of `size` bytes the test writes the same data into (the expected contents). */
function rawReference(path: string, size: number): { write(buf: Buffer, offset: number): void; close(): void } {
  const fd = openSync(path, 'w');
  writeSync(fd, Buffer.alloc(1), 0, 1, size - 1);
  return { write: (buf, offset) => { writeSync(fd, buf, 0, buf.length, offset); }, close: () => closeSync(fd) };
}

describe('empty images', () => {
  for (const size of [64 * KiB, 1 * MiB + 512, 1 * GiB, 3 * GiB + 4096, 700 * GiB]) {
    it(`${size} bytes, standalone and with a backing file`, async () => {
      const dir = tempDir('qcow2-empty');
      await createQcow2(join(dir, 'base.qcow2'), { size });
      await check(join(dir, 'base.qcow2'));
      const base = await info(join(dir, 'base.qcow2'));
      expect(base['virtual-size']).toBe(size);
      expect(base['cluster-size']).toBe(65536);
      expect(base['format-specific'].data.compat).toBe('1.1');
      expect(base['backing-filename']).toBeUndefined();

      await createQcow2(join(dir, 'over.qcow2'), { size, backing: { name: 'base.qcow2' } });
      await check(join(dir, 'over.qcow2'));
      const over = await info(join(dir, 'over.qcow2'));
      expect(over['virtual-size']).toBe(size);
      expect(over['backing-filename']).toBe('base.qcow2');
      expect(over['backing-filename-format']).toBe('qcow2');
      expect((await sameContent(join(dir, 'over.qcow2'), 'qcow2', join(dir, 'base.qcow2'), 'qcow2')).same).toBe(true);
      // QEMU writes into it as into one of its own (the fleecing overlays are used that way).
      await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${Math.min(size, 128 * KiB)}`, join(dir, 'over.qcow2')]);
      await check(join(dir, 'over.qcow2'));
    });
  }
});

describe('written images', () => {
  it('standalone: whole clusters, split pieces, zero ranges, data beyond the first L2 table', async () => {
    const dir = tempDir('qcow2-full');
    const size = 1 * GiB + 3 * 512;
    const w = await Qcow2Writer.create(join(dir, 'img.qcow2'), { size });
    const ref = rawReference(join(dir, 'ref.raw'), size);
    const put = async (offset: number, length: number) => {
      const b = randomFillSync(Buffer.alloc(length));
      ref.write(b, offset);
      await w.write(b, offset);
    };
    await Promise.all([
      put(0, 256 * KiB),
      put(1 * MiB, 2 * MiB),
      put(5 * MiB + 4096, 8192), // inside one cluster, the rest never written: reads as zero
      put(600 * MiB, 64 * KiB), // the second L2 table
      put(size - 3 * 512, 3 * 512), // the short last cluster
    ]);
    // A read split by a hole: data, zero, data inside one cluster.
    await put(10 * MiB, 16 * KiB);
    await w.zero(10 * MiB + 16 * KiB, 16 * KiB);
    await put(10 * MiB + 32 * KiB, 32 * KiB);
    await w.zero(20 * MiB, 4 * MiB);
    await w.flush();
    await w.finish();
    ref.close();
    await check(join(dir, 'img.qcow2'));
    expect((await info(join(dir, 'img.qcow2')))['virtual-size']).toBe(size);
    const cmp = await sameContent(join(dir, 'img.qcow2'), 'qcow2', join(dir, 'ref.raw'), 'raw');
    expect(cmp.same, cmp.detail).toBe(true);
  });

  it('overlay: written clusters and zero clusters hide the backing file, the rest reads through', async () => {
    const dir = tempDir('qcow2-over');
    const size = 64 * MiB;
    const base = join(dir, 'base.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(size)]);
    await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x33 0 ${size}`, base]);
    const ref = rawReference(join(dir, 'ref.raw'), size);
    ref.write(Buffer.alloc(size, 0x33), 0);
    const w = await Qcow2Writer.create(join(dir, 'over.qcow2'), { size, backing: { name: 'base.qcow2' } });
    expect(w.zeroInitialized).toBe(false);
    const data = randomFillSync(Buffer.alloc(3 * MiB));
    await w.write(data, 2 * MiB);
    ref.write(data, 2 * MiB);
    await w.zero(8 * MiB, 1 * MiB);
    ref.write(Buffer.alloc(1 * MiB), 8 * MiB);
    // One cluster from a data piece and a zero piece.
    const half = randomFillSync(Buffer.alloc(32 * KiB));
    await w.write(half, 12 * MiB);
    await w.zero(12 * MiB + 32 * KiB, 32 * KiB);
    ref.write(half, 12 * MiB);
    ref.write(Buffer.alloc(32 * KiB), 12 * MiB + 32 * KiB);
    await w.finish();
    ref.close();
    await check(join(dir, 'over.qcow2'));
    const cmp = await sameContent(join(dir, 'over.qcow2'), 'qcow2', join(dir, 'ref.raw'), 'raw');
    expect(cmp.same, cmp.detail).toBe(true);
    // Only what was written is allocated in the overlay.
    const map = JSON.parse((await execa('qemu-img', ['map', '--output=json', join(dir, 'over.qcow2')])).stdout) as { start: number; length: number; depth: number; zero: boolean; data: boolean }[];
    const own = map.filter((m) => m.depth === 0);
    expect(own.filter((m) => m.data).reduce((s, m) => s + m.length, 0)).toBe(3 * MiB + 64 * KiB);
    expect(own.filter((m) => m.zero && !m.data).reduce((s, m) => s + m.length, 0)).toBe(1 * MiB);
  });

  it('an overlay cluster written only in part is refused at finish (it would read the backing file)', async () => {
    const dir = tempDir('qcow2-part');
    const w = await Qcow2Writer.create(join(dir, 'over.qcow2'), { size: 1 * MiB, backing: { name: 'base.qcow2' } });
    await w.write(Buffer.alloc(4096, 1), 0);
    await expect(w.finish()).rejects.toThrow(/only in part/);
    await w.close();
  });

  it('small clusters: many L2 tables and refcount blocks', async () => {
    const dir = tempDir('qcow2-small');
    const size = 8 * MiB;
    const w = await Qcow2Writer.create(join(dir, 'img.qcow2'), { size, clusterSize: 512 });
    const ref = rawReference(join(dir, 'ref.raw'), size);
    // 6 MiB of 512-byte clusters: 12288 data clusters, 24 KiB of L1, 48+ refcount blocks.
    for (let off = 0; off < 6 * MiB; off += 256 * KiB) {
      const b = randomFillSync(Buffer.alloc(256 * KiB));
      ref.write(b, off);
      await w.write(b, off);
    }
    await w.finish();
    ref.close();
    await check(join(dir, 'img.qcow2'));
    expect((await info(join(dir, 'img.qcow2')))['cluster-size']).toBe(512);
    const cmp = await sameContent(join(dir, 'img.qcow2'), 'qcow2', join(dir, 'ref.raw'), 'raw');
    expect(cmp.same, cmp.detail).toBe(true);
  });
});
