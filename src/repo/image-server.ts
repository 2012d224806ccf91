// Serves one qcow2 image of the repository over NBD with qemu-nbd on a private unix socket, so
// that backups write and restores read it through the same NbdEndpoint and copy engine as
// everything else; qemu-nbd does the qcow2 work (allocation, backing chains, zero clusters).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdEndpoint, type Endpoint } from '../copy/index.js';
import { CONTEXT_BASE_ALLOCATION } from '../nbd/index.js';
import { pollUntil } from '../util/abort.js';
import { VirtcbtError } from '../util/errors.js';
import { chainSpec } from './chain.js';

/** util-linux setpriv (Debian: essential): execs the program with a parent-death signal set. */
const SETPRIV = '/usr/bin/setpriv';

export interface ServeOptions {
  /** Directory for the socket and pid file (short path: unix sockets are limited to 107 bytes). */
  runDir: string;
  writable?: boolean;
  /** The image is fresh and sparse (just created): zero ranges need no writes. */
  zeroInitialized?: boolean;
  timeoutMs?: number;
}

export interface ServedImage {
  endpoint: NbdEndpoint;
  pid: number;
  /** Flushes (when writable), disconnects and waits until qemu-nbd has closed the image. */
  close(): Promise<void>;
  /** Kills qemu-nbd without flushing (after a failure). */
  kill(): Promise<void>;
}

/** Whether `pid` runs (a zombie does not: under an init that does not reap, kill(pid, 0) would say yes). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = require_stat(pid);
    return stat === undefined || !/^\d+ \(.*\) [ZX]/s.test(stat);
  } catch {
    return true;
  }
}

function require_stat(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Kills a qemu-nbd left behind by a killed process, if `pid` still is one and serves a file of
 * `dir`: the pid comes from the repository (untrusted), so a qemu-nbd of anything else is left alone.
 */
export async function killStaleQemuNbd(pid: number, dir: string): Promise<void> {
  const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (!cmd.startsWith('qemu-nbd') && !cmd.startsWith(`${SETPRIV}\0--pdeathsig`)) return;
  // Its image is an argument of its own (-f qcow2 PATH) or a filename inside its json: chain spec.
  const inDir = `${dir.replace(/\/+$/, '')}/`;
  if (!cmd.split('\0').some((a) => a.startsWith(inDir) || a.includes(JSON.stringify(inDir).slice(0, -1)))) return;
  process.kill(pid, 'SIGKILL');
  await pollUntil(() => !pidAlive(pid), `qemu-nbd ${pid} to exit`, { timeoutMs: 10_000, intervalMs: 10 });
}

/**
 * Starts qemu-nbd on `image` and connects to it. qemu-nbd runs without --persistent: it exits by
 * itself when our connection closes, also when this process is killed. Given a list of files (top
 * first, see chain.ts), exactly those are opened as the chain, whatever their headers name.
 */
