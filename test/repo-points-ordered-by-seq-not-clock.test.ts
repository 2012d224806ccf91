// A clock set back between two backups must not reorder a chain: `list` shows each consumer's
// points in the order they were taken (their sequence), `restore` without --at takes the newest
// point, not the one with the latest time, and --at TIME the newest point taken at or before it.
import { execa } from 'execa';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MiB, tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { handmadeRepo, pattern } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

function cli(args: string[]) {
  return execa('node', [CLI, ...args], { reject: false });
}

/** Whether the restored image holds point `seq`'s pattern at its extent. */
async function holdsPoint(file: string, seq: number): Promise<boolean> {
  const r = await execa('qemu-io', ['-f', 'qcow2', '-r', '-c', `read -P ${pattern(seq)} ${(seq - 1) * MiB} ${MiB}`, file], { reject: false });
  return r.exitCode === 0 && !/Pattern verification failed/.test(r.stdout + r.stderr);
}

describe('restore points are ordered by sequence, not by the clock', () => {
  it('a chain whose clock went back is listed and restored in the order it was taken', async () => {
    // Point 2 was taken after the clock was set back two days; point 3 a day after that.
    const r = await handmadeRepo({ consumers: { nightly: ['2026-03-10T00:00:00.000Z', '2026-03-08T00:00:00.000Z', '2026-03-09T00:00:00.000Z'] } });
    const list = await cli(['list', '--repo', r.root, 'vm1', '--json']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout).domains[0].backups.map((m: { id: string }) => m.id)).toEqual(['nightly-0001', 'nightly-0002', 'nightly-0003']);
    const human = await cli(['list', '--repo', r.root, 'vm1']);
    expect(human.stdout.split('\n').filter((l) => l.startsWith('  ')).map((l) => l.trim().split(/\s+/)[0])).toEqual(['nightly-0001', 'nightly-0002', 'nightly-0003']);

    const out = tempDir('restore');
    const newest = join(out, 'newest.qcow2');
    const rr = await cli(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--to', newest, '--json']);
    expect(rr.exitCode, rr.stderr).toBe(0);
    expect(JSON.parse(rr.stdout).id).toBe('nightly-0003');
    for (const seq of [1, 2, 3]) expect(await holdsPoint(newest, seq), `point ${seq}`).toBe(true);

    // At or before 2026-03-09T12:00: points 2 and 3 qualify by time; 3 is the newer of them.
    const at = await cli(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--to', join(out, 'at.qcow2'), '--at', '2026-03-09T12:00:00Z', '--json']);
    expect(at.exitCode, at.stderr).toBe(0);
    expect(JSON.parse(at.stdout).id).toBe('nightly-0003');
  });

  it('across consumers the chains are merged by time, each kept in its own order', async () => {
    const r = await handmadeRepo({
      consumers: {
        nightly: ['2026-03-10T00:00:00.000Z', '2026-03-08T00:00:00.000Z', '2026-03-11T00:00:00.000Z'],
        weekly: ['2026-03-09T00:00:00.000Z', '2026-03-12T00:00:00.000Z'],
      },
    });
    const ids = (await r.repo.list('vm1')).map((m) => m.id);
    expect(ids).toEqual(['weekly-0001', 'nightly-0001', 'nightly-0002', 'nightly-0003', 'weekly-0002']);
    for (const c of ['nightly', 'weekly']) {
      const own = ids.filter((id) => id.startsWith(c));
      expect(own).toEqual([...own].sort());
    }
    expect((await r.repo.resolve('vm1')).id).toBe('weekly-0002');
    expect((await r.repo.resolve('vm1', '2026-03-09T00:00:00Z')).id).toBe('nightly-0002');
    expect((await r.repo.resolve('vm1', '2026-03-10T12:00:00Z')).id).toBe('nightly-0002');
    expect((await r.repo.resolve('vm1', '2026-03-11T12:00:00Z')).id).toBe('nightly-0003');
    await expect(r.repo.resolve('vm1', '2026-03-07T00:00:00Z')).rejects.toThrow(/no backup of vm1 was taken at or before/);
  });
});
