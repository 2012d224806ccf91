// Runs qemu-storage-daemon on an image (the stopped-VM case): a file node and a format node, a QMP
// monitor socket, and optionally an NBD export of the format node with chosen dirty bitmaps.
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onCleanup, trackChild } from './cleanup.js';
import { CHILD_PID_FILE, OWNER_FILE } from './sweep.js';

export const QSD_BINARY = 'qemu-storage-daemon';

export interface StorageDaemonOptions {
  image: string;
  format?: 'qcow2' | 'raw';
  /** Format node name (default 'disk'); the file node is NAME-file. */
  nodeName?: string;
  nbd?: {
    /** Default: the node name. */
    exportName?: string;
    /** Dirty bitmaps of the node to expose as qemu:dirty-bitmap:NAME (must be disabled for a read-only export). */
    bitmaps?: string[];
    writable?: boolean;
  };
  /** Also open the image read-only (default false). */
  readOnly?: boolean;
  startTimeoutMs?: number;
}

export interface StorageDaemon {
  dir: string;
  qmpSocket: string;
  nbdSocket?: string;
  /** nbd+unix:///EXPORT?socket=PATH */
  uri?: string;
  exportName?: string;
  nodeName: string;
  pid: number;
  exited: Promise<number | null>;
  /** SIGTERM (the daemon closes images cleanly, writing persistent bitmaps), SIGKILL after 10 s; removes dir. Idempotent. */
  stop(): Promise<void>;
}

export async function startStorageDaemon(opts: StorageDaemonOptions): Promise<StorageDaemon> {
  const dir = await mkdtemp(join(tmpdir(), 'virtcbt-qsd-'));
  await writeFile(join(dir, OWNER_FILE), String(process.pid));
  const nodeName = opts.nodeName ?? 'disk';
  const qmpSocket = join(dir, 'qmp.sock');
  const nbdSocket = opts.nbd ? join(dir, 'nbd.sock') : undefined;
  const exportName = opts.nbd ? opts.nbd.exportName ?? nodeName : undefined;
  const stderrLog = join(dir, 'qsd.stderr');

  let child: ResultPromise | undefined;
  let code: number | null | undefined;
  let untrack = () => {};
  let resolveExit!: (c: number | null) => void;
  const exited = new Promise<number | null>((r) => { resolveExit = r; });
  const waitExit = async (ms: number) => {
    if (!child || code !== undefined) return true;
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([exited.then(() => true), new Promise<boolean>((res) => { t = setTimeout(() => res(false), ms); })]);
    clearTimeout(t);
    return r;
  };
  const signal = (sig: NodeJS.Signals) => {
    if (child?.pid !== undefined && code === undefined) {
      try { process.kill(child.pid, sig); } catch { /* gone */ }
    }
  };
  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      signal('SIGTERM');
      if (!(await waitExit(10_000))) {
        signal('SIGKILL');
        await waitExit(10_000);
      }
      untrack();
      await rm(dir, { recursive: true, force: true });
    })();
    return stopped;
  };
  onCleanup(stop);

  const readOnly = opts.readOnly ?? false;
  const args = [
    '--blockdev', JSON.stringify({ driver: 'file', 'node-name': `${nodeName}-file`, filename: opts.image, 'read-only': readOnly }),
    '--blockdev', JSON.stringify({ driver: opts.format ?? 'qcow2', 'node-name': nodeName, file: `${nodeName}-file`, 'read-only': readOnly }),
    '--chardev', `socket,id=qmp0,path=${qmpSocket},server=on,wait=off`,
    '--monitor', 'chardev=qmp0',
    '--pidfile', join(dir, CHILD_PID_FILE),
  ];
  if (opts.nbd && nbdSocket) {
    args.push('--nbd-server', `addr.type=unix,addr.path=${nbdSocket}`);
    args.push('--export', JSON.stringify({
      type: 'nbd',
      id: 'export0',
      'node-name': nodeName,
      name: exportName,
      writable: opts.nbd.writable ?? false,
      ...(opts.nbd.bitmaps?.length ? { bitmaps: opts.nbd.bitmaps } : {}),
    }));
  }

  child = execa(QSD_BINARY, args, { stdin: 'ignore', stdout: 'ignore', stderr: { file: stderrLog }, reject: false, cleanup: true });
  if (child.pid === undefined) {
    await child;
    throw new Error(`could not start ${QSD_BINARY}: ${await readFile(stderrLog, 'utf8').catch(() => '')}`);
  }
  const pid = child.pid;
  untrack = trackChild(pid);
  void child.then((r) => {
    code = r.exitCode ?? null;
    untrack();
    resolveExit(code);
  });

  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
  for (const sock of [qmpSocket, ...(nbdSocket ? [nbdSocket] : [])]) {
    for (;;) {
      if (await accepts(sock)) break;
      if (code !== undefined) {
        throw new Error(`${QSD_BINARY} exited (code ${code}) before ${sock} was up: ${(await readFile(stderrLog, 'utf8').catch(() => '')).trim()}`);
      }
      if (Date.now() > deadline) throw new Error(`${QSD_BINARY} socket ${sock} did not accept connections within ${opts.startTimeoutMs ?? 30_000} ms`);
      await waitExit(50);
    }
  }

  return {
    dir,
    qmpSocket,
    nbdSocket,
    uri: nbdSocket ? `nbd+unix:///${exportName}?socket=${nbdSocket}` : undefined,
    exportName,
    nodeName,
    pid,
    exited,
    stop,
  };
}

/** True if a unix socket at `path` accepts a connection (closed again at once). */
export function accepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => { s.destroy(); resolve(false); });
  });
}
