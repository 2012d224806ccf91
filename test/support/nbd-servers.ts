// Test helpers: real qemu-nbd and qemu-storage-daemon NBD servers on unix sockets, images, and nbdinfo.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

export interface TempDir {
  path: string;
  remove(): void;
}

export function tempDir(prefix: string): TempDir {
  const path = mkdtempSync(join(tmpdir(), `virtcbt-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export interface RunningServer {
  uri: string;
  socket: string;
  pid: number;
  stop(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopPid(pid: number): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  // The daemon is not our child (it forked itself), so poll for it with a deadline.
  const deadline = Date.now() + 10_000;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}

export interface QemuNbdOptions {
  format?: 'qcow2' | 'raw';
  readOnly?: boolean;
  bitmaps?: string[];
  allocationDepth?: boolean;
  exportName?: string;
  /** Clients at once (qemu-nbd -e); >1 also makes qemu-nbd offer multi-conn. */
  shared?: number;
  /** qemu --object arguments and the tls-creds id. */
  objects?: string[];
  tlsCreds?: string;
  tlsAuthz?: string;
  /** Listen on TCP instead of a unix socket. */
  tcp?: { host: string; port: number };
  extra?: string[];
}

/** Starts qemu-nbd with --fork: it returns once the socket listens, so no waiting is needed. */
export async function startQemuNbd(image: string, dir: string, o: QemuNbdOptions = {}): Promise<RunningServer> {
  const socket = join(dir, `nbd-${Math.random().toString(36).slice(2, 8)}.sock`);
  const pidFile = socket + '.pid';
  const where = o.tcp ? ['-b', o.tcp.host, '-p', String(o.tcp.port)] : ['-k', socket];
  const args = ['--fork', '--pid-file', pidFile, ...where, '-f', o.format ?? 'qcow2', '-t'];
  if (o.readOnly) args.push('-r');
  for (const b of o.bitmaps ?? []) args.push('-B', b);
  if (o.allocationDepth) args.push('-A');
  if (o.exportName !== undefined) args.push('-x', o.exportName);
  if (o.shared) args.push('-e', String(o.shared));
  for (const ob of o.objects ?? []) args.push('--object', ob);
  if (o.tlsCreds) args.push('--tls-creds', o.tlsCreds);
  if (o.tlsAuthz) args.push('--tls-authz', o.tlsAuthz);
  args.push(...(o.extra ?? []), image);
  await execa('qemu-nbd', args);
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  const name = encodeURIComponent(o.exportName ?? '');
  const s = o.tlsCreds ? 'nbds' : 'nbd';
  return {
    uri: o.tcp ? `${s}://${o.tcp.host}:${o.tcp.port}/${name}` : `${s}+unix:///${name}?socket=${socket}`,
    socket,
    pid,
    stop: () => stopPid(pid),
  };
}

export interface StorageDaemonOptions {
  bitmaps?: string[];
  writable?: boolean;
  exportName?: string;
}

/** Starts qemu-storage-daemon exporting a qcow2 image over NBD (--daemonize: returns once ready). */
export async function startStorageDaemon(image: string, dir: string, o: StorageDaemonOptions = {}): Promise<RunningServer & { qmpSocket: string }> {
  const tag = Math.random().toString(36).slice(2, 8);
  const socket = join(dir, `qsd-${tag}.sock`);
  const qmpSocket = join(dir, `qsd-${tag}.qmp`);
  const pidFile = socket + '.pid';
  const name = o.exportName ?? 'disk';
  // A read-only export opens the image read-only, so it shares it with other readers.
  const ro = o.writable ? '' : ',read-only=on';
  const exp = [`type=nbd,id=exp0,node-name=fmt0,name=${name},writable=${o.writable ? 'on' : 'off'},allocation-depth=on`,
    ...(o.bitmaps ?? []).map((b, i) => `bitmaps.${i}=${b}`)].join(',');
  await execa('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=file0,filename=${image}${ro}`,
    '--blockdev', `driver=qcow2,node-name=fmt0,file=file0${ro}`,
    '--nbd-server', `addr.type=unix,addr.path=${socket}`,
    '--export', exp,
    '--chardev', `socket,id=qmp0,path=${qmpSocket},server=on,wait=off`,
    '--monitor', 'chardev=qmp0',
    '--daemonize', '--pidfile', pidFile,
  ]);
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  return { uri: `nbd+unix:///${name}?socket=${socket}`, socket, qmpSocket, pid, stop: () => stopPid(pid) };
}

export async function qemuIo(image: string, commands: string[], format = 'qcow2'): Promise<void> {
  await execa('qemu-io', ['-f', format, ...commands.flatMap((c) => ['-c', c]), image]);
}

export async function nbdinfoMap(uri: string, context?: string): Promise<string> {
  const r = await execa('nbdinfo', [context ? `--map=${context}` : '--map', uri]);
  return r.stdout;
}

/** Deterministic pseudo-random numbers for scattered test writes. */
export function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s;
  };
}