export async function serveImage(chain: string | readonly string[], o: ServeOptions): Promise<ServedImage> {
  const image = typeof chain === 'string' ? chain : chain[0]!;
  const socket = join(o.runDir, `img-${randomBytes(4).toString('hex')}.sock`);
  const args = ['-k', socket, '--cache=writeback', '--aio=threads'];
  if (o.writable) args.push('--discard=unmap');
  else args.push('-r');
  if (typeof chain === 'string') args.push('-f', 'qcow2', chain);
  else args.push(chainSpec(chain));
  // With setpriv's parent-death signal, a qemu-nbd whose virtcbt process is killed before it
  // connected does not wait for a client forever (without it, only the clean-up of the next run
  // would find it, and only if its pid was recorded in time).
  const child = existsSync(SETPRIV)
    ? spawn(SETPRIV, ['--pdeathsig', 'SIGKILL', '--', 'qemu-nbd', ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
    : spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-4000); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('error', (err) => { stderr += err.message; });
  const pid = child.pid ?? -1;
  let endpoint: NbdEndpoint;
  try {
    // The socket file appears at bind(), a moment before listen(): a refused connect is retried.
    let tries = 0;
    endpoint = await pollUntil(async () => {
      if (child.exitCode !== null || child.signalCode !== null || pid < 0) {
        throw new VirtcbtError(`qemu-nbd could not open ${image}: ${stderr.trim() || `exit ${child.exitCode}`}`, {
          hint: /lock/i.test(stderr) ? 'Another process has the image open (a running backup, prune or restore?)' : 'Check that the file is a readable qcow2 image (qemu-img check)',
        });
      }
      if (!existsSync(socket)) return undefined;
      try {
        return await NbdEndpoint.open(`nbd+unix:///?socket=${encodeURIComponent(socket)}`, {
          metaContexts: [CONTEXT_BASE_ALLOCATION],
          zeroInitialized: o.zeroInitialized,
          timeoutMs: o.timeoutMs,
        });
      } catch (err) {
        if (++tries > 20) throw err;
        return undefined;
      }
    }, `qemu-nbd to serve ${image}`, { timeoutMs: o.timeoutMs ?? 60_000, intervalMs: 2 });
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    await rm(socket, { force: true });
    throw err;
  }
  const gone = async () => {
    const t = setTimeout(() => child.kill('SIGKILL'), 60_000);
    await exited;
    clearTimeout(t);
    await rm(socket, { force: true });
  };
  return {
    endpoint,
    pid,
    async close() {
      if (o.writable) await endpoint.flush();
      await endpoint.close();
      await gone();
    },
    async kill() {
      endpoint.client.destroy();
      child.kill('SIGKILL');
      await gone();
    },
  };
}

/**
 * Every `everyBytes` written, asks the target to flush (without waiting): the host writes the
 * data back while the copy goes on, instead of all of it in the final flush. Measured here: a
 * 512 MiB copy into qemu-nbd took 2.36 s with one final flush, 1.76 s flushing every 64 MiB.
 */
export function flushingEndpoint(inner: Endpoint, everyBytes: number): { endpoint: Endpoint; settle(): Promise<void> } {
  let since = 0;
  const pending: Promise<void>[] = [];
  const endpoint: Endpoint = {
    get name() { return inner.name; },
    get size() { return inner.size; },
    get maxRequest() { return inner.maxRequest; },
    get alignment() { return inner.alignment; },
    get zeroInitialized() { return inner.zeroInitialized; },
    read: (buf, offset) => inner.read(buf, offset),
    async write(buf, offset) {
      await inner.write(buf, offset);
      since += buf.length;
      if (since >= everyBytes) {
        since = 0;
        const p = inner.flush();
        p.catch(() => undefined);
        pending.push(p);
      }
    },
    zero: (offset, length) => inner.zero(offset, length),
    flush: () => inner.flush(),
    close: () => inner.close(),
    extents: inner.extents?.bind(inner),
    hasExtents: inner.hasExtents?.bind(inner),
  };
  return { endpoint, settle: async () => { await Promise.all(pending); } };
}

/** Private temp directories for qemu-nbd sockets: `virtcbt-KIND-PID-XXXXXX`, so that the next run can tell whose they are. */
const RUN_DIR = /^virtcbt-(restore|verify)-(\d+)-[A-Za-z0-9]{6}$/;

export async function makeRunDir(kind: 'restore' | 'verify'): Promise<string> {
  return mkdtemp(join(tmpdir(), `virtcbt-${kind}-${process.pid}-`));
}

/**
 * Removes the temp directories of restores and verifies that were killed (their process is gone);
 * a directory of a live process is left alone. Returns what was removed.
 */
export async function sweepStaleRunDirs(base = tmpdir()): Promise<string[]> {
  const removed: string[] = [];
  for (const e of await readdir(base, { withFileTypes: true }).catch(() => [])) {
    const m = RUN_DIR.exec(e.name);
    if (!m || !e.isDirectory() || pidAlive(Number(m[2]))) continue;
    await rm(join(base, e.name), { recursive: true, force: true }).then(() => removed.push(e.name), () => undefined);
  }
  return removed;
}
