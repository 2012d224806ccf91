// A restore into a file on a file system that fills up says which file could not be written, that
// the file system is full and what to do, and leaves nothing behind (no --to, no .part). Before, a
// raw restore said only "ENOSPC: no space left on device, write" and a qcow2 one an NBD WRITE
// error on a temp socket with exit code 5 (protocol error), naming neither the target nor the disk.
import { execa } from 'execa';
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MiB, tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { handmadeRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

async function tinyFs(): Promise<string> {
  const dir = tempDir('tinyfs');
  onCleanup(() => execa('umount', [dir], { reject: false }));
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
  return dir;
}

describe('restore onto a full file system', () => {
  for (const format of ['raw', 'qcow2'] as const) {
    it(`${format}: names the target and the disk, says the file system is full, leaves nothing`, async () => {
      const h = await handmadeRepo({ consumers: { nightly: 2 }, refs: true, sizeBytes: 16 * MiB, writeBytes: 2 * MiB });
      const dir = await tinyFs();
      const to = join(dir, `vda.${format}`);
      const r = await execa('node', [CLI, 'restore', '--repo', h.root, h.domain, '--disk', 'vda', '--to', to, '--format', format], { reject: false });
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toContain(`no space left on the file system of ${to}`);
      expect(r.stderr).toContain('disk vda');
      expect(r.stderr).toMatch(/Free space in .*or choose another --to/);
      expect(readdirSync(dir)).toEqual([]);
    });
  }
});
