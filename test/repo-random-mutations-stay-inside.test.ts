// Random mutations of a repository's manifests and images (names, ids, files, backing links in
// manifests and in image headers, sizes, extents, truncation, links, stray files): after each,
// list, verify, restore and prune change nothing outside the repository (a sandbox beside it is
// compared byte for byte), never crash, and either work or name the point they cannot use. The
// next backup into such a repository: repo-random-mutations-backup-stays-inside.
import { execa } from 'execa';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { expectUntouched, handmadeRepo, snapshotTree } from './support/handmade-repo.js';
import { rng } from './support/random.js';
import { expectSaneOutcome, mutate, mutationSeed as seed, roundCopy } from './support/repo-mutations.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');
const ROUNDS = 16;

function cli(args: string[]) {
  return execa('node', [CLI, ...args], { reject: false, timeout: 120_000 });
}

describe('a mutated repository never reaches outside itself', () => {
  it(`${ROUNDS} rounds of random mutations: list, verify, restore and prune stay inside and name what they cannot use`, async () => {
    const random = rng(seed);
    const pristine = await handmadeRepo({ sandbox: true });
    for (let round = 0; round < ROUNDS; round++) {
      const r = await roundCopy(pristine);
      const what = `seed ${seed}, round ${round}: ${JSON.stringify(await mutate(r, random, `seed ${seed}, round ${round}`))}`;
      const before = snapshotTree(r.sandbox);
      const out = tempDir('mut-restore');
      // list, verify and restore only read the repository (no chain lock): side by side; the prune, which writes it, after them.
      const runs = await Promise.all([
        cli(['list', '--repo', r.root, 'vm1', '--json']),
        cli(['verify', '--repo', r.root, 'vm1']),
        cli(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--to', join(out, 'newest.qcow2')]),
        cli(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--at', 'nightly-0002', '--to', join(out, 'two.qcow2')]),
      ]);
      runs.push(await cli(['prune', '--repo', r.root, 'vm1', '--consumer', 'nightly', '--keep', '2']));
      for (const run of runs) expectSaneOutcome(run, what);
      expect(runs[0]!.exitCode, `${what}: list`).toBe(0);
      expectUntouched(r.sandbox, before, `${what}\n${runs.map((x) => `${x.command}: ${x.exitCode} ${x.stdout.slice(0, 300)} ${x.stderr.slice(0, 300)}`).join('\n')}`);
    }
  }, 900_000);
});
