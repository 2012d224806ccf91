// A disk image served by qemu-nbd on a private unix socket, as an NbdEndpoint: backups, restores and syncs write
// and read images through the same NBD client and copy engine as everything else; qemu-nbd does the format's work
// (qcow2 allocation, backing chains, zero clusters, discards).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CONTEXT_BASE_ALLOCATION } from '../nbd/index.js';
import { abortReason, pollUntil } from '../util/abort.js';
import { VirtcbtError } from '../util/errors.js';
import { isProgram, programOf, withParentDeathSignal } from '../util/setpriv.js';
import { NbdEndpoint } from './nbd-endpoint.js';


/**
 * glibc's malloc for qemu-nbd: every request's buffer (256 KiB and up) from the heap, reused,
 * instead of a fresh mmap per request whose every page faults when the request's data is received
 * into it, and is unmapped after. Writing 2 GiB into a qcow2 through qemu-nbd took 10.5-12.7 s with
 * 11-14 s of system time (page faults in recvmsg) and 4.4-5.3 s with these (see README, Sync).
 */
export const QEMU_NBD_MALLOC = {
  MALLOC_MMAP_THRESHOLD_: String(64 * 1024 * 1024),
  MALLOC_TRIM_THRESHOLD_: String(256 * 1024 * 1024),
  MALLOC_ARENA_MAX: '1',
};

/** After an abort (or a close that hangs), how long qemu-nbd gets to close the image before SIGKILL. */
const EXIT_GRACE_MS = 5_000;

export interface ServeOptions {
  /** Directory for the socket (short path: unix sockets are limited to 107 bytes). */
  runDir: string;
  writable?: boolean;
  /** Format of a plain path (default qcow2); a `json:` spec names its own drivers. */
  format?: 'qcow2' | 'raw';
  /** The image is fresh and sparse (just created): zero ranges need no writes. */
  zeroInitialized?: boolean;
  /**
   * Writable only: zeroes written are also looked for in data writes and unmapped
   * (--detect-zeroes=unmap): a synced copy frees what became zero. Costs a scan of every write.
   */
  detectZeroes?: boolean;
  timeoutMs?: number;
  /** The job's signal: on abort, requests in flight fail with its reason and qemu-nbd is stopped. */
  signal?: AbortSignal;
}

export interface ServedImage {
  endpoint: NbdEndpoint;
  pid: number;
  /** Flushes (when writable), disconnects and waits until qemu-nbd has closed the image (after an abort: without flushing). */
  close(): Promise<void>;
  /** Kills qemu-nbd without flushing (after a failure). */
  kill(): Promise<void>;
}

/**
 * Starts qemu-nbd on `image` (a path, or a `json:` block spec that names exactly the files to
 * open) and connects to it. qemu-nbd runs without --persistent: it exits by itself when our
 * connection closes, also when this process is killed. Writable images get --discard=unmap, so
 * that WRITE_ZEROES and TRIM free space in the file.
 */
