// Shared by the NBD benchmarks: timing a whole child process (wall, user+sys CPU, peak RSS via
// /usr/bin/time, and the CPU the qemu-nbd serving it spent meanwhile), medians, qemu-nbd
// start/stop, and a side-by-side table.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { execa } from 'execa';

/** The repository root, from dist/bench/ where this runs. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');

export interface Sample {
  wallS: number;
  cpuS: number;
  rssKiB: number;
  /** CPU (user+sys) of the server process during the run, when one was watched. */
  serverS?: number;
}

/**
 * The children's environment. NODE_EXTRA_CA_CERTS makes every Node process read and parse that
 * CA bundle before running any code (~0.09 s of CPU on the development machine, whose
 * environment sets it); nothing here uses it (NBD TLS takes its CA from tls-certificates=DIR),
 * so it is left out unless --keep-env is given. The table's heading says which.
 */
export const keepEnv = process.argv.includes('--keep-env');
export const childEnv = (() => {
  const e = { ...process.env };
  if (!keepEnv) delete e.NODE_EXTRA_CA_CERTS;
  return e;
})();

/** One line for the output: what was done about the environment. */
export function envNote(): string {
  if (!process.env.NODE_EXTRA_CA_CERTS) return 'NODE_EXTRA_CA_CERTS not set';
  return keepEnv ? 'NODE_EXTRA_CA_CERTS kept (--keep-env): every Node process parses that CA bundle at start'
    : 'NODE_EXTRA_CA_CERTS removed from the children\'s environment (--keep-env keeps it)';
}

/** Clock ticks per second of /proc/PID/stat's times (USER_HZ: 100 on every Linux port that matters here). */
const USER_HZ = 100;

/** User+sys CPU seconds a process has used so far, from /proc/PID/stat (fields 14 and 15). */
export function cpuOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / USER_HZ;
}

export function workDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `virtcbt-bench-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * Runs a command under /usr/bin/time; stdout goes to `stdoutFile` (or is dropped). With
 * `serverPid`, also the CPU that process used meanwhile.
 */
export async function timed(cmd: string, args: string[], dir: string, stdoutFile?: string, serverPid?: number): Promise<Sample> {
  const timeFile = join(dir, 'time.out');
  const server0 = serverPid === undefined ? 0 : cpuOf(serverPid);
  // The file itself as the child's stdout (execa's { file } option would pipe the output through
  // this process, and a tool that prints fast, like nbdinfo, would then wait on that pipe).
  const out = stdoutFile ? openSync(stdoutFile, 'w') : 'ignore';
  try {
    const child = spawn('/usr/bin/time', ['-f', '%e %U %S %M', '-o', timeFile, cmd, ...args], {
      stdio: ['ignore', out, 'pipe'], env: childEnv,
    });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const [code] = (await once(child, 'close')) as [number | null];
    if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${code}: ${stderr.trim()}`);
  } finally {
    if (typeof out === 'number') closeSync(out);
  }
  const serverS = serverPid === undefined ? undefined : cpuOf(serverPid) - server0;
  const [e, u, s, m] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
  return { wallS: e!, cpuS: u! + s!, rssKiB: m!, serverS };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export interface Summary {
  name: string;
  wallS: number;
  cpuS: number;
  rssMiB: number;
  walls: number[];
  /** Median server CPU, when the samples have it. */
  serverS?: number;
  servers?: number[];
}

export function summarize(name: string, samples: Sample[]): Summary {
  return {
    name,
    wallS: median(samples.map((s) => s.wallS)),
    cpuS: median(samples.map((s) => s.cpuS)),
    rssMiB: Math.max(...samples.map((s) => s.rssKiB)) / 1024,
    walls: samples.map((s) => s.wallS),
    ...(samples.every((s) => s.serverS !== undefined)
      ? { serverS: median(samples.map((s) => s.serverS!)), servers: samples.map((s) => s.serverS!) }
      : {}),
  };
}

export function table(rows: Summary[], ref: Summary): string {
  const server = rows.every((r) => r.serverS !== undefined);
  const lines = [`| tool | wall (median) | CPU user+sys (median) |${server ? ' server CPU (median) |' : ''} peak RSS | wall vs reference | CPU vs reference | all walls (s) |${server ? ' all server CPU (s) |' : ''}`,
    `| --- | ---: | ---: |${server ? ' ---: |' : ''} ---: | ---: | ---: | --- |${server ? ' --- |' : ''}`];
  for (const r of rows) {
    lines.push(`| ${r.name} | ${r.wallS.toFixed(2)} s | ${r.cpuS.toFixed(2)} s |${server ? ` ${r.serverS!.toFixed(2)} s |` : ''} ${r.rssMiB.toFixed(0)} MiB | ` +
      `${(r.wallS / ref.wallS).toFixed(2)}x | ${(r.cpuS / ref.cpuS).toFixed(2)}x | ${r.walls.map((w) => w.toFixed(2)).join(' ')} |` +
      (server ? ` ${r.servers!.map((w) => w.toFixed(2)).join(' ')} |` : ''));
  }
  return lines.join('\n');
}

export function load(): string {
  return loadavg().map((l) => l.toFixed(2)).join(' ');
}

export interface QemuNbd {
  uri: string;
  /** The qemu-nbd process (after --fork: the daemon itself), for its CPU figures. */
  pid: number;
  stop(): Promise<void>;
}

/** qemu-nbd on a unix socket; --fork returns once it listens. */
export async function qemuNbd(image: string, dir: string, args: string[]): Promise<QemuNbd> {
  const socket = join(dir, 'nbd.sock');
  const pidFile = join(dir, 'nbd.pid');
  await execa('qemu-nbd', ['--fork', '--pid-file', pidFile, '-k', socket, '-t', ...args, image]);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  return {
    uri: `nbd+unix:///?socket=${socket}`,
    pid,
    async stop() {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        return;
      }
      for (let i = 0; i < 500; i++) {
        try {
          process.kill(pid, 0);
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, 10));
      }
      process.kill(pid, 'SIGKILL');
    },
  };
}

export function flag(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}
