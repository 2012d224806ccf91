// qemu-storage-daemon for stopped domains: opens a domain's qcow2 images with the same block
// layer QEMU uses, so folds, backups and scans run through the same QMP and NBD code as for a
// running VM. It must quit through QMP: that is what writes persistent bitmaps back cleanly.
import { execa } from 'execa';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { QmpClient } from '../qmp/index.js';
import { abortReason, pollUntil } from '../util/abort.js';
import { VirtcbtError } from '../util/errors.js';
import { isProgram, programOf, withParentDeathSignal } from '../util/setpriv.js';

const QSD = 'qemu-storage-daemon';

/** A storage daemon's private directory in the run directory: mkdtemp's name (six characters after the prefix). */
const QSD_DIR_PREFIX = 'qsd-';
const QSD_DIR = new RegExp(`^${QSD_DIR_PREFIX}[A-Za-z0-9]{6}$`);

export interface QsdImage {
  /** Names the node: the format node is called `NODE_PREFIX + target`. */
  target: string;
  image: string;
  format?: 'qcow2' | 'raw';
  readOnly?: boolean;
}

export interface QsdSession {
  qmp: QmpClient;
  /** Socket path for `nbd-server-start` in this daemon. */
  nbdSocket: string;
  nodes: { target: string; node: string }[];
  pid: number;
  /** The job's signal (given to withStorageDaemon): pass it on to NBD clients of this daemon. */
  signal?: AbortSignal;
}

export interface QsdOptions {
  /**
   * The job's signal: on abort, the daemon is told to quit at once (it still writes its bitmaps
   * back; SIGKILL only after QUIT_TIMEOUT_MS), and withStorageDaemon rejects with the reason once it
   * has exited, without waiting for `fn`, whose requests to the daemon fail as it goes.
   */
  signal?: AbortSignal;
  /**
   * A file that holds the daemon's pid while it runs: the libvirt hook ends the daemon through it
   * when the domain is about to start (it must never wait for a job on the stopped domain's images).
   */
  holderFile?: string;
  /**
   * Run the job once more, on a fresh daemon, when the daemon crashed under it (SIGSEGV, SIGABRT,
   * ...; not SIGTERM or SIGKILL, which someone sent: a domain start ending it through the holder
   * file). Default true: every job here fails clean (nothing moves, nothing half-written is kept),
   * so a second run is safe, and QEMU 7.2's storage daemon was seen to crash now and then ~0.1 s
   * into a job on images that the next run read without trouble.
   */
  retryOnCrash?: boolean;
  /** Told before the second run (for the daemon's log). */
  onCrash?: (err: StorageDaemonEndedError) => void;
}

/** The daemon ended while the job ran: how (exit status or signal) and what it printed. */
export class StorageDaemonEndedError extends VirtcbtError {
  constructor(message: string, readonly how: { signal?: string; exitCode?: number }, ctx: ConstructorParameters<typeof VirtcbtError>[1]) {
    super(message, ctx);
  }

  /** Ended by a fault of its own, not by a signal someone sent. */
  get crashed(): boolean {
    return this.how.signal !== undefined && CRASH_SIGNALS.has(this.how.signal);
  }
}

const CRASH_SIGNALS = new Set(['SIGSEGV', 'SIGBUS', 'SIGABRT', 'SIGILL', 'SIGFPE', 'SIGTRAP', 'SIGSYS']);

export const NODE_PREFIX = 'vcbt-';

/** Longest a storage daemon may take to write its bitmaps back and exit. */
const QUIT_TIMEOUT_MS = 30_000;
/** How long `quit` may take to be answered before the daemon gets SIGTERM. */
const QUIT_ANSWER_MS = 5_000;

export async function withStorageDaemon<T>(
  runDir: string, domain: string, images: QsdImage[], fn: (s: QsdSession) => Promise<T>, opts: QsdOptions = {},
): Promise<T> {
  try {
    return await runStorageDaemon(runDir, domain, images, fn, opts);
  } catch (err) {
    if (!(err instanceof StorageDaemonEndedError) || !err.crashed || opts.retryOnCrash === false || opts.signal?.aborted) throw err;
    opts.onCrash?.(err);
    return await runStorageDaemon(runDir, domain, images, fn, opts);
  }
}

