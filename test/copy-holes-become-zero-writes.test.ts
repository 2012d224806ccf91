// The copy engine: zero ranges of the source become zero writes on a used target and are skipped on a
// fresh sparse one; an abort or a too-small target stops the copy with a clear error.
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdEndpoint, NullEndpoint, copyExtents, wholeDisk } from '../src/copy/index.js';
import { qemuIo, startQemuNbd, tempDir, type RunningServer, type TempDir } from './support/nbd-servers.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

let dir: TempDir;
let source: string;
const servers: RunningServer[] = [];

beforeAll(async () => {
  dir = tempDir('copy-zero');
  source = join(dir.path, 'src.qcow2');
  await execa('qemu-img', ['create', '-f', 'qcow2', source, String(SIZE)]);
  await qemuIo(source, ['write -P 0x11 0 3M', 'write -P 0x22 20M 1M', 'write -z 30M 4M', 'write -P 0x33 60M 4M']);
});

afterAll(async () => {
  await Promise.allSettled(servers.map((s) => s.stop()));
  dir?.remove();
});

async function serve(image: string, readOnly: boolean) {
  const s = await startQemuNbd(image, dir.path, { readOnly });
  servers.push(s);
  return s;
}

async function identical(a: string, b: string) {
  const r = await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', a, b], { reject: false });
  expect(r.stdout).toMatch(/Images are identical/);
}

describe('copy engine', () => {
  it('writes zeroes over a used target where the source has zero ranges', async () => {
    const target = join(dir.path, 'used.qcow2');
    await execa('qemu-img', ['create', '-f', 'qcow2', target, String(SIZE)]);
    await qemuIo(target, [`write -P 0xff 0 ${SIZE}`]);
    const s = await serve(source, true);
    const t = await serve(target, false);
    const src = await NbdEndpoint.open(s.uri, { metaContexts: ['base:allocation'] });
    const dst = await NbdEndpoint.open(t.uri);
    try {
      const p = await copyExtents(src, dst, wholeDisk(src));
      expect(p.written).toBe(8 * MiB);
      expect(p.zeroed).toBe(SIZE - 8 * MiB);
      expect(p.read).toBe(8 * MiB);
      await dst.flush();
    } finally {
      await Promise.allSettled([src.close(), dst.close()]);
    }
    await t.stop();
    await identical(source, target);
  });

  it('skips zero ranges on a fresh sparse target, which stays sparse', async () => {
    const target = join(dir.path, 'fresh.qcow2');
    await execa('qemu-img', ['create', '-f', 'qcow2', target, String(SIZE)]);
    const s = await serve(source, true);
    const t = await serve(target, false);
    const src = await NbdEndpoint.open(s.uri, { metaContexts: ['base:allocation'] });
    const dst = await NbdEndpoint.open(t.uri, { zeroInitialized: true });
    try {
      const p = await copyExtents(src, dst, wholeDisk(src), { inflight: 3, requestSize: MiB });
      expect(p.written).toBe(8 * MiB);
    } finally {
      await Promise.allSettled([src.close(), dst.close()]);
    }
    await t.stop();
    await identical(source, target);
    const map = JSON.parse((await execa('qemu-img', ['map', '--output=json', target])).stdout) as Array<{ length: number; data: boolean }>;
    expect(map.filter((m) => m.data).reduce((n, m) => n + m.length, 0)).toBe(8 * MiB);
  });

  it('stops on abort, and refuses extents past the end of the target', async () => {
    const s = await serve(source, true);
    const src = await NbdEndpoint.open(s.uri, { metaContexts: ['base:allocation'] });
    try {
      const ctl = new AbortController();
      ctl.abort(new Error('operator said stop'));
      await expect(copyExtents(src, new NullEndpoint(SIZE), [{ offset: 0, length: SIZE }], { signal: ctl.signal })).rejects.toThrow('operator said stop');
      await expect(copyExtents(src, new NullEndpoint(SIZE / 2), [{ offset: 0, length: SIZE }])).rejects.toThrow(/outside the \d+ bytes both endpoints have/);
      // The connection is still fine after both.
      const p = await copyExtents(src, new NullEndpoint(SIZE), [{ offset: 20 * MiB, length: MiB }]);
      expect(p.read).toBe(MiB);
    } finally {
      await src.close();
    }
  });
});
