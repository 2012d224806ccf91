// A second virtcbtd on the same configuration (or the same socket) refuses to start and leaves
// the first one reachable; after the first was killed, its stale lock and socket are taken over.
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { onCleanup, trackChild, useCleanup } from './support/cleanup.js';
import { startTestDaemon, TEST_BASE } from './support/daemon.js';

useCleanup();
const ROOT = resolve(import.meta.dirname, '..');
const DAEMON = join(ROOT, 'dist/src/daemon/main.js');

/** Runs virtcbtd on `configFile` to its exit (a refused start) or until it is ready. */
function runDaemon(configFile: string): { ready: Promise<'ready' | { code: number | null; output: string }>; stop(): Promise<void> } {
  const child = spawn('node', [DAEMON, '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const untrack = trackChild(child.pid!);
  let output = '';
  const exited = new Promise<void>((r) => child.once('exit', () => { untrack(); r(); }));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  onCleanup(stop);
  const ready = new Promise<'ready' | { code: number | null; output: string }>((res) => {
    const onData = (b: Buffer) => {
      output += b.toString();
      if (output.includes('virtcbtd ready')) res('ready');
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => res({ code, output }));
  });
  return { ready, stop };
}

const pidOf = async (d: { cliJson(a: string[]): Promise<any> }) => (await d.cliJson(['status'])).daemon.pid as number;

describe('one virtcbtd per configuration', () => {
  it('a second one on the same configuration refuses to start; the first stays reachable', async () => {
    const d = await startTestDaemon();
    const first = await pidOf(d);
    const second = await runDaemon(d.configFile).ready;
    expect(second).not.toBe('ready');
    const r = second as { code: number; output: string };
    expect(r.code).not.toBe(0);
    expect(r.output).toContain(`another virtcbtd (pid ${first}) is running on this configuration`);
    // The first one still has its socket and answers.
    expect(await pidOf(d)).toBe(first);
  });

  it('a second one with another state directory but the same socket refuses to start', async () => {
    const d = await startTestDaemon();
    const first = await pidOf(d);
    const cfg = JSON.parse(await readFile(d.configFile, 'utf8'));
    const stateDir = join(TEST_BASE, `state-other-${process.pid}`);
    onCleanup(() => rm(stateDir, { recursive: true, force: true }));
    const configFile = join(TEST_BASE, `config-other-${process.pid}.json`);
    onCleanup(() => rm(configFile, { force: true }));
    await writeFile(configFile, JSON.stringify({ ...cfg, stateDir, daemon: { ...cfg.daemon, spoolDir: join(stateDir, 'spool') } }));
    const second = await runDaemon(configFile).ready;
    expect(second).not.toBe('ready');
    expect((second as { output: string }).output).toContain(`another virtcbtd answers on ${d.socket}`);
    expect(await pidOf(d)).toBe(first);
  });

  it('after the first was killed (lock and socket left behind), a new one takes over', async () => {
    const d = await startTestDaemon();
    const first = await pidOf(d);
    await d.kill('SIGKILL');
    // Started directly: the test helper's start() would remove the stale socket itself.
    const next = runDaemon(d.configFile);
    expect(await next.ready).toBe('ready');
    await pollUntil(async () => (await pidOf(d)) !== first, 'the new daemon to answer', { timeoutMs: 10_000 });
    expect(Number((await readFile(join(d.stateDir, 'virtcbtd.pid'), 'utf8')).trim())).toBe(await pidOf(d));
    await next.stop();
    // A clean stop removes its own socket (and only its own).
    expect(existsSync(d.socket)).toBe(false);
    const gone = await execa('node', [join(ROOT, 'dist/src/cli/main.js'), '--config', d.configFile, 'status'], { reject: false });
    expect(gone.exitCode).toBe(3);
  });
});
