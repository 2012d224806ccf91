// Block status read by our client equals `nbdinfo --map` for base:allocation, a disabled dirty bitmap and allocation depth,
// against qemu-nbd and qemu-storage-daemon.
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient, coalesce, formatMapLine } from '../src/nbd/index.js';
import { lcg, nbdinfoMap, qemuIo, startQemuNbd, startStorageDaemon, tempDir, type RunningServer, type TempDir } from './support/nbd-servers.js';

const GiB = 1024 ** 3;
const SIZE = 6 * GiB; // crosses the client's 2 GiB request boundaries
const CONTEXTS = ['base:allocation', 'qemu:dirty-bitmap:b0', 'qemu:allocation-depth'];

async function ourMap(uri: string, context: string): Promise<string> {
  const c = await NbdClient.connect(uri, { metaContexts: [context], timeoutMs: 30_000 });
  try {
    const lines: string[] = [];
    for await (const e of coalesce(c.blockStatus(context))) lines.push(formatMapLine(context, e));
    return lines.join('\n');
  } finally {
    await c.close();
  }
}

let dir: TempDir;
let image: string;
const servers: RunningServer[] = [];

beforeAll(async () => {
  dir = tempDir('nbd-map');
  image = join(dir.path, 'disk.qcow2');
  await execa('qemu-img', ['create', '-f', 'qcow2', image, String(SIZE)]);
  const rnd = lcg(7);
  const before: string[] = [];
  for (let i = 0; i < 40; i++) {
    const off = (rnd() % (SIZE / 65536)) * 65536;
    const len = (1 + (rnd() % 4)) * 65536;
    before.push(`write -P 0x${(i + 1).toString(16)} ${off} ${len}`);
  }
  before.push(`write -z ${3 * GiB} 1M`, `write -P 0x11 ${2 * GiB - 65536} 131072`, `discard ${2 * GiB - 65536} 65536`);
  await qemuIo(image, before);
  await execa('qemu-img', ['bitmap', '--add', image, 'b0']);
  const after: string[] = [];
  for (let i = 0; i < 30; i++) {
    // 4 KiB writes at odd places dirty whole 64 KiB bitmap clusters.
    const off = (rnd() % (SIZE / 4096)) * 4096;
    after.push(`write -P 0xab ${off} ${4096 * (1 + (rnd() % 20))}`);
  }
  after.push(`write -z ${5 * GiB} 2M`);
  await qemuIo(image, after);
  await execa('qemu-img', ['bitmap', '--disable', image, 'b0']);
});

afterAll(async () => {
  await Promise.allSettled(servers.map((s) => s.stop()));
  dir?.remove();
});

describe('NBD map matches nbdinfo', () => {
  it('against qemu-nbd for base:allocation, a disabled dirty bitmap and allocation depth', async () => {
    const s = await startQemuNbd(image, dir.path, { readOnly: true, bitmaps: ['b0'], allocationDepth: true });
    servers.push(s);
    for (const ctx of CONTEXTS) {
      const want = await nbdinfoMap(s.uri, ctx);
      expect(want.split('\n').length).toBeGreaterThan(ctx === 'base:allocation' ? 40 : 20);
      expect(await ourMap(s.uri, ctx), ctx).toBe(want);
    }
  });

  it('against qemu-storage-daemon for the same contexts', async () => {
    const s = await startStorageDaemon(image, dir.path, { bitmaps: ['b0'] });
    servers.push(s);
    for (const ctx of CONTEXTS) {
      expect(await ourMap(s.uri, ctx), ctx).toBe(await nbdinfoMap(s.uri, ctx));
    }
  });

  it('walks a sub-range that starts and ends inside extents', async () => {
    const s = await startQemuNbd(image, dir.path, { readOnly: true, bitmaps: ['b0'] });
    servers.push(s);
    const c = await NbdClient.connect(s.uri, { metaContexts: ['base:allocation'] });
    try {
      const start = GiB + 12345;
      const len = 3 * GiB + 777;
      let pos = start;
      for await (const e of c.blockStatus('base:allocation', start, len)) {
        expect(e.offset).toBe(pos);
        pos += e.length;
      }
      expect(pos).toBe(start + len);
      await expect(async () => {
        for await (const _ of c.blockStatus('qemu:dirty-bitmap:nope')) void _;
      }).rejects.toThrow(/was not negotiated/);
    } finally {
      await c.close();
    }
  });

  it('refuses a context the export does not offer, naming it', async () => {
    const s = await startQemuNbd(image, dir.path, { readOnly: true });
    servers.push(s);
    await expect(NbdClient.connect(s.uri, { metaContexts: ['qemu:dirty-bitmap:b0'] })).rejects.toThrow(/does not offer metadata context "qemu:dirty-bitmap:b0"/);
  });
});