async function runStorageDaemon<T>(
  runDir: string, domain: string, images: QsdImage[], fn: (s: QsdSession) => Promise<T>, opts: QsdOptions,
): Promise<T> {
  const { signal } = opts;
  const what = `qemu-storage-daemon for ${domain}`;
  if (signal?.aborted) throw abortReason(signal, what);
  const dir = await mkdtemp(join(runDir, QSD_DIR_PREFIX));
  const qmpSocket = join(dir, 'qmp.sock');
  const args: string[] = [];
  const nodes = images.map((img) => {
    const node = `${NODE_PREFIX}${img.target}`;
    const ro = img.readOnly ? ',read-only=on' : '';
    args.push('--blockdev', `driver=file,node-name=${node}-file,filename=${img.image.replace(/,/g, ',,')}${ro}`);
    args.push('--blockdev', `driver=${img.format ?? 'qcow2'},node-name=${node},file=${node}-file${ro}`);
    return { target: img.target, node };
  });
  args.push('--chardev', `socket,id=m,path=${qmpSocket},server=on,wait=off`, '--monitor', 'chardev=m');
  // SIGTERM when virtcbtd dies: the daemon quits as through QMP (bitmaps written back) instead of
  // holding the images' locks until the domain's next start (every job on them would fail meanwhile).
  const child = execa(...withParentDeathSignal(QSD, args, 'SIGTERM'), { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', reject: false, buffer: false });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-4000); });
  // How it ended, for an error that names it (a daemon that dies mid-job shows only as a closed QMP socket).
  const exited = child.then((r) => (r.signal ? { signal: r.signal } : { exitCode: r.exitCode }));
  const holder = opts.holderFile;
  if (holder && child.pid) {
    await mkdir(dirname(holder), { recursive: true, mode: 0o755 }).catch(() => undefined);
    await writeFile(holder, `${child.pid}\n`).catch(() => undefined);
  }
  let qmp: QmpClient | undefined;
  // Quit through QMP (bitmaps written back), SIGTERM when there is no monitor, SIGKILL at the deadline.
  let stopping: Promise<void> | undefined;
  const stop = () => stopping ??= (async () => {
    if (qmp?.isOpen) {
      await qmp.execute('quit', undefined, { timeoutMs: QUIT_ANSWER_MS }).catch(() => { child.kill('SIGTERM'); });
      await qmp.close().catch(() => undefined);
    }
    const t = setTimeout(() => child.kill('SIGKILL'), QUIT_TIMEOUT_MS);
    if (child.exitCode === null && !qmp) child.kill('SIGTERM');
    await exited;
    clearTimeout(t);
  })();
  let onAbort: (() => void) | undefined;
  const aborted = signal && new Promise<never>((_, reject) => {
    onAbort = () => {
      reject(abortReason(signal, what));
      void stop();
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
  aborted?.catch(() => undefined);
  try {
    let dead = false;
    void exited.then(() => { dead = true; });
    qmp = await pollUntil(async () => {
      if (dead) {
        const locked = /lock|Failed to get .* lock/i.test(stderr);
        throw new VirtcbtError(`qemu-storage-daemon could not open the images: ${stderr.trim() || 'it exited'}`, {
          domain,
          hint: locked ? 'The images are in use (is the domain running, or another tool holding them?)' : 'Check the image paths with `virsh domblklist`',
        });
      }
      return QmpClient.connect(qmpSocket, { domain, timeoutMs: 5_000, signal }).catch(() => undefined);
    }, 'starting qemu-storage-daemon', { timeoutMs: 30_000, intervalMs: 20, signal });
    const result = fn({ qmp, nbdSocket: join(dir, 'nbd.sock'), nodes, pid: child.pid!, signal });
    if (!aborted) return await result;
    result.catch(() => undefined);
    return await Promise.race([result, aborted]);
  } catch (err) {
    // The job failed because the daemon itself went away (its QMP or NBD socket closed): say so,
    // with how it ended and what it printed, rather than only the closed socket.
    if (qmp && !stopping) {
      const how = await Promise.race([exited, new Promise<undefined>((r) => { setTimeout(() => r(undefined), 250).unref(); })]);
      if (how !== undefined) {
        const said = how.signal ? `killed by ${how.signal}` : `exit status ${how.exitCode}`;
        throw new StorageDaemonEndedError(`qemu-storage-daemon on the images of domain ${domain} ended during the job (${said}): ${stderr.trim() || 'it printed nothing'}`, how, {
          domain, cause: err, hint: 'Something else stopped it (a domain start ends it through its holder file), or it failed: its message is above',
        });
      }
    }
    throw err;
  } finally {
    if (onAbort) signal!.removeEventListener('abort', onAbort);
    await stop();
    await rm(dir, { recursive: true, force: true });
    // Only our own pid: a later job's daemon may have written its own meanwhile.
    if (holder && (await readFile(holder, 'utf8').catch(() => '')).trim() === String(child.pid)) await rm(holder, { force: true });
  }
}

/**
 * At daemon start: storage daemons an earlier virtcbtd left holding stopped domains' images (one
 * started before they had a parent-death signal, or one still writing its bitmaps back) are told
 * to quit (SIGTERM: bitmaps written back) and waited for, SIGKILL at the deadline, so that the
 * new virtcbtd's jobs on those images do not fail on their locks. A holder file names a pid
 * anyone with access could write: only a qemu-storage-daemon with virtcbt's node names is
 * signalled. Returns the domains whose daemon was ended.
 */
export async function endStaleStorageDaemons(holderDir: string, o: { timeoutMs?: number } = {}): Promise<string[]> {
  const ended: string[] = [];
  for (const domain of await readdir(holderDir).catch(() => [] as string[])) {
    const file = join(holderDir, domain);
    const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    const [program, ...args] = Number.isSafeInteger(pid) && pid > 1 ? await programOf(pid) : [];
    if (isProgram(program, QSD) && args.some((a) => a.includes(`node-name=${NODE_PREFIX}`))) {
      try {
        process.kill(pid, 'SIGTERM');
        await pollUntil(async () => (await exitedOrZombie(pid) ? true : undefined), `the stale storage daemon ${pid} of ${domain} to quit`, { timeoutMs: o.timeoutMs ?? QUIT_TIMEOUT_MS, intervalMs: 20 })
          .catch(() => { process.kill(pid, 'SIGKILL'); });
        ended.push(domain);
      } catch { /* gone meanwhile */ }
    }
    await rm(file, { force: true }).catch(() => undefined);
  }
  return ended;
}

/** Whether `pid` is gone, or a zombie nobody reaped yet (its parent, the killed virtcbtd, is gone). */
async function exitedOrZombie(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return stat === '' || /^\d+ \(.*\) Z /s.test(stat);
}

/**
 * At daemon start, before it starts any storage daemon: the private directories (QMP and NBD
 * sockets) of those an earlier virtcbtd started are removed; a killed virtcbtd left them behind.
 */
export async function removeStaleStorageDaemonDirs(runDir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(runDir, { withFileTypes: true }).catch(() => [])) {
    if (!e.isDirectory() || !QSD_DIR.test(e.name)) continue;
    await rm(join(runDir, e.name), { recursive: true, force: true }).then(() => { n++; }, () => undefined);
  }
  return n;
}
