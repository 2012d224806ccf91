// Runs a real virtcbtd for a test: its own state, run and QMP-socket directories, the libvirt hook
// installed to spool into that state directory, and a CLI runner pointed at the same config.
import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, writeFile, chmod } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterEach } from 'vitest';
import { pollUntil } from '../../src/util/abort.js';
import { onCleanup, trackChild } from './cleanup.js';
import { ensureLibvirtd } from './libvirt.js';

const ROOT = resolve(import.meta.dirname, '../..');
/** Fixed test state directory: the installed hook spools into it (libvirtd passes hooks no environment of ours). */
export const TEST_BASE = '/var/lib/virtcbt-test';
export const HOOK_PATH = '/etc/libvirt/hooks/qemu.d/virtcbt';
/** Shared by every test daemon: markers name their own daemon's spool, so parallel test processes do not mix events. */
export const ENABLED_DIR = join(TEST_BASE, 'enabled');

/** Daemons of this test file: a failed test shows the end of their logs (what a CI run keeps of a flake). */
const logs = new Map<() => string, { stopped: boolean }>();
afterEach(({ task }) => {
  for (const [log, state] of logs) {
    if (task.result?.state === 'fail') console.error(`--- virtcbtd log (last 6000 characters) ---\n${log().slice(-6000)}`);
    // Whichever of this hook and the cleanup's runs first, a daemon stopped for this test is shown once.
    if (state.stopped) logs.delete(log);
  }
});

/**
 * Puts an event into a spool as the hook does: written under a temporary name, then renamed, so
 * that the daemon never reads it half written. Returns its path.
 */
export async function spoolEvent(spoolDir: string, name: string, text: string): Promise<string> {
  const file = join(spoolDir, name);
  const tmp = join(spoolDir, `.${name}.tmp`);
  await writeFile(tmp, text);
  await rename(tmp, file);
  return file;
}

export interface TestDaemon {
  configFile: string;
  stateDir: string;
  spoolDir: string;
  socket: string;
  log(): string;
  /** Runs the CLI with this daemon's config. */
  cli(args: string[], opts?: { reject?: boolean }): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  cliJson<T = any>(args: string[]): Promise<T>;
  kill(signal?: NodeJS.Signals): Promise<void>;
  start(env?: Record<string, string>): Promise<void>;
  stop(): Promise<void>;
  readonly running: boolean;
}

/**
 * Installs the hook (rendered for TEST_BASE) when it differs from what is installed, and restarts
 * libvirtd so that it reads it: libvirtd reads hooks only when it starts.
 */
export async function ensureTestHook(): Promise<void> {
  const text = (await readFile(join(ROOT, 'hooks/qemu.d/virtcbt'), 'utf8')).replaceAll('@ENABLED_DIR@', ENABLED_DIR);
  // Markers left by test daemons that are gone (their spool directory went with them).
  await mkdir(ENABLED_DIR, { recursive: true });
  for (const m of await readdir(ENABLED_DIR)) {
    // .holders: pid files of storage daemons on stopped domains' images (the hook ends them on start).
    if (m.startsWith('.')) continue;
    const spool = (await readFile(join(ENABLED_DIR, m), 'utf8').catch(() => '')).trim();
    if (!spool || !existsSync(spool)) await rm(join(ENABLED_DIR, m), { force: true });
  }
  const current = await readFile(HOOK_PATH, 'utf8').catch(() => '');
  await ensureLibvirtd();
  if (current === text) return;
  await mkdir(join(HOOK_PATH, '..'), { recursive: true });
  await writeFile(HOOK_PATH, text);
  await chmod(HOOK_PATH, 0o755);
  await restartLibvirtd();
}

export async function restartLibvirtd(): Promise<void> {
  const pid = (await execa('pgrep', ['-x', 'libvirtd'], { reject: false })).stdout.trim().split('\n')[0];
  if (pid) {
    process.kill(Number(pid), 'SIGTERM');
    await pollUntil(() => (existsSync(`/proc/${pid}`) ? undefined : true), 'libvirtd to stop', { timeoutMs: 30_000 });
  }
  await ensureLibvirtd();
}

export async function startTestDaemon(opts: { env?: Record<string, string>; granularity?: number; config?: Record<string, unknown> } = {}): Promise<TestDaemon> {
  await ensureTestHook();
  const stateDir = join(TEST_BASE, `state-${process.pid}`);
  const runDir = join(TEST_BASE, `run-${process.pid}`);
  // Sockets QEMU (as libvirt-qemu) creates must be under a directory it may write.
  const qmpSocketDir = '/var/lib/libvirt/qemu/virtcbt-test';
  await rm(stateDir, { recursive: true, force: true });
  await mkdir(join(stateDir, 'spool'), { recursive: true });
  await mkdir(runDir, { recursive: true });
  const configFile = join(TEST_BASE, `config-${process.pid}.json`);
  const socket = join(runDir, 'virtcbtd.sock');
  await writeFile(configFile, JSON.stringify({
    stateDir,
    runDir,
    qmpSocketDir,
    daemon: { socket, spoolDir: join(stateDir, 'spool'), enabledDir: ENABLED_DIR },
    reconcile: { intervalSeconds: 3600, granularity: opts.granularity ?? 65536 },
    log: { level: 'debug' },
    ...opts.config,
  }, null, 2));
  let child: ChildProcess | undefined;
  let output = '';
  let exited: Promise<void> = Promise.resolve();

  const d: TestDaemon = {
    configFile,
    stateDir,
    spoolDir: join(stateDir, 'spool'),
    socket,
    log: () => output,
    get running() { return child !== undefined && child.exitCode === null && child.signalCode === null; },
    async cli(args, o = {}) {
      const r = await execa('node', [join(ROOT, 'dist/src/cli/main.js'), '--config', configFile, ...args], { reject: false, timeout: 300_000 });
      if ((o.reject ?? true) && r.exitCode !== 0) {
        throw new Error(`virtcbt ${args.join(' ')} exited ${r.exitCode}: ${r.stderr}\n--- daemon log ---\n${output.slice(-3000)}`);
      }
      return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
    },
    async cliJson(args) {
      return JSON.parse((await d.cli([...args, '--json'])).stdout);
    },
    async start(env = {}) {
      await rm(socket, { force: true });
      child = spawn('node', [join(ROOT, 'dist/src/daemon/main.js'), '--config', configFile], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...opts.env, ...env },
      });
      const c = child;
      const from = output.length;
      const untrack = trackChild(c.pid!);
      exited = new Promise((res) => c.once('exit', () => { untrack(); res(); }));
      c.stdout!.on('data', (b: Buffer) => { output += b.toString(); });
      c.stderr!.on('data', (b: Buffer) => { output += b.toString(); });
      await pollUntil(() => {
        if (c.exitCode !== null || c.signalCode !== null) throw new Error(`virtcbtd exited at start:\n${output}`);
        return output.slice(from).includes('virtcbtd ready');
      }, 'virtcbtd to start', { timeoutMs: 60_000 });
    },
    async kill(signal = 'SIGKILL') {
      child?.kill(signal);
      await exited;
    },
    async stop() {
      if (d.running) await d.kill('SIGTERM');
    },
  };
  const shown = { stopped: false };
  logs.set(d.log, shown);
  onCleanup(async () => {
    shown.stopped = true;
    await d.stop();
    await rm(runDir, { recursive: true, force: true });
    await rm(configFile, { force: true });
    await rm(stateDir, { recursive: true, force: true });
  });
  await d.start();
  return d;
}
