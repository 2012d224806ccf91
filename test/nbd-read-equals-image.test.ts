// Data read through our NBD client equals the image (qemu-img compare), from qemu-nbd and qemu-storage-daemon.
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint, NbdEndpoint, copyExtents, wholeDisk } from '../src/copy/index.js';
import { NbdClient } from '../src/nbd/index.js';
import { lcg, qemuIo, startQemuNbd, startStorageDaemon, tempDir, type RunningServer, type TempDir } from './support/nbd-servers.js';

const MiB = 1024 * 1024;
const SIZE = 192 * MiB;

let dir: TempDir;
let image: string;
const servers: RunningServer[] = [];

beforeAll(async () => {
  dir = tempDir('nbd-read');
  image = join(dir.path, 'disk.qcow2');
  await execa('qemu-img', ['create', '-f', 'qcow2', image, String(SIZE)]);
  const rnd = lcg(42);
  const cmds: string[] = [];
  for (let i = 0; i < 120; i++) {
    // Odd sizes and offsets (512-byte sectors) so reads see partial clusters.
    const off = (rnd() % (SIZE / 512 - 4096)) * 512;
    const len = 512 * (1 + (rnd() % 2048));
    cmds.push(`write -P 0x${((i % 254) + 1).toString(16)} ${off} ${len}`);
  }
  cmds.push(`write -z ${64 * MiB} ${3 * MiB}`, `write -P 0x5a ${SIZE - MiB} ${MiB}`);
  await qemuIo(image, cmds);
});

afterAll(async () => {
  await Promise.allSettled(servers.map((s) => s.stop()));
  dir?.remove();
});

async function copyOut(uri: string, out: string, opts: { connections?: number; requestSize?: number; inflight?: number } = {}) {
  const src = await NbdEndpoint.open(uri, { metaContexts: ['base:allocation'], connections: opts.connections, timeoutMs: 30_000 });
  const dst = await FileEndpoint.open(out, { create: { size: src.size } });
  try {
    const p = await copyExtents(src, dst, wholeDisk(src), { requestSize: opts.requestSize, inflight: opts.inflight });
    expect(p.done).toBe(SIZE);
    expect(p.read).toBeLessThan(SIZE); // zero ranges were not read
    await dst.flush();
    return { connections: src.client.connections, progress: p };
  } finally {
    await Promise.allSettled([src.close(), dst.close()]);
  }
}

async function compare(out: string) {
  const r = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', out, image], { reject: false });
  expect(r.stdout + r.stderr).toMatch(/Images are identical/);
  expect(r.exitCode).toBe(0);
}

describe('NBD read equals image', () => {
  it('copies a qcow2 export from qemu-nbd into a file identical to the image', async () => {
    const s = await startQemuNbd(image, dir.path, { readOnly: true });
    servers.push(s);
    const out = join(dir.path, 'out1.raw');
    await copyOut(s.uri, out);
    await compare(out);
  });

  it('reads the same with small requests and a deep window', async () => {
    const s = await startQemuNbd(image, dir.path, { readOnly: true });
    servers.push(s);
    const out = join(dir.path, 'out2.raw');
    await copyOut(s.uri, out, { requestSize: 64 * 1024 + 512, inflight: 64 });
    await compare(out);
  });

  it('reads over several connections from qemu-storage-daemon (multi-conn)', async () => {
    const s = await startStorageDaemon(image, dir.path);
    servers.push(s);
    const out = join(dir.path, 'out3.raw');
    const r = await copyOut(s.uri, out, { connections: 4 });
    expect(r.connections).toBe(4);
    await compare(out);
  });

  it('pread reports holes and returns zeroes there', async () => {
    const s = await startQemuNbd(image, dir.path, { readOnly: true });
    servers.push(s);
    const c = await NbdClient.connect(s.uri);
    try {
      const buf = Buffer.alloc(3 * MiB, 0xee);
      const { holes } = await c.pread(buf, 64 * MiB);
      expect(holes.length).toBeGreaterThan(0);
      for (const h of holes) expect(buf.subarray(h.offset - 64 * MiB, h.offset - 64 * MiB + h.length).every((b) => b === 0)).toBe(true);
      const big = Buffer.alloc(40 * MiB); // above the 32 MiB maximum: split into several requests
      await c.pread(big, SIZE - 40 * MiB);
      expect(big.subarray(big.length - MiB).every((b) => b === 0x5a)).toBe(true);
      await expect(c.pread(Buffer.alloc(10), SIZE - 5)).rejects.toThrow(/past the end/);
    } finally {
      await c.close();
    }
  });
});
