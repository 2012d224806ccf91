// The qcow2 header reader agrees with `qemu-img info` on images qemu-img made (versions 2 and 3, with and without a
// backing file, odd cluster sizes), and an image cut short anywhere inside its header, or not an image at all, is a
// Qcow2HeaderError (never a crash, never a header); a symlink or a directory is refused without being followed.
import { execa } from 'execa';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Qcow2HeaderError, readQcow2Header } from '../src/qcow2/index.js';
import { tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';

useCleanup();

async function info(file: string): Promise<{ 'virtual-size': number; 'backing-filename'?: string; 'cluster-size': number; 'format-specific': { data: { compat: string } } }> {
  return JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', file])).stdout);
}

async function headerError(path: string): Promise<string> {
  try {
    await readQcow2Header(path);
  } catch (err) {
    if (err instanceof Qcow2HeaderError) return err.what;
    throw err;
  }
  throw new Error(`${path}: read as a header`);
}

describe('qcow2 header reader', () => {
  it('reads what qemu-img wrote', async () => {
    const dir = tempDir('qhdr');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '1G']);
    const images: [string, string[]][] = [
      ['v3.qcow2', ['-o', 'compat=1.1,cluster_size=4096']],
      ['v2.qcow2', ['-o', 'compat=0.10']],
      ['over.qcow2', ['-b', 'base.qcow2', '-F', 'qcow2']],
      [`${'long-name-'.repeat(20)}.qcow2`, ['-b', 'base.qcow2', '-F', 'qcow2', '-o', 'cluster_size=512']],
      ['over-v2.qcow2', ['-b', 'over.qcow2', '-F', 'qcow2', '-o', 'compat=0.10']],
    ];
    for (const [name, opts] of images) await execa('qemu-img', ['create', '-q', '-f', 'qcow2', ...opts, join(dir, name), '3000M'], { cwd: dir });
    for (const [name] of [['base.qcow2'], ...images]) {
      const h = await readQcow2Header(join(dir, name));
      const i = await info(join(dir, name));
      expect(h.size, name).toBe(i['virtual-size']);
      expect(h.backing, name).toBe(i['backing-filename'] ?? null);
      expect(2 ** h.clusterBits, name).toBe(i['cluster-size']);
      expect(h.version, name).toBe(i['format-specific'].data.compat === '0.10' ? 2 : 3);
      expect(h.externalDataFile, name).toBe(false);
      expect(h.dataFileName, name).toBeNull();
    }
  });

  it('reports an external data file (incompatible feature bit 2) and its name, as qemu-img does', async () => {
    const dir = tempDir('qhdr');
    const data = join(tempDir('qhdr-outside'), 'data.raw');
    for (const [name, opts] of [['ext.qcow2', []], ['ext-raw.qcow2', ['-o', 'data_file_raw=on']], ['ext-4k.qcow2', ['-o', 'cluster_size=4096']]] as const) {
      await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${data}`, ...opts, join(dir, name), '64M']);
      const h = await readQcow2Header(join(dir, name));
      const i = await info(join(dir, name)) as unknown as { 'format-specific': { data: { 'data-file'?: string } } };
      expect(i['format-specific'].data['data-file'], name).toBe(data);
      expect(h.externalDataFile, name).toBe(true);
      expect(h.incompatibleFeatures & 4n, name).toBe(4n);
      expect(h.dataFileName, name).toBe(data);
      expect(h.size, name).toBe(64 * 1024 * 1024);
    }
  });

  it('an image cut short anywhere in its header, or not an image, is a Qcow2HeaderError', async () => {
    const dir = tempDir('qhdr');
    const full = join(dir, 'over.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '1G']);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', full], { cwd: dir });
    const bytes = readFileSync(full);
    const h = await readQcow2Header(full);
    const end = Number(bytes.readBigUInt64BE(8)) + bytes.readUInt32BE(16);
    expect(h.backing).toBe('base.qcow2');
    const cut = join(dir, 'cut.qcow2');
    for (let n = 0; n < end; n++) {
      writeFileSync(cut, bytes.subarray(0, n));
      expect(await headerError(cut), `cut at ${n}`).toMatch(/shorter than|truncated|magic/);
    }
    writeFileSync(cut, Buffer.concat([Buffer.from('not an image'), Buffer.alloc(4096)]));
    expect(await headerError(cut)).toMatch(/no qcow2 magic/);
    const v9 = Buffer.from(bytes.subarray(0, 4096));
    v9.writeUInt32BE(9, 4);
    writeFileSync(cut, v9);
    expect(await headerError(cut)).toMatch(/version 9/);
    const badName = Buffer.from(bytes.subarray(0, 4096));
    badName.writeUInt32BE(5000, 16);
    writeFileSync(cut, badName);
    expect(await headerError(cut)).toMatch(/bad backing file name/);
  });

  it('refuses a symlink and a directory without following them', async () => {
    const dir = tempDir('qhdr');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'real.qcow2'), '1G']);
    symlinkSync(join(dir, 'real.qcow2'), join(dir, 'link.qcow2'));
    await expect(readQcow2Header(join(dir, 'link.qcow2'))).rejects.toMatchObject({ code: 'ELOOP' });
    mkdirSync(join(dir, 'dir.qcow2'));
    expect(await headerError(join(dir, 'dir.qcow2'))).toMatch(/not a regular file/);
  });
});