export async function serveImage(image: string, o: ServeOptions): Promise<ServedImage> {
  const signal = o.signal;
  if (signal?.aborted) throw abortReason(signal, `serving ${image}`);
  const socket = join(o.runDir, `img-${randomBytes(4).toString('hex')}.sock`);
  const args = ['-k', socket, '--cache=writeback', '--aio=threads'];
  if (o.writable) args.push('--discard=unmap', ...(o.detectZeroes ? ['--detect-zeroes=unmap'] : []));
  else args.push('-r');
  if (image.startsWith('json:')) args.push(image);
  else args.push('-f', o.format ?? 'qcow2', image);
  // A spec is named by its top image in messages.
  const what = image.startsWith('json:') ? specFiles(image)[0] ?? 'the image' : image;
  // With setpriv's parent-death signal, a qemu-nbd whose virtcbt process is killed before it
  // connected does not wait for a client forever (without it, only the clean-up of the next run
  // would find it, and only if its pid was recorded in time).
  const opts = { stdio: ['ignore', 'ignore', 'pipe'] as ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...QEMU_NBD_MALLOC } };
  const child = spawn(...withParentDeathSignal('qemu-nbd', args, 'SIGKILL'), opts);
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-4000); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('error', (err) => { stderr += err.message; });
  const pid = child.pid ?? -1;
  // An abort stops qemu-nbd (SIGTERM: it closes the image cleanly) while the client fails its
  // requests with the reason; SIGKILL follows if it does not go.
  const onAbort = () => {
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), EXIT_GRACE_MS);
    void exited.then(() => clearTimeout(t));
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  void exited.then(() => signal?.removeEventListener('abort', onAbort));
  let endpoint: NbdEndpoint;
  try {
    // The socket file appears at bind(), a moment before listen(): a refused connect is retried.
    let tries = 0;
    endpoint = await pollUntil(async () => {
      if (child.exitCode !== null || child.signalCode !== null || pid < 0) {
        if (signal?.aborted) throw abortReason(signal, `serving ${what}`);
        throw new VirtcbtError(`qemu-nbd could not open ${what}: ${stderr.trim() || `exit ${child.exitCode}`}`, {
          hint: /lock/i.test(stderr) ? 'Another process has the image open (a running backup, prune, restore or sync?)' : `Check that the file is a readable ${o.format ?? 'qcow2'} image (qemu-img check)`,
        });
      }
      if (!existsSync(socket)) return undefined;
      try {
        return await NbdEndpoint.open(`nbd+unix:///?socket=${encodeURIComponent(socket)}`, {
          metaContexts: [CONTEXT_BASE_ALLOCATION],
          zeroInitialized: o.zeroInitialized,
          timeoutMs: o.timeoutMs,
          signal,
        });
      } catch (err) {
        if (signal?.aborted || ++tries > 20) throw err;
        return undefined;
      }
    }, `qemu-nbd to serve ${what}`, { timeoutMs: o.timeoutMs ?? 60_000, intervalMs: 2, signal });
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    await rm(socket, { force: true });
    throw err;
  }
  const gone = async (ms: number) => {
    const t = setTimeout(() => child.kill('SIGKILL'), ms);
    await exited;
    clearTimeout(t);
    await rm(socket, { force: true });
  };
  return {
    endpoint,
    pid,
    async close() {
      if (signal?.aborted) {
        endpoint.client.destroy(abortReason(signal, `serving ${what}`));
        await gone(EXIT_GRACE_MS);
        return;
      }
      if (o.writable) await endpoint.flush();
      await endpoint.close();
      await gone(60_000);
    },
    async kill() {
      endpoint.client.destroy();
      child.kill('SIGKILL');
      await gone(60_000);
    },
  };
}

/** Every `filename` in a `json:` block spec (the top image first). */
function specFiles(spec: string): string[] {
  const out: string[] = [];
  const collect = (node: unknown): void => {
    if (node === null || typeof node !== 'object') return;
    for (const [k, v] of Object.entries(node)) {
      if (k === 'filename') out.push(typeof v === 'string' ? v : '');
      else collect(v);
    }
  };
  try {
    collect(JSON.parse(spec.slice('json:'.length)));
  } catch {
    return [];
  }
  return out;
}

/**
 * The image files process `pid` serves when it is a qemu-nbd started as serveImage starts one
 * (or the setpriv about to exec it); undefined when it is not. Anyone may have named the pid
 * (e.g. a forged marker): what to do with the answer is the caller's rule.
 */
export async function qemuNbdFiles(pid: number): Promise<string[] | undefined> {
  const [program, ...args] = await programOf(pid);
  return isProgram(program, 'qemu-nbd') ? servedFiles(args) : undefined;
}

/** The image files a qemu-nbd command line (after the program name) opens, as serveImage writes it. */
function servedFiles(args: readonly string[]): string[] {
  // serveImage's options, each with its value in the next argument.
  const withValue = new Set(['-k', '--socket', '-f', '--format', '--cache', '--aio', '--discard', '--detect-zeroes', '-b', '--bind', '-p', '--port', '-x', '--export-name']);
  let image: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (withValue.has(a)) i++;
    else if (a.startsWith('-')) continue;
    else if (image !== undefined) return []; // more than one image argument: not one of ours
    else image = a;
  }
  if (image === undefined) return [];
  return image.startsWith('json:') ? specFiles(image) : [image];
}
