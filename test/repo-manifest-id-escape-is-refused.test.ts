// Names read from a repository are paths: a manifest whose id, image or backing file, or a prune
// journal whose names, point outside the chain directory are refused (reported naming the file),
// and list, verify, restore and prune neither read, write, link nor delete anything outside it.
import { execa } from 'execa';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { expectUntouched, handmadeRepo, snapshotTree, type SandboxedRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

function cli(args: string[]) {
  return execa('node', [CLI, ...args], { reject: false });
}

/** The sandbox seen from the chain directory (REPO/vm1/nightly). */
const OUT = '../../../sandbox';

function edit(r: SandboxedRepo, file: string, change: (m: any) => void): void {
  const p = join(r.dirs.nightly!, file);
  const m = JSON.parse(readFileSync(p, 'utf8'));
  change(m);
  writeFileSync(p, JSON.stringify(m, null, 2));
}

/** Runs every repository command on `r` and checks that the sandbox stayed as it was and `file` is named. */
async function expectContained(r: SandboxedRepo, file: string): Promise<void> {
  const before = snapshotTree(r.sandbox);
  const named = join(r.dirs.nightly!, file);
  const list = await cli(['list', '--repo', r.root, 'vm1', '--json']);
  expect(list.exitCode, list.stderr).toBe(0);
  const doc = JSON.parse(list.stdout);
  expect(doc.domains[0].problems.map((p: { path: string }) => p.path)).toContain(named);
  expect(JSON.stringify(doc.domains[0].backups)).not.toContain('sandbox');
  const verify = await cli(['verify', '--repo', r.root, 'vm1']);
  expect(verify.exitCode).toBe(1);
  expect(verify.stdout).toContain(named);
  const out = tempDir('restore');
  for (const at of ['nightly-0001', 'nightly-0002', 'nightly-0003']) await cli(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--to', join(out, `${at}.qcow2`), '--at', at]);
  const prune = await cli(['prune', '--repo', r.root, 'vm1', '--consumer', 'nightly', '--keep', '1']);
  if (prune.exitCode !== 0) expect(prune.stderr).toMatch(/nightly/);
  expectUntouched(r.sandbox, before);
  for (const f of ['victim.json', 'victim.qcow2', 'live.qcow2']) expect(existsSync(join(r.sandbox, f))).toBe(true);
}

describe('names read from manifests stay inside the repository', () => {
  it('an id that climbs out of the chain directory is refused', async () => {
    const r = await handmadeRepo({ sandbox: true });
    edit(r, 'nightly-0001.json', (m) => { m.id = `${OUT}/victim`; });
    await expectContained(r, 'nightly-0001.json');
  });

  it('an image file outside the chain directory is refused', async () => {
    const r = await handmadeRepo({ sandbox: true });
    edit(r, 'nightly-0001.json', (m) => { m.disks[0].file = `${OUT}/live.qcow2`; });
    await expectContained(r, 'nightly-0001.json');
  });

  it('a backing file outside the chain directory, or an absolute one, is refused', async () => {
    const r = await handmadeRepo({ sandbox: true });
    edit(r, 'nightly-0002.json', (m) => { m.disks[0].backing = `${OUT}/nightly-0001.vda.qcow2`; });
    edit(r, 'nightly-0003.json', (m) => { m.disks[0].backing = join(r.sandbox, 'live.qcow2'); });
    await expectContained(r, 'nightly-0002.json');
    const v = await cli(['verify', '--repo', r.root, 'vm1']);
    expect(v.stdout).toContain(join(r.dirs.nightly!, 'nightly-0003.json'));
  });

  it('an image of another point, a consumer or domain other than the directory\'s, a seq other than the id\'s are refused', async () => {
    const r = await handmadeRepo({ sandbox: true });
    edit(r, 'nightly-0001.json', (m) => { m.disks[0].file = 'nightly-0003.vda.qcow2'; });
    edit(r, 'nightly-0002.json', (m) => { m.consumer = 'weekly'; });
    edit(r, 'nightly-0003.json', (m) => { m.seq = 7; });
    const state = await r.repo.chainState('vm1', 'nightly');
    expect(state.points).toEqual([]);
    expect(state.damaged.map((d) => d.id)).toEqual(['nightly-0001', 'nightly-0002', 'nightly-0003']);
    edit(r, 'nightly-0002.json', (m) => { m.consumer = 'nightly'; m.domain = 'vm2'; });
    expect((await r.repo.chainState('vm1', 'nightly')).damaged.map((d) => d.problem).join('\n')).toMatch(/domain "vm2" is not the directory's/);
  });

  it('a prune journal naming points or images outside the chain is refused, and the prune changes nothing', async () => {
    const r = await handmadeRepo({ sandbox: true });
    const journal = join(r.dirs.nightly!, '.prune.json');
    writeFileSync(journal, JSON.stringify({
      keep: 1, removing: [`${OUT}/victim`], into: 'nightly-0003',
      disks: [{ target: 'vda', base: `${OUT}/live.qcow2`, top: 'nightly-0003.vda.qcow2', merged: `${OUT}/victim.qcow2` }], startedAt: new Date().toISOString(),
    }));
    const before = snapshotTree(r.sandbox);
    const chainBefore = snapshotTree(r.dirs.nightly!);
    const prune = await cli(['prune', '--repo', r.root, 'vm1', '--consumer', 'nightly', '--keep', '1']);
    expect(prune.exitCode).not.toBe(0);
    expect(prune.stderr).toContain(journal);
    expect(snapshotTree(r.dirs.nightly!)).toEqual(chainBefore);
    const list = JSON.parse((await cli(['list', '--repo', r.root, 'vm1', '--json'])).stdout);
    expect(list.domains[0].problems.map((p: { path: string }) => p.path)).toEqual([journal]);
    // A journal that cannot be trusted hides nothing.
    expect(list.domains[0].backups.map((m: { id: string }) => m.id)).toEqual(['nightly-0001', 'nightly-0002', 'nightly-0003']);
    expectUntouched(r.sandbox, before);
  });

  it('an in-progress marker naming another chain\'s point is read as an unreadable marker', async () => {
    const r = await handmadeRepo({ sandbox: true });
    writeFileSync(join(r.dirs.nightly!, '.inprogress.json'), JSON.stringify({ id: `${OUT}/victim`, pass: null, generation: 5, files: [`${OUT}/victim.qcow2`], pids: [], pid: 1, startedAt: '' }));
    const ip = await r.repo.readInProgress('vm1', 'nightly');
    expect(ip).toMatchObject({ id: '(unreadable marker)', generation: 0, files: [] });
  });
});
