// Endpoint.discard frees what it discards and reads as zeroes afterwards: an existing qcow2 and raw
// file opened through openImageEndpoint (qemu-nbd), and a raw file through FileEndpoint (punched hole).
import { randomFillSync } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { FileEndpoint, openImageEndpoint, type Endpoint } from '../src/copy/index.js';
import { MiB, tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';

useCleanup();

const SIZE = 64 * MiB;
const DATA = 16 * MiB;
/** The discarded range: inside the data, cluster- and block-aligned. */
const HOLE = { offset: 4 * MiB, length: 6 * MiB };

interface MapEntry { start: number; length: number; zero: boolean; data: boolean }

/** -U: the image may still be open in qemu-nbd (read for a check only, after a flush). */
async function map(path: string, format: string): Promise<MapEntry[]> {
  return JSON.parse((await execa('qemu-img', ['map', '-U', '--output=json', '-f', format, path])).stdout) as MapEntry[];
}

/** The map entries that overlap [offset, offset+length). */
function overlapping(m: MapEntry[], offset: number, length: number): MapEntry[] {
  return m.filter((e) => e.start < offset + length && e.start + e.length > offset);
}

/** Allocated bytes of the file (st_blocks is in 512-byte units). */
const allocated = (path: string) => statSync(path).blocks * 512;

/** Writes DATA bytes of random data at 0, flushed; returns what was written. */
async function fill(ep: Endpoint): Promise<Buffer> {
  const data = randomFillSync(Buffer.alloc(DATA));
  await ep.write(data, 0);
  await ep.flush();
  return data;
}

/** Reads back: the hole is zeroes, the data around it unchanged. */
async function expectHoleRead(ep: Endpoint, data: Buffer): Promise<void> {
  const back = Buffer.alloc(DATA);
  await ep.read(back, 0);
  expect(back.subarray(HOLE.offset, HOLE.offset + HOLE.length).equals(Buffer.alloc(HOLE.length)), 'the discarded range reads as zeroes').toBe(true);
  expect(back.subarray(0, HOLE.offset).equals(data.subarray(0, HOLE.offset)), 'data before the hole').toBe(true);
  expect(back.subarray(HOLE.offset + HOLE.length).equals(data.subarray(HOLE.offset + HOLE.length)), 'data after the hole').toBe(true);
}

describe('discard frees target blocks', () => {
  for (const format of ['qcow2', 'raw'] as const) {
    it(`an existing ${format} image through qemu-nbd: the range is unallocated, reads zeroes, and the file shrinks`, async () => {
      const dir = tempDir('discard');
      const path = join(dir, `target.${format}`);
      await execa('qemu-img', ['create', '-q', '-f', format, path, String(SIZE)]);
      const img = await openImageEndpoint(path, { runDir: dir, writable: true });
      onCleanup(() => img.kill());
      expect(img.format, 'format detected from the header').toBe(format);
      expect(img.created).toBe(false);
      const data = await fill(img.endpoint);
      const before = allocated(path);
      expect(before).toBeGreaterThanOrEqual(DATA);
      expect(overlapping(await map(path, format), HOLE.offset, HOLE.length).every((e) => e.data), 'written data is allocated').toBe(true);

      await img.endpoint.discard(HOLE.offset, HOLE.length);
      await img.endpoint.flush();
      await expectHoleRead(img.endpoint, data);
      await img.close();

      const m = await map(path, format);
      const hole = overlapping(m, HOLE.offset, HOLE.length);
      expect(hole.length).toBeGreaterThan(0);
      expect(hole.every((e) => e.zero && !e.data), `qemu-img map of the hole: ${JSON.stringify(hole)}`).toBe(true);
      expect(overlapping(m, 0, HOLE.offset).every((e) => e.data), 'data before the hole stays').toBe(true);
      expect(before - allocated(path), 'bytes freed in the file').toBeGreaterThanOrEqual(HOLE.length);
    });
  }

  it('a raw file through FileEndpoint: a punched hole (blocks freed, size kept) that reads zeroes', async () => {
    const dir = tempDir('discard-file');
    const path = join(dir, 'target.raw');
    await execa('truncate', ['-s', String(SIZE), path]);
    const ep = await FileEndpoint.open(path, { write: true });
    onCleanup(() => ep.close().catch(() => undefined));
    const data = await fill(ep);
    const before = allocated(path);
    expect(before).toBeGreaterThanOrEqual(DATA);

    await ep.discard(HOLE.offset, HOLE.length);
    await expectHoleRead(ep, data);
    await ep.close();

    expect(statSync(path).size, 'KEEP_SIZE: the file keeps its size').toBe(SIZE);
    expect(before - allocated(path), 'bytes freed in the file').toBeGreaterThanOrEqual(HOLE.length);
    const hole = overlapping(await map(path, 'raw'), HOLE.offset, HOLE.length);
    expect(hole.every((e) => e.zero && !e.data), `qemu-img map of the hole: ${JSON.stringify(hole)}`).toBe(true);
  });
});
