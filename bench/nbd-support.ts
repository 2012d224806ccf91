// Shared by the NBD benchmarks: timing a whole child process (wall, user+sys CPU, peak RSS via
// /usr/bin/time), medians, qemu-nbd start/stop, and a side-by-side table.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

/** The repository root, from dist/bench/ where this runs. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');

export interface Sample {
  wallS: number;
  cpuS: number;
  rssKiB: number;
}

export function workDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `virtcbt-bench-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Runs a command under /usr/bin/time; stdout goes to `stdoutFile` (or is dropped). */
export async function timed(cmd: string, args: string[], dir: string, stdoutFile?: string): Promise<Sample> {
  const timeFile = join(dir, 'time.out');
  await execa('/usr/bin/time', ['-f', '%e %U %S %M', '-o', timeFile, cmd, ...args], {
    stdout: stdoutFile ? { file: stdoutFile } : 'ignore',
    stderr: 'pipe',
  });
  const [e, u, s, m] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
  return { wallS: e!, cpuS: u! + s!, rssKiB: m! };
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
}

export function summarize(name: string, samples: Sample[]): Summary {
  return {
    name,
    wallS: median(samples.map((s) => s.wallS)),
    cpuS: median(samples.map((s) => s.cpuS)),
    rssMiB: Math.max(...samples.map((s) => s.rssKiB)) / 1024,
    walls: samples.map((s) => s.wallS),
  };
}

export function table(rows: Summary[], ref: Summary): string {
  const lines = ['| tool | wall (median) | CPU user+sys (median) | peak RSS | wall vs reference | CPU vs reference | all walls (s) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | --- |'];
  for (const r of rows) {
    lines.push(`| ${r.name} | ${r.wallS.toFixed(2)} s | ${r.cpuS.toFixed(2)} s | ${r.rssMiB.toFixed(0)} MiB | ` +
      `${(r.wallS / ref.wallS).toFixed(2)}x | ${(r.cpuS / ref.cpuS).toFixed(2)}x | ${r.walls.map((w) => w.toFixed(2)).join(' ')} |`);
  }
  return lines.join('\n');
}

export function load(): string {
  return loadavg().map((l) => l.toFixed(2)).join(' ');
}

export interface QemuNbd {
  uri: string;
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
