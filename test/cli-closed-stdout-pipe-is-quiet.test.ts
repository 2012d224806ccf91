// `virtcbt backup … --json | head -1`: the reader closes the pipe after the first line; the CLI
// ends at its next write with 141 (as a tool killed by SIGPIPE) and no stack trace, and the
// backup virtcbtd had accepted runs to its end all the same (restore point written, consumer
// moved, no pass left open). A closed stderr ends the CLI the same way.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Repository, verifyRepo } from '../src/repo/index.js';
import { pollUntil } from '../src/util/abort.js';
import { tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');
const SIGPIPE_EXIT = 141;

let daemon: TestDaemon;
let guest: LibvirtGuest;

interface Run {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** What the reader got before it closed the pipe. */
  firstLine: string;
  stderr: string;
  /** What `atExit` returned the moment the CLI had exited. */
  atExit: unknown;
}

/**
 * Runs the CLI with `stream` ('stdout' or 'stderr') read by a reader that closes it after its
 * first line (or at once with `closeAt: 'start'`), the other stream collected whole.
 */
function runWithClosingReader(
  args: string[], stream: 'stdout' | 'stderr', closeAt: 'first-line' | 'start' = 'first-line', atExit: () => unknown = () => undefined,
): Promise<Run> {
  return new Promise((resolveRun, reject) => {
    const child = spawn('node', [CLI, '--config', daemon.configFile, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    onCleanup(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
    const closing = child[stream]!;
    const other = child[stream === 'stdout' ? 'stderr' : 'stdout']!;
    let seen = '';
    let firstLine = '';
    let stderr = '';
    if (closeAt === 'start') closing.destroy();
    else {
      closing.on('data', (c: Buffer) => {
        seen += c.toString('utf8');
        const nl = seen.indexOf('\n');
        if (nl < 0) return;
        firstLine = seen.slice(0, nl);
        closing.destroy();
      });
    }
    other.on('data', (c: Buffer) => { if (stream === 'stdout') stderr += c.toString('utf8'); });
    child.on('error', reject);
    child.on('exit', () => { seenAtExit = atExit(); });
    let seenAtExit: unknown;
    child.on('close', (exitCode, signal) => resolveRun({ exitCode, signal, firstLine, stderr, atExit: seenAtExit }));
  });
}

const consumerLast = async (name: string) =>
  (await daemon.cliJson(['consumer', 'list', guest.name])).consumers.find((c: { name: string }) => c.name === name).last as number | null;

beforeAll(async () => {
  daemon = await startTestDaemon();
  // A stopped domain: its backup runs through a storage daemon, no guest to boot.
  guest = await startLibvirtGuest({ name: 'pipe', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', guest.name]);
});

describe('a closed output pipe', () => {
  it('backup --json | head -1: exit 141, no stack trace, and the backup completes in virtcbtd', async () => {
    await daemon.cli(['consumer', 'add', guest.name, 'piped']);
    const repo = tempDir('repo');
    const before = await consumerLast('piped');
    // Manifests the repository has for the consumer, looked at the moment the CLI exits.
    const dir = join(repo, encodeURIComponent(guest.name), 'piped');
    const manifests = () => (existsSync(dir) ? readdirSync(dir) : []).filter((f) => f.endsWith('.json') && !f.startsWith('.'));
    const r = await runWithClosingReader(['backup', guest.name, '--consumer', 'piped', '--repo', repo, '--json'], 'stdout', 'first-line', manifests);
    expect(JSON.parse(r.firstLine).type).toBe('start');
    // The CLI went away mid-backup: the restore point was not written yet.
    expect(r.atExit).toEqual([]);
    expect(r.stderr).not.toMatch(/EPIPE|\n\s+at /);
    expect(r.stderr).toBe('');
    expect(r.signal).toBeNull();
    expect(r.exitCode).toBe(SIGPIPE_EXIT);
    // The job the daemon had accepted ends on its own: committed, restorable, nothing left open.
    await pollUntil(async () => (await consumerLast('piped')) !== before || undefined, 'the backup to complete in virtcbtd', { timeoutMs: 120_000, intervalMs: 200 });
    expect((await daemon.cliJson(['status', guest.name])).openPasses).toEqual([]);
    const points = await (await Repository.open(repo)).chain(guest.name, 'piped');
    expect(points).toHaveLength(1);
    const v = await verifyRepo(await Repository.open(repo), guest.name);
    expect(v.ok, JSON.stringify(v.disks.filter((d) => !d.ok))).toBe(true);
  });

  it('a closed stderr ends the CLI quietly with 141 too', async () => {
    // The error about the unknown domain is the CLI's one write to stderr.
    const r = await runWithClosingReader(['backup', 'virtcbt-test-no-such-domain', '--consumer', 'x', '--repo', tempDir('repo')], 'stderr', 'start');
    expect(r.signal).toBeNull();
    expect(r.exitCode).toBe(SIGPIPE_EXIT);
  });
});
