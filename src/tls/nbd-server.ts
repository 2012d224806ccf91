// A qemu-storage-daemon serving one block node over NBD on TCP with mutual TLS and an identity
// check: what an export for another host (src/snapshot/remote-export.ts, read-only) and the
// receiving side of a sync (src/sync/receiver.ts, writable) both start.
//
// QEMU's TLS does the checks: `tls-creds-x509` with verify-peer=on (a client must present a
// certificate from the CA in the credentials directory) and `tls-authz` with an `authz-list` of
// exact distinguished names, deny by default (only the named identities get in). nbdkit is not
// used: nbdkit 1.32 (Debian 12) checks the client's certificate against the CA but cannot restrict
// by its identity (no plugin or filter sees the peer certificate), so any certificate the CA ever
// signed would get in. qemu-nbd has the same TLS, but takes an inherited listening socket only by
// systemd socket activation (LISTEN_PID must be its own pid, unknown before it is spawned);
// qemu-storage-daemon takes one as `addr.type=fd`, which lets this process bind the address itself:
// port 0 gets a free port without a race, and a bad address fails here, before anything starts.
//
// The daemon runs under setpriv with a parent-death signal, so it never outlives its owner, and
// writes a pid file (the caller names it: that is how a stale one is recognised after a kill -9).
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, rm, stat } from 'node:fs/promises';
import { createServer, isIP, type Server } from 'node:net';
import { join } from 'node:path';
import { abortReason, pollUntil } from '../util/abort.js';
import { UsageError, VirtcbtError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { withParentDeathSignal } from '../util/setpriv.js';
import { SERVER_FILES } from './pki.js';

export const QSD = 'qemu-storage-daemon';
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Where the caller's settings come from, for hints: a config key or a command-line option. */
export interface TlsServerSettingNames {
  bind: string;
  port: string;
  tlsDir: string;
  deadline?: string;
  runDir?: string;
}

export interface TlsNbdServerOptions {
  /** What is served, for messages: "an export for another host", "sync target /srv/vm1.qcow2". */
  what: string;
  /** QEMU `--blockdev` definitions (JSON objects); the last one's node is exported. */
  blockdevs: Record<string, unknown>[];
  /** Node to export (default: the node-name of the last blockdev). */
  node?: string;
  writable: boolean;
  exportName: string;
  /** Server credentials as QEMU's tls-creds-x509 reads them: ca-cert.pem (the CA clients must come from), server-cert.pem, server-key.pem. */
  tlsDir: string;
  /**
   * Client identities let in: exact subject DNs in the form QEMU's tls-authz compares, the
   * attributes in the certificate's order ("CN=scanner", "O=Example,CN=scanner-1"; certificateSubject
   * gives it). Any other certificate is refused at the handshake.
   */
  identities: readonly string[];
  /** The address the other host reaches; port 0 or absent: a free port, chosen when binding. */
  bind: { host: string; port?: number };
  /** The daemon's pid file: qemu-storage-daemon writes it once it serves. */
  pidFile: string;
  /**
   * What the kernel sends the daemon when its owner dies. SIGTERM makes qemu-storage-daemon quit as
   * on QMP `quit` (exports closed, nodes drained and closed): a writable image is left consistent.
   */
  parentDeathSignal: 'SIGKILL' | 'SIGTERM';
  /** Torn down after this long (default: never). */
  deadlineMs?: number;
  signal?: AbortSignal;
  /** How long qemu-storage-daemon may take to come up (default 30 s). */
  startTimeoutMs?: number;
  /** How long it may take to quit after SIGTERM before it is killed (default 10 s). */
  stopTimeoutMs?: number;
  /** Gets the daemon's messages once it serves (refused clients, lost connections), as warnings prefixed by `logPrefix`. */
  log?: Logger;
  /** Default: `what`. */
  logPrefix?: string;
  /** For error messages and log fields. */
  domain?: string;
  disk?: string;
  settings: TlsServerSettingNames;
  /** Turns the daemon's stderr, when it fails to start, into the error to throw (default: a generic one). */
  startError?: (stderr: string) => VirtcbtError | undefined;
}

/** Why a server ended. */
export type TlsNbdServerEnd = 'closed' | 'deadline' | 'aborted' | 'exited';

export interface TlsNbdServer extends AsyncDisposable {
  /** nbds://HOST:PORT/NAME: what the other host connects to (with its own ?tls-certificates=DIR). */
  readonly uri: string;
  readonly exportName: string;
  readonly pid: number;
  readonly host: string;
  readonly port: number;
  /** Resolves (never rejects) once the daemon is gone and its port closed, saying why. */
  readonly closed: Promise<TlsNbdServerEnd>;
  close(): Promise<void>;
}

function where(o: Pick<TlsNbdServerOptions, 'domain' | 'disk'>) {
  return { domain: o.domain, disk: o.disk };
}

/** Checks what a caller can get wrong before anything is started (bad input changes nothing). */
export async function checkTlsServerOptions(o: Pick<TlsNbdServerOptions, 'what' | 'tlsDir' | 'identities' | 'bind' | 'deadlineMs' | 'domain' | 'disk' | 'settings'>): Promise<void> {
  const s = o.settings;
  if (o.identities.length === 0) {
    throw new UsageError(`${o.what} needs at least one allowed client identity`, {
      ...where(o), hint: 'Name the client certificate\'s subject, e.g. "CN=scanner" (`virtcbt certs client` prints it)',
    });
  }
  for (const id of o.identities) {
    if (id.trim() === '' || /[\0-\x1f]/.test(id) || !/=/.test(id)) {
      throw new UsageError(`client identity ${JSON.stringify(id)} is not a distinguished name`, { ...where(o), hint: 'Give it as the certificate shows its subject, e.g. "CN=scanner"' });
    }
  }
  if (o.bind.host.trim() === '') {
    throw new UsageError(`no address to bind ${o.what} to`, { ...where(o), hint: `Set ${s.bind}` });
  }
  // A wildcard address would serve on every network of this host, and the URI would name no host.
  if (isIP(o.bind.host) !== 0 && ['0.0.0.0', '::'].includes(o.bind.host.replace(/^::ffff:/, '').replace(/^0:0:0:0:0:0:0:0$/, '::'))) {
    throw new UsageError(`${o.what} must not listen on every address (${o.bind.host})`, {
      ...where(o), hint: `Set ${s.bind} to this host's address on the network the other host uses`,
    });
  }
  const port = o.bind.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UsageError(`port ${port} is not a TCP port`, { ...where(o), hint: `Give 1-65535, or 0 for any free port (${s.port})` });
  }
  // Node fires a timer of more than 2^31-1 ms at once: a long deadline would end the server at its start.
  if (o.deadlineMs !== undefined && !(o.deadlineMs > 0 && o.deadlineMs <= MAX_TIMER_MS)) {
    throw new UsageError(`deadline ${o.deadlineMs} ms is not between 1 ms and ${MAX_TIMER_MS} ms (24 days)`, {
      ...where(o), hint: `Give a shorter deadline${s.deadline ? ` (${s.deadline})` : ''}`,
    });
  }
  for (const f of Object.values(SERVER_FILES)) {
    const path = join(o.tlsDir, f);
    if (!(await stat(path).then((st) => st.isFile(), () => false))) {
      throw new UsageError(`TLS credentials for ${o.what} are incomplete: ${path} is missing`, {
        ...where(o), hint: `Put ca-cert.pem (the CA of the clients), server-cert.pem and server-key.pem in ${o.tlsDir} (${s.tlsDir}; \`virtcbt certs server\` makes them)`,
      });
    }
  }
}

