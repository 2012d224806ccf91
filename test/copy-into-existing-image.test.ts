// Copying a disk from an NBD source into an EXISTING qcow2 or raw image (a sync target that holds
// other data) through openImageEndpoint: zero ranges of the source overwrite old data, and the
// target equals the source (qemu-img compare). A missing target is made; what cannot be opened is
// refused, naming the file, and left as it was.
import { randomFillSync } from 'node:crypto';
import { readFileSync, statSync, symlinkSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { copyExtents, openImageEndpoint, serveImage, wholeDisk } from '../src/copy/index.js';
import { MiB, tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';

useCleanup();

const SIZE = 48 * MiB;

/** A qcow2 source: data, a zeroed range over data, and unallocated ranges. */
async function makeSource(dir: string): Promise<string> {
  const raw = join(dir, 'source.raw');
  const data = Buffer.alloc(SIZE);
  randomFillSync(data, 0, 12 * MiB);
  randomFillSync(data, 20 * MiB, 5 * MiB + 4096);
  data.fill(0, 8 * MiB, 9 * MiB);
  randomFillSync(data, SIZE - 3 * MiB);
  writeFileSync(raw, data);
  const src = join(dir, 'source.qcow2');
  await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, src]);
  return src;
}

/** An existing target full of other data (0x5a everywhere): every byte must be overwritten. */
async function makeTarget(dir: string, format: 'qcow2' | 'raw'): Promise<string> {
  const path = join(dir, `target.${format}`);
  await execa('qemu-img', ['create', '-q', '-f', format, path, String(SIZE)]);
  await execa('qemu-io', ['-f', format, '-c', `write -P 0x5a 0 ${SIZE}`, path]);
  return path;
}

async function compare(a: string, aFormat: string, b: string, bFormat: string): Promise<string> {
  const r = await execa('qemu-img', ['compare', '-f', aFormat, '-F', bFormat, a, b], { reject: false });
  return `${r.exitCode}: ${r.stdout}${r.stderr}`;
}

/** Copies the whole source into the target endpoint, as a sync of everything would. */
async function copyInto(dir: string, source: string, target: string, opts: { format?: 'qcow2' | 'raw'; create?: { size: number } } = {}) {
  const src = await serveImage(source, { runDir: dir });
  onCleanup(() => src.kill());
  const dst = await openImageEndpoint(target, { runDir: dir, writable: true, ...opts });
  onCleanup(() => dst.kill());
  const p = await copyExtents(src.endpoint, dst.endpoint, wholeDisk(src.endpoint));
  await dst.close();
  await src.close();
  return { progress: p, format: dst.format, created: dst.created };
}

describe('copy into an existing image', () => {
  for (const format of ['qcow2', 'raw'] as const) {
    it(`an existing ${format} image full of other data ends equal to the source`, async () => {
      const dir = tempDir('copy-existing');
      const source = await makeSource(dir);
      const target = await makeTarget(dir, format);
      expect(await compare(source, 'qcow2', target, format)).not.toMatch(/^0:/);
      const r = await copyInto(dir, source, target);
      expect(r.format, 'format detected from the header').toBe(format);
      expect(r.created).toBe(false);
      // The source's zero ranges were written as zeroes (the target was not zero-initialized).
      expect(r.progress.zeroed).toBeGreaterThan(0);
      expect(await compare(source, 'qcow2', target, format)).toMatch(/^0: Images are identical/);
    });

    it(`a missing ${format} target is made at the size given, sparse, and ends equal to the source`, async () => {
      const dir = tempDir('copy-create');
      const source = await makeSource(dir);
      const target = join(dir, `new.${format}`);
      const r = await copyInto(dir, source, target, { format, create: { size: SIZE } });
      expect(r.created).toBe(true);
      expect(r.format).toBe(format);
      // Zero ranges were skipped in a fresh target: it holds about the data only.
      expect(statSync(target).blocks * 512).toBeLessThan(SIZE / 2);
      expect(await compare(source, 'qcow2', target, format)).toMatch(/^0: Images are identical/);
    });
  }

  it('refuses a symlink, a directory and a qcow2 whose backing file is missing, naming the file, and changes nothing', async () => {
    const dir = tempDir('copy-refuse');
    const real = await makeTarget(dir, 'raw');
    const before = readFileSync(real);
    const link = join(dir, 'link.raw');
    symlinkSync(real, link);
    await expect(openImageEndpoint(link, { runDir: dir, writable: true })).rejects.toThrow(`image ${link} is a symlink, not a regular file`);
    const sub = join(dir, 'sub');
    mkdirSync(sub);
    await expect(openImageEndpoint(sub, { runDir: dir, writable: true, create: { size: SIZE } })).rejects.toThrow(`image ${sub} is a directory, not a regular file`);

    const base = join(dir, 'base.qcow2');
    const overlay = join(dir, 'overlay.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(SIZE)]);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', overlay]);
    const overlayBefore = readFileSync(overlay);
    await execa('rm', [base]);
    await expect(openImageEndpoint(overlay, { runDir: dir, writable: true })).rejects.toThrow(`image ${overlay} has the backing file ${base}, which cannot be opened`);

    const missing = join(dir, 'missing.qcow2');
    await expect(openImageEndpoint(missing, { runDir: dir, writable: true })).rejects.toThrow(`cannot open image ${missing}`);
    expect(existsSync(missing), 'nothing made without create').toBe(false);
    expect(readFileSync(real).equals(before)).toBe(true);
    expect(readFileSync(overlay).equals(overlayBefore)).toBe(true);
  });
});
