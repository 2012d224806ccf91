// A damaged manifest in the middle of a chain leaves the later points of that chain without a
// base the manifests vouch for: restore and verify refuse them. `list` says so, naming each such
// point and the file it lacks, and marks its row; before, it listed them with "the points listed
// are intact and restorable by id", and each restore then failed.
import { execa } from 'execa';
import { truncateSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useCleanup } from './support/cleanup.js';
import { handmadeRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

describe('list with a damaged manifest in the middle of a chain', () => {
  it('names the later points as not restorable, marks their rows, and lists the earlier one plainly', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 4 }, refs: true });
    truncateSync(join(h.dir, 'nightly-0002.json'), 20);
    const r = await execa('node', [CLI, 'list', '--repo', h.root, h.domain], { reject: false });
    expect(r.exitCode).toBe(0);
    for (const id of ['nightly-0003', 'nightly-0004']) {
      expect(r.stderr).toContain(`restore point ${id} cannot be restored`);
      expect(r.stdout.split('\n').find((l) => l.includes(id))).toContain('NOT RESTORABLE');
    }
    expect(r.stderr).toContain('nightly-0002.vda.qcow2');
    expect(r.stderr).not.toContain('the points listed are intact');
    expect(r.stdout.split('\n').find((l) => l.includes('nightly-0001'))).not.toContain('NOT RESTORABLE');
    // The one that list calls restorable is.
    const ok = await execa('node', [CLI, 'restore', '--repo', h.root, h.domain, '--disk', 'vda', '--at', 'nightly-0001', '--to', join(h.root, '..', `r-${process.pid}.qcow2`)], { reject: false });
    expect(ok.exitCode, ok.stderr).toBe(0);
    await execa('rm', ['-f', join(h.root, '..', `r-${process.pid}.qcow2`)]);

    const j = JSON.parse((await execa('node', [CLI, 'list', '--repo', h.root, h.domain, '--json'])).stdout);
    expect(j.domains[0].problems.map((p: { id?: string }) => p.id)).toEqual(expect.arrayContaining(['nightly-0002', 'nightly-0003', 'nightly-0004']));
  });
});