/** Binds the address here, so that a wrong address or a port in use is reported before qemu-storage-daemon starts. */
function listen(o: TlsNbdServerOptions): Promise<Server> {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const at = `${o.bind.host}:${o.bind.port ?? 0}`;
      reject(new VirtcbtError(`cannot listen on ${at} for ${o.what}: ${err.code ?? err.message}`, {
        ...where(o), cause: err,
        hint: err.code === 'EADDRINUSE' ? `Choose another port (${o.settings.port}), or 0 for any free port`
          : `Set ${o.settings.bind} to an address of this host`,
      }));
    });
    server.listen({ host: o.bind.host, port: o.bind.port ?? 0, exclusive: true }, () => resolve(server));
  });
}

export function uriHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** The qemu-storage-daemon arguments: JSON for every option, so DNs with commas and paths need no escaping. */
function daemonArgs(o: TlsNbdServerOptions): string[] {
  const node = o.node ?? String(o.blockdevs.at(-1)?.['node-name']);
  return [
    '--object', JSON.stringify({ 'qom-type': 'tls-creds-x509', id: 'tls0', dir: o.tlsDir, endpoint: 'server', 'verify-peer': true }),
    '--object', JSON.stringify({
      'qom-type': 'authz-list', id: 'authz0', policy: 'deny',
      rules: o.identities.map((id) => ({ match: id, policy: 'allow', format: 'exact' })),
    }),
    ...o.blockdevs.flatMap((b) => ['--blockdev', JSON.stringify(b)]),
    // fd 3 is the socket listen() bound (stdio slot 3 below).
    '--nbd-server', JSON.stringify({ addr: { type: 'fd', str: '3' }, 'tls-creds': 'tls0', 'tls-authz': 'authz0' }),
    '--export', JSON.stringify({ type: 'nbd', id: 'export0', 'node-name': node, name: o.exportName, writable: o.writable }),
    '--pidfile', o.pidFile,
  ];
}

/**
 * Starts the daemon. Resolves once it accepts connections; it is torn down by close(), disposal,
 * the deadline or the signal, whichever comes first (SIGTERM: qemu-storage-daemon then closes its
 * exports and images as on QMP `quit`; SIGKILL only if it has not gone after stopTimeoutMs).
 */
