// A blank region (an extra disk never written, an unused partition) holds nothing to scan: the
// scanner calls it empty rather than "no filesystem it recognises". Over NBD with block status the
// server says so without a read; without block status the region is read up to its first byte
// that is not zero. Never blank by mistake: one byte of data, or data that happens to be zeroes but
// is allocated (block status cannot tell it from any other data), is not blank.
import { execa } from 'execa';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdEndpoint } from '../src/copy/index.js';
import { DiskReader } from '../src/fs/index.js';
import { CONTEXT_BASE_ALLOCATION } from '../src/nbd/index.js';
import { qemuIo, startQemuNbd, tempDir, type RunningServer } from './support/nbd-servers.js';

const MiB = 1024 * 1024;
const dir = tempDir('fs-blank');
const servers: RunningServer[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  dir.remove();
});

const images: Record<string, string> = {};
beforeAll(async () => {
  const make = async (name: string, io: string[]) => {
    const p = join(dir.path, `${name}.qcow2`);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', p, String(64 * MiB)]);
    if (io.length) await qemuIo(p, io);
    images[name] = p;
  };
  await make('blank', []);
  await make('last-byte', [`write -P 0x5a ${64 * MiB - 512} 512`]);
  await make('written-zeroes', ['write -P 0 0 1M']);
});

async function blank(image: string, withStatus: boolean, region?: { offset: number; length: number }): Promise<{ blank: boolean; bytesRead: number }> {
  const s = await startQemuNbd(image, dir.path, { readOnly: true });
  servers.push(s);
  const ep = await NbdEndpoint.open(s.uri, { metaContexts: withStatus ? [CONTEXT_BASE_ALLOCATION] : [] });
  try {
    const r = new DiskReader(ep, region?.offset ?? 0, region?.length ?? ep.size, image);
    return { blank: await r.readsAsZeroes(), bytesRead: r.stats.bytesRead };
  } finally {
    await ep.close();
  }
}

describe('DiskReader.readsAsZeroes over NBD', () => {
  it('with block status: a blank disk is blank without a byte read', async () => {
    expect(await blank(images.blank!, true)).toEqual({ blank: true, bytesRead: 0 });
  });

  it('with block status: one byte of data at the end, or allocated zeroes, is not blank', async () => {
    expect((await blank(images['last-byte']!, true)).blank).toBe(false);
    expect((await blank(images['written-zeroes']!, true)).blank).toBe(false);
    // The region before the data is blank.
    expect((await blank(images['last-byte']!, true, { offset: 0, length: 63 * MiB })).blank).toBe(true);
  });

  it('without block status: read up to the first byte that is not zero', async () => {
    expect(await blank(images.blank!, false)).toEqual({ blank: true, bytesRead: 64 * MiB });
    expect((await blank(images['last-byte']!, false)).blank).toBe(false);
    // Zeroes written are zeroes when read.
    expect((await blank(images['written-zeroes']!, false)).blank).toBe(true);
  });
});
