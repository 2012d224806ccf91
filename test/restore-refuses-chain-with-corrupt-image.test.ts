// A base image whose metadata is damaged (size and header intact, so only `qemu-img check` sees it):
// restore of a point above it must fail naming that image, not write a disk with holes. Before, the
// restore exited 0 and the disk differed from the backed-up one.
import { execa } from 'execa';
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MiB, tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { corruptFirstL1Entry, handmadeRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

describe('restore through a corrupt image', () => {
  for (const format of ['raw', 'qcow2'] as const) {
    it(`${format}: fails naming the image; nothing is left at --to`, async () => {
      const h = await handmadeRepo({ consumers: { nightly: 3 }, refs: true, sizeBytes: 16 * MiB, writeBytes: 2 * MiB });
      const base = join(h.dir, 'nightly-0001.vda.qcow2');
      corruptFirstL1Entry(base);
      const out = tempDir('restore');
      const to = join(out, `vda.${format}`);
      const r = await execa('node', [CLI, 'restore', '--repo', h.root, h.domain, '--disk', 'vda', '--to', to, '--format', format], { reject: false });
      expect(r.exitCode, 'the restore of a point above a corrupt base succeeded').toBe(1);
      expect(r.stderr).toContain(`image ${base}`);
      expect(r.stderr).toContain('qemu-img check');
      expect(existsSync(to)).toBe(false);
      expect(readdirSync(out)).toEqual([]);
    });
  }
});