export async function startTlsNbdServer(o: TlsNbdServerOptions): Promise<TlsNbdServer> {
  if (o.signal?.aborted) throw abortReason(o.signal, `starting ${o.what}`);
  const server = await listen(o);
  const { port } = server.address() as { port: number };
  // libuv keeps the listening socket's descriptor here; Node offers no public way to hand a bound
  // socket to a child, and stdio slots take descriptors.
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  // TCP_NODELAY on the listening socket: Linux copies it to every connection accepted from it.
  (server as unknown as { _handle?: { setNoDelay?: (on: boolean) => void } })._handle?.setNoDelay?.(true);
  if (typeof fd !== 'number' || fd < 0) {
    server.close();
    throw new VirtcbtError('cannot hand the listening socket to qemu-storage-daemon (no descriptor)', { ...where(o), hint: 'Report this: it needs Node on Linux' });
  }
  let child: ChildProcess;
  try {
    const args = daemonArgs(o);
    // Without a parent-death signal, the daemon of a killed owner would serve until someone found it.
    child = spawn(...withParentDeathSignal(QSD, args, o.parentDeathSignal), { stdio: ['ignore', 'ignore', 'pipe', fd] });
  } finally {
    // Closed in the same tick: this process never accepts a connection on it; the child's copy serves.
    server.close();
  }
  let stderr = '';
  let serving = false;
  let partial = '';
  child.stderr!.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-4000);
    if (!serving || !o.log) return;
    const lines = (partial + c.toString()).split('\n');
    partial = lines.pop()!.slice(-4000);
    for (const line of lines) {
      if (line.trim() !== '') o.log.warn(`${o.logPrefix ?? o.what}: ${line.replace(/^qemu-storage-daemon: /, '')}`, { ...where(o), export: o.exportName });
    }
  });
  child.once('error', (err) => { stderr += err.message; });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const pid = child.pid ?? -1;

  const dead = () => child.exitCode !== null || child.signalCode !== null || pid < 0;
  try {
    // qemu-storage-daemon writes its pid file once its exports and NBD server exist, before it
    // accepts connections (documented in qemu-storage-daemon(1)): the file's pid says "ready".
    await pollUntil(async () => {
      if (dead()) {
        await exited;
        throw o.startError?.(stderr) ?? new VirtcbtError(`qemu-storage-daemon could not serve ${o.what}: ${stderr.trim() || `exit ${child.exitCode ?? child.signalCode}`}`, {
          ...where(o), hint: /tls|cert|key|pem/i.test(stderr) ? `Check the credentials in ${o.tlsDir} (${o.settings.tlsDir})` : 'Check what it serves still exists',
        });
      }
      return (await readFile(o.pidFile, 'utf8').catch(() => '')).trim() === String(pid);
    }, `qemu-storage-daemon to serve ${o.what} on ${o.bind.host}:${port}`, { timeoutMs: o.startTimeoutMs ?? 30_000, signal: o.signal, intervalMs: 5 });
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    await rm(o.pidFile, { force: true });
    throw err;
  }

  serving = true;
  let ending: TlsNbdServerEnd | undefined;
  let resolveClosed!: (end: TlsNbdServerEnd) => void;
  const closed = new Promise<TlsNbdServerEnd>((resolve) => { resolveClosed = resolve; });
  let deadline: NodeJS.Timeout | undefined;
  const onAbort = () => { void end('aborted'); };
  const end = async (why: TlsNbdServerEnd): Promise<void> => {
    if (ending === undefined) {
      ending = why;
      if (deadline) clearTimeout(deadline);
      o.signal?.removeEventListener('abort', onAbort);
      if (!dead()) child.kill('SIGTERM');
      // qemu-storage-daemon quits on SIGTERM within milliseconds (after flushing a writable image); a hung one is killed.
      const hard = setTimeout(() => child.kill('SIGKILL'), o.stopTimeoutMs ?? 10_000);
      await exited;
      clearTimeout(hard);
      await rm(o.pidFile, { force: true });
      resolveClosed(why);
    }
    await closed;
  };
  void exited.then(() => end('exited'));
  if (o.deadlineMs !== undefined) {
    // unref'd: this timer alone keeps no process alive; a daemon whose owner exits dies with it (parent-death signal).
    deadline = setTimeout(() => { void end('deadline'); }, o.deadlineMs);
    deadline.unref();
  }
  o.signal?.addEventListener('abort', onAbort, { once: true });
  if (o.signal?.aborted) onAbort();

  const host = o.bind.host;
  return {
    uri: `nbds://${uriHost(host)}:${port}/${o.exportName}`,
    exportName: o.exportName,
    pid,
    host,
    port,
    closed,
    close: () => end('closed'),
    [Symbol.asyncDispose]: () => end('closed'),
  };
}
