// Data written through our NBD client into a qemu-nbd qcow2 target reads back equal (qemu-img compare, and pread).
import { randomFillSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint, NbdEndpoint, copyExtents } from '../src/copy/index.js';
import { NbdClient, NbdCommandError } from '../src/nbd/index.js';
import { lcg, startQemuNbd, tempDir, type RunningServer, type TempDir } from './support/nbd-servers.js';

const MiB = 1024 * 1024;
const SIZE = 96 * MiB;

let dir: TempDir;
const servers: RunningServer[] = [];

beforeAll(() => {
  dir = tempDir('nbd-write');
});

afterAll(async () => {
  await Promise.allSettled(servers.map((s) => s.stop()));
  dir?.remove();
});

async function compare(raw: string, qcow2: string) {
  const r = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, qcow2], { reject: false });
  expect(r.stdout + r.stderr).toMatch(/Images are identical/);
}

describe('NBD write into qcow2', () => {
  it('copies a raw file into a fresh qcow2 export, and the image equals the file', async () => {
    const raw = join(dir.path, 'src.raw');
    const data = Buffer.alloc(SIZE);
    randomFillSync(data, 0, 40 * MiB);
    data.fill(0x33, 50 * MiB, 51 * MiB + 17);
    randomFillSync(data, SIZE - 7 * MiB);
    writeFileSync(raw, data);
    const target = join(dir.path, 'dst.qcow2');
    await execa('qemu-img', ['create', '-f', 'qcow2', target, String(SIZE)]);
    const s = await startQemuNbd(target, dir.path, {});
    servers.push(s);
    const src = await FileEndpoint.open(raw);
    const dst = await NbdEndpoint.open(s.uri, { zeroInitialized: true });
    try {
      const p = await copyExtents(src, dst, [{ offset: 0, length: SIZE }], { inflight: 8 });
      expect(p.written).toBe(SIZE);
      await dst.flush();
    } finally {
      await Promise.allSettled([src.close(), dst.close()]);
    }
    await s.stop();
    await compare(raw, target);
  });

  it('pwrite, writeZeroes and trim at odd offsets read back as a model says', async () => {
    const target = join(dir.path, 'api.qcow2');
    await execa('qemu-img', ['create', '-f', 'qcow2', target, String(SIZE)]);
    const s = await startQemuNbd(target, dir.path, {});
    servers.push(s);
    const model = Buffer.alloc(SIZE);
    const c = await NbdClient.connect(s.uri, { inflight: 4 });
    try {
      expect(c.flags.readOnly).toBe(false);
      expect(c.flags.canZero).toBe(true);
      const rnd = lcg(3);
      for (let i = 0; i < 200; i++) {
        const off = rnd() % (SIZE - MiB);
        const len = 1 + (rnd() % (256 * 1024));
        const b = Buffer.alloc(len, (i % 250) + 1);
        b.copy(model, off);
        // Overlapping writes in flight have no defined order: await each.
        await c.pwrite(b, off);
      }
      const big = Buffer.alloc(40 * MiB); // above the server maximum: split
      randomFillSync(big);
      big.copy(model, 20 * MiB + 3);
      await c.pwrite(big, 20 * MiB + 3);
      await c.writeZeroes(30 * MiB + 1, 5 * MiB);
      model.fill(0, 30 * MiB + 1, 35 * MiB + 1);
      await c.writeZeroes(70 * MiB, 20 * MiB, { noHole: true });
      model.fill(0, 70 * MiB, 90 * MiB);
      await c.flush();
      const back = Buffer.alloc(SIZE, 0xee);
      await c.pread(back, 0);
      expect(back.equals(model)).toBe(true);
      if (c.flags.canTrim) await c.trim(0, MiB); // content after a trim is unspecified; it must just succeed
      await expect(c.pwrite(Buffer.alloc(1), SIZE)).rejects.toThrow(/past the end/);
    } finally {
      await c.close();
    }
    await s.stop();
    const modelFile = join(dir.path, 'model.raw');
    // qemu-img compare of the trimmed first MiB would be unspecified: compare after it.
    model.fill(0, 0, MiB);
    writeFileSync(modelFile, model);
    const r = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', modelFile, target], { reject: false });
    expect(r.stdout + r.stderr).toMatch(/Images are identical|Content mismatch at offset (\d+)/);
    const m = /Content mismatch at offset (\d+)/.exec(r.stdout);
    if (m) expect(Number(m[1])).toBeLessThan(MiB);
  });

  it('a write to a read-only export is refused by the client; the server refuses it too', async () => {
    const target = join(dir.path, 'ro.qcow2');
    await execa('qemu-img', ['create', '-f', 'qcow2', target, String(MiB)]);
    const s = await startQemuNbd(target, dir.path, { readOnly: true });
    servers.push(s);
    const c = await NbdClient.connect(s.uri);
    try {
      await expect(c.pwrite(Buffer.alloc(512), 0)).rejects.toThrow(/read-only/);
      // Bypass the client's check: the server answers EPERM and the connection stays usable.
      const conn = (c as unknown as { conns: Array<{ request(...a: unknown[]): Promise<unknown> }> }).conns[0]!;
      const err = await conn.request(1, 0, 0, 512, { payload: Buffer.alloc(512) }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NbdCommandError);
      // QEMU 7.2 answers EINVAL (some servers EPERM); what matters is a clean per-request error.
      expect([1, 22]).toContain((err as NbdCommandError).errno);
      expect((err as Error).message).toMatch(/NBD WRITE at offset 0 length 512 .* failed: E(INVAL|PERM)/);
      await c.pread(Buffer.alloc(512), 0);
    } finally {
      await c.close();
    }
  });
});
