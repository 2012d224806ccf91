// A base image whose metadata is damaged (size and header intact, so only `qemu-img check` sees
// it) fails its own point in verify; the incrementals above it read through it, so they fail too,
// naming the damaged image. Before, verify said "ok" for them while their restore was wrong.
// (A base cut short is caught earlier, by the chain check: see backup-full-when-chain-base-cut-short.)
import { execa } from 'execa';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MiB } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { corruptFirstL1Entry, handmadeRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

describe('verify with a base image whose metadata is damaged', () => {
  it('fails the base and every point above it, naming the base image', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 3 }, refs: true, sizeBytes: 16 * MiB, writeBytes: 2 * MiB });
    const base = join(h.dir, 'nightly-0001.vda.qcow2');
    corruptFirstL1Entry(base);
    const r = await execa('node', [CLI, 'verify', '--repo', h.root, h.domain, '--json'], { reject: false });
    expect(r.exitCode).toBe(1);
    const disks = JSON.parse(r.stdout).disks as { id: string; ok: boolean; problems: string[] }[];
    for (const id of ['nightly-0001', 'nightly-0002', 'nightly-0003']) {
      const v = disks.find((d) => d.id === id)!;
      expect(v.ok, `${id} was verified ok`).toBe(false);
      if (id !== 'nightly-0001') expect(v.problems.join('; ')).toContain(`${base} (restore point nightly-0001) failed its check`);
    }
  });
});
