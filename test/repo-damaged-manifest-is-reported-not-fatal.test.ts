// One bad *.json in a chain (a stray notes.json, a truncated manifest) concerns only itself: list
// reports it (stderr, `problems` / `warnings` in --json) and lists the rest, verify fails that point
// naming the file and verifies the others, restore of any other point works, and the consumer's
// next backup goes on from the newest intact point without deleting the damaged point's images.
import { execa } from 'execa';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MiB, tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { handmadeRepo, pattern, type HandmadeRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

function cli(args: string[]) {
  return execa('node', [CLI, ...args], { reject: false });
}

const DAYS = ['2026-01-01T00:00:00.000Z', '2026-01-02T00:00:00.000Z', '2026-01-03T00:00:00.000Z'];

/** nightly-0002.json cut in half, and a notes.json beside the manifests. */
async function damaged(): Promise<{ r: HandmadeRepo; bad: string; notes: string }> {
  // weekly's points are the newest: restore without --at takes weekly-0002.
  const r = await handmadeRepo({ consumers: { nightly: DAYS, weekly: ['2026-01-04T00:00:00.000Z', '2026-01-05T00:00:00.000Z'] } });
  const bad = join(r.dirs.nightly!, 'nightly-0002.json');
  writeFileSync(bad, readFileSync(bad, 'utf8').slice(0, 200));
  const notes = join(r.dirs.nightly!, 'notes.json');
  writeFileSync(notes, 'moved the offsite copy on tuesday\n');
  return { r, bad, notes };
}

describe('a damaged manifest is reported, not fatal', () => {
  it('list lists every intact point and reports the damaged manifest and the stray file', async () => {
    const { r, bad, notes } = await damaged();
    const json = await cli(['list', '--repo', r.root, 'vm1', '--json']);
    expect(json.exitCode, json.stderr).toBe(0);
    const d = JSON.parse(json.stdout).domains[0];
    expect(d.backups.map((m: { id: string }) => m.id).sort()).toEqual(['nightly-0001', 'nightly-0003', 'weekly-0001', 'weekly-0002']);
    expect(d.problems).toEqual([
      expect.objectContaining({ path: bad, id: 'nightly-0002', consumer: 'nightly' }),
      // nightly-0003 is an incremental on nightly-0002: listed, but said not to be restorable.
      expect.objectContaining({ id: 'nightly-0003', consumer: 'nightly', problem: expect.stringContaining('cannot be restored') }),
    ]);
    expect(d.warnings).toEqual([expect.objectContaining({ path: notes })]);
    const human = await cli(['list', '--repo', r.root]);
    expect(human.exitCode).toBe(0);
    expect(human.stderr).toContain(`DAMAGED ${bad}`);
    expect(human.stderr).toContain(`warning: ${notes}`);
    expect(human.stdout).toContain('weekly-0002');
  });

  it('verify fails the damaged point naming its file and verifies every other point', async () => {
    const { r, bad, notes } = await damaged();
    const v = await cli(['verify', '--repo', r.root, 'vm1', '--json']);
    expect(v.exitCode).toBe(1);
    const report = JSON.parse(v.stdout);
    const failed = report.disks.filter((x: { ok: boolean }) => !x.ok);
    // nightly-0003's image is an overlay on nightly-0002's: that point fails too, for its backing.
    expect(failed).toEqual([expect.objectContaining({ id: 'nightly-0002', file: bad }), expect.objectContaining({ id: 'nightly-0003' })]);
    expect(failed[1].problems.join()).toMatch(/nightly-0002\.vda\.qcow2/);
    expect(report.disks.filter((x: { ok: boolean }) => x.ok).map((x: { id: string }) => x.id).sort()).toEqual(['nightly-0001', 'weekly-0001', 'weekly-0002']);
    expect(report.checked).toBe(5);
    expect(report.ignored.map((x: { path: string }) => x.path)).toEqual([notes]);
    const human = await cli(['verify', '--repo', r.root]);
    expect(human.stdout).toMatch(new RegExp(`nightly-0002 -: FAILED: .*${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
  });

  it('restore of other points works; restore of the damaged one names the file', async () => {
    const { r, bad } = await damaged();
    const out = tempDir('restore');
    for (const at of ['nightly-0001', 'weekly-0001', undefined]) {
      const to = join(out, `${at ?? 'newest'}.qcow2`);
      const res = await cli(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--to', to, ...(at ? ['--at', at] : []), '--json']);
      expect(res.exitCode, res.stderr).toBe(0);
      const seq = Number(JSON.parse(res.stdout).id.slice(-4));
      const read = await execa('qemu-io', ['-f', 'qcow2', '-r', '-c', `read -P ${pattern(seq)} ${(seq - 1) * MiB} ${MiB}`, to]);
      expect(read.stdout).not.toMatch(/Pattern verification failed/);
    }
    const res = await cli(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--to', join(out, 'x.qcow2'), '--at', 'nightly-0002']);
    expect(res.exitCode).toBe(4);
    expect(res.stderr).toContain(bad);
  });

  it('the consumer\'s next backup goes on after the damaged point and keeps its images', async () => {
    const { r, bad } = await damaged();
    const newestBad = join(r.dirs.nightly!, 'nightly-0004.json');
    writeFileSync(newestBad, '{');
    const left = await r.repo.cleanupLeftovers('vm1', 'nightly');
    expect(left.chain.map((m) => m.id)).toEqual(['nightly-0001', 'nightly-0003']);
    expect(left.nextSeq).toBe(5);
    expect(left.damaged.map((d) => d.path)).toEqual([bad, newestBad]);
    expect(left.removed).toEqual([]);
    expect(existsSync(join(r.dirs.nightly!, 'nightly-0002.vda.qcow2'))).toBe(true);
    expect(existsSync(bad)).toBe(true);
  });
});
