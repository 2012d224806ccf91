// A restore killed (SIGKILL) while it writes leaves its `.part` file and its temp directory; a
// killed verify leaves its temp directory. The next restore to the same file, or the next verify,
// removes them; what a live process owns is left alone.
import { execa, type ResultPromise } from 'execa';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { partName } from '../src/repo/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, sameContent, tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { handmadeRepo } from './support/handmade-repo.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

function cli(args: string[]): ResultPromise<{ reject: false }> {
  const p = execa('node', [CLI, ...args], { reject: false });
  onCleanup(() => { p.kill('SIGKILL'); });
  return p;
}

/** The temp directories a process of `pid` made for `kind` (restore or verify). */
function runDirs(kind: string, pid: number): string[] {
  return readdirSync(tmpdir()).filter((n) => n.startsWith(`virtcbt-${kind}-${pid}-`));
}

/** Whether a qemu-nbd serving `file` still runs. */
async function qemuNbdOn(file: string): Promise<boolean> {
  return (await execa('pgrep', ['-f', `qemu-nbd.*${file}`], { reject: false })).exitCode === 0;
}

// 256 MiB of data: the copy takes long enough to be killed in the middle.
const big = { consumers: { nightly: 1 }, sizeBytes: 512 * MiB, writeBytes: 256 * MiB, refs: true };

describe('leftovers of a killed run', () => {
  it('a killed restore: the next restore to the same file removes its .part file and temp directory', async () => {
    const h = await handmadeRepo(big);
    const to = join(tempDir('out'), 'vda.qcow2');
    // A live process's part file and temp directory (this test's own pid): never touched.
    const livePart = partName(to, process.pid);
    writeFileSync(livePart, 'live');
    const liveDir = join(tmpdir(), `virtcbt-restore-${process.pid}-Live00`);
    mkdirSync(liveDir);
    onCleanup(() => execa('rm', ['-rf', liveDir]));

    const killed = cli(['restore', '--repo', h.root, h.domain, '--disk', 'vda', '--to', to]);
    const pid = killed.pid!;
    const part = partName(to, pid);
    // Killed once it writes: its .part exists and a qemu-nbd serves it.
    await pollUntil(async () => existsSync(part) && await qemuNbdOn(part), 'the restore to start writing', { timeoutMs: 60_000, intervalMs: 5 });
    killed.kill('SIGKILL');
    const r = await killed;
    expect(r.signal, `the restore ended before it was killed: ${r.stderr}`).toBe('SIGKILL');
    expect(existsSync(part)).toBe(true);
    expect(runDirs('restore', pid)).toHaveLength(1);
    // Its qemu-nbd went with it (parent-death signal).
    await pollUntil(async () => !(await qemuNbdOn(part)), 'the killed restore\'s qemu-nbd to exit', { timeoutMs: 10_000 });

    const again = await cli(['restore', '--repo', h.root, h.domain, '--disk', 'vda', '--to', to]);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(existsSync(part), 'the killed restore\'s .part file is still there').toBe(false);
    expect(runDirs('restore', pid), 'the killed restore\'s temp directory is still there').toEqual([]);
    expect(existsSync(livePart)).toBe(true);
    expect(existsSync(liveDir)).toBe(true);
    expect((await sameContent(h.points[0]!.refs.vda!, 'raw', to, 'qcow2')).same).toBe(true);
  });

  it('a killed verify: the next verify removes its temp directory', async () => {
    const h = await handmadeRepo(big);
    const killed = cli(['verify', '--repo', h.root]);
    const pid = killed.pid!;
    await pollUntil(async () => runDirs('verify', pid).length > 0 && await qemuNbdOn(h.points[0]!.manifest.disks[0]!.file), 'the verify to start reading', { timeoutMs: 60_000, intervalMs: 5 });
    killed.kill('SIGKILL');
    const r = await killed;
    expect(r.signal, `the verify ended before it was killed: ${r.stdout}`).toBe('SIGKILL');
    expect(runDirs('verify', pid)).toHaveLength(1);

    const again = await cli(['verify', '--repo', h.root]);
    expect(again.exitCode, again.stdout + again.stderr).toBe(0);
    expect(runDirs('verify', pid), 'the killed verify\'s temp directory is still there').toEqual([]);
  });
});
