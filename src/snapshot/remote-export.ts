// An export for another host: NBD over TCP with mutual TLS, read-only, under a random name, served
// by a qemu-storage-daemon of its own that reads a private unix export of this host.
//
// Why a front-end process and not QEMU's own server: QEMU runs one NBD server per process, and
// virtcbt keeps the guest's on a private unix socket for bitmap reads, folds, backups and pass
// exports. Moving that server to TCP+TLS would make every fold and backup pay for TLS and tie the
// guest's one server to one address and one set of credentials; a held remote export would also
// keep QEMU's server busy for other tools (libvirt backup jobs). A front end per remote export
// leaves the private server as it is: it opens the unix export with QEMU's `nbd` block driver
// (read-only) and serves it on the configured address with QEMU's TLS (`tls-creds-x509`,
// verify-peer=on: a client must present a certificate from the CA in the credentials directory)
// and `tls-authz` (an `authz-list` of exact distinguished names, deny by default: only the named
// identities get in). It costs one more NBD hop on this host, only for the remote reader.
//
// Why qemu-storage-daemon and not nbdkit: nbdkit 1.32 (Debian 12) checks the client's certificate
// against the CA (--tls-verify-peer) but has no check of the certificate's identity: its ip filter
// matches addresses, uids, gids, pids and security labels, and neither the plugin nor the filter
// API sees the peer certificate. Any certificate the CA ever signed would get in. qemu-nbd has the
// same TLS as qemu-storage-daemon, but takes an inherited listening socket only by systemd socket
// activation (LISTEN_PID must be its own pid, unknown before it is spawned); qemu-storage-daemon
// takes one as `addr.type=fd`, which lets this process bind the address itself: port 0 gets a free
// port without a race, and a bad address fails here, before anything is started.
//
// The front end dies with virtcbtd (setpriv's parent-death signal, as for the repository's
// qemu-nbd) and is recognisable after a kill -9 of virtcbtd by its --pidfile in the run
// directory (killStaleRemoteExport, sweepStaleRemoteExports).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir, realpath, rm, stat } from 'node:fs/promises';
import { createServer, isIP, type Server } from 'node:net';
import { basename, dirname, join } from 'node:path';
import type { VirtcbtConfig } from '../config/index.js';
import { pidAlive } from '../repo/index.js';
import { SERVER_FILES } from '../tls/index.js';
import { abortReason, pollUntil } from '../util/abort.js';
import { UsageError, VirtcbtError } from '../util/errors.js';
import type { Logger } from '../util/log.js';

/** util-linux setpriv (Debian: essential): execs the program with a parent-death signal set. */
const SETPRIV = '/usr/bin/setpriv';
const QSD = 'qemu-storage-daemon';
/** The front end's pid file in the run directory: its name on the command line is how a stale one is recognised. */
const PID_FILE = /^remote-export-([0-9a-f]{32})\.pid$/;
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface RemoteExportOptions {
  /** The private unix export to serve (as nbd-server.ts's ensureNbdServer/addReadOnlyExport made it). */
  source: { socket: string; exportName: string };
  /** Server credentials as QEMU's tls-creds-x509 reads them: ca-cert.pem (the CA clients must come from), server-cert.pem, server-key.pem. */
  tlsDir: string;
  /**
   * Client identities let in: exact subject distinguished names in the form QEMU's tls-authz compares,
   * the attributes in the certificate's order: "CN=scanner", or "O=Example,CN=scanner-1" (note: not
   * the reversed order `certtool -i` prints; certificateSubject in src/tls gives the right one, and a
   * refused client's name appears as "authz check for DN is denied"). Any other certificate is
   * refused at the handshake.
   */
  identities: readonly string[];
  /** The address another host reaches; port 0 or absent: a free port, chosen when binding. */
  bind: { host: string; port?: number };
  /** The export is torn down after this long (default: never). */
  deadlineMs?: number;
  /** Aborting tears the export down. */
  signal?: AbortSignal;
  /** Directory for the front end's pid file (what a restarted virtcbtd sweeps). */
  runDir: string;
  /** For error messages. */
  domain?: string;
  disk?: string;
  /** How long qemu-storage-daemon may take to come up (default 30 s). */
  startTimeoutMs?: number;
  /**
   * Gets the front end's messages once it serves, as warnings: refused clients ("TLS x509 authz
   * check for DN is denied" names the DN an admin would allow), lost connections to the source.
   */
  log?: Logger;
}

/** Why an export ended. */
export type RemoteExportEnd = 'closed' | 'deadline' | 'aborted' | 'exited';

export interface RemoteExport extends AsyncDisposable {
  /** nbds://HOST:PORT/NAME: what the other host connects to (with its own ?tls-certificates=DIR). */
  readonly uri: string;
  readonly exportName: string;
  readonly pid: number;
  readonly host: string;
  readonly port: number;
  /** Resolves (never rejects) once the front end is gone and its port closed, saying why. */
  readonly closed: Promise<RemoteExportEnd>;
  close(): Promise<void>;
}

/** The settings of snapshot.remote, checked: an export for another host needs an address an admin chose. */
export function remoteExportSettings(cfg: Pick<VirtcbtConfig, 'snapshot'>): { bind: { host: string; port: number }; tlsDir: string; deadlineMs: number } {
  const r = cfg.snapshot.remote;
  if (r.bind.trim() === '') {
    throw new UsageError('no address is configured for exports to another host (snapshot.remote.bind is empty)', {
      hint: 'Set snapshot.remote.bind to the address of this host that the other host reaches (e.g. the storage network\'s), and snapshot.remote.tlsDir to its server credentials',
    });
  }
  return { bind: { host: r.bind.trim(), port: r.port }, tlsDir: r.tlsDir, deadlineMs: r.deadlineSeconds * 1000 };
}

function where(o: Pick<RemoteExportOptions, 'domain' | 'disk'>) {
  return { domain: o.domain, disk: o.disk };
}

/** Checks everything a caller can get wrong before anything is started (bad input changes nothing). */
async function checkOptions(o: RemoteExportOptions): Promise<void> {
  if (o.identities.length === 0) {
    throw new UsageError('an export for another host needs at least one allowed client identity', {
      ...where(o), hint: 'Name the client certificate\'s subject, e.g. "CN=scanner" (certtool -i --infile client-cert.pem shows it)',
    });
  }
  for (const id of o.identities) {
    if (id.trim() === '' || /[\0-\x1f]/.test(id) || !/=/.test(id)) {
      throw new UsageError(`client identity ${JSON.stringify(id)} is not a distinguished name`, { ...where(o), hint: 'Give it as the certificate shows its subject, e.g. "CN=scanner"' });
    }
  }
  if (o.bind.host.trim() === '') {
    throw new UsageError('no address to bind the export for another host to', { ...where(o), hint: 'Set snapshot.remote.bind' });
  }
  // A wildcard address would serve the snapshot on every network of this host, and the URI would name no host.
  if (isIP(o.bind.host) !== 0 && ['0.0.0.0', '::'].includes(o.bind.host.replace(/^::ffff:/, '').replace(/^0:0:0:0:0:0:0:0$/, '::'))) {
    throw new UsageError(`an export for another host must not listen on every address (${o.bind.host})`, {
      ...where(o), hint: 'Set snapshot.remote.bind to this host\'s address on the network the other host uses',
    });
  }
  const port = o.bind.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UsageError(`port ${port} is not a TCP port`, { ...where(o), hint: 'Give 1-65535, or 0 for any free port (snapshot.remote.port)' });
  }
  // Node fires a timer of more than 2^31-1 ms at once: a long deadline would end the export at its start.
  if (o.deadlineMs !== undefined && !(o.deadlineMs > 0 && o.deadlineMs <= MAX_TIMER_MS)) {
    throw new UsageError(`deadline ${o.deadlineMs} ms is not between 1 ms and ${MAX_TIMER_MS} ms (24 days)`, {
      ...where(o), hint: 'Give a shorter deadline (snapshot.remote.deadlineSeconds)',
    });
  }
  for (const f of Object.values(SERVER_FILES)) {
    const path = join(o.tlsDir, f);
    if (!(await stat(path).then((s) => s.isFile(), () => false))) {
      throw new UsageError(`TLS credentials for exports to another host are incomplete: ${path} is missing`, {
        ...where(o), hint: `Put ca-cert.pem (the CA of the clients), server-cert.pem and server-key.pem in ${o.tlsDir} (snapshot.remote.tlsDir)`,
      });
    }
  }
  if (!(await stat(o.runDir).then((st) => st.isDirectory(), () => false))) {
    throw new UsageError(`run directory ${o.runDir} for an export to another host does not exist`, { ...where(o), hint: 'Create it (runDir in the configuration)' });
  }
  if (!existsSync(o.source.socket)) {
    throw new VirtcbtError(`the private export ${o.source.exportName} to serve to another host is gone (no socket ${o.source.socket})`, {
      ...where(o), hint: 'Take the snapshot again',
    });
  }
}

/** Binds the address here, so that a wrong address or a port in use is reported before qemu-storage-daemon starts. */
function listen(o: RemoteExportOptions): Promise<Server> {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const at = `${o.bind.host}:${o.bind.port ?? 0}`;
      reject(new VirtcbtError(`cannot listen on ${at} for an export to another host: ${err.code ?? err.message}`, {
        ...where(o), cause: err,
        hint: err.code === 'EADDRINUSE' ? 'Choose another port (snapshot.remote.port), or 0 for any free port'
          : 'Set snapshot.remote.bind to an address of this host',
      }));
    });
    server.listen({ host: o.bind.host, port: o.bind.port ?? 0, exclusive: true }, () => resolve(server));
  });
}

function uriHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** The qemu-storage-daemon arguments of a front end: JSON for every option, so DNs with commas need no escaping. */
function frontEndArgs(o: RemoteExportOptions, exportName: string, pidFile: string): string[] {
  return [
    '--object', JSON.stringify({ 'qom-type': 'tls-creds-x509', id: 'tls0', dir: o.tlsDir, endpoint: 'server', 'verify-peer': true }),
    '--object', JSON.stringify({
      'qom-type': 'authz-list', id: 'authz0', policy: 'deny',
      rules: o.identities.map((id) => ({ match: id, policy: 'allow', format: 'exact' })),
    }),
    '--blockdev', JSON.stringify({
      driver: 'nbd', 'node-name': 'source0', 'read-only': true,
      server: { type: 'unix', path: o.source.socket }, export: o.source.exportName,
    }),
    // fd 3 is the socket listen() bound (stdio slot 3 below).
    '--nbd-server', JSON.stringify({ addr: { type: 'fd', str: '3' }, 'tls-creds': 'tls0', 'tls-authz': 'authz0' }),
    '--export', JSON.stringify({ type: 'nbd', id: 'export0', 'node-name': 'source0', name: exportName, writable: false }),
    '--pidfile', pidFile,
  ];
}

/**
 * Starts a front end serving `o.source` to another host. Resolves once it accepts connections; the
 * export is torn down by close(), disposal, the deadline or the signal, whichever comes first.
 * Close it before removing the private export it reads: removed first, its readers would get I/O
 * errors instead of a closed connection.
 */
export async function startRemoteExport(o: RemoteExportOptions): Promise<RemoteExport> {
  if (o.signal?.aborted) throw abortReason(o.signal, 'starting an export for another host');
  await checkOptions(o);
  const exportName = randomBytes(16).toString('hex');
  const pidFile = join(o.runDir, `remote-export-${exportName}.pid`);
  const server = await listen(o);
  const { port } = server.address() as { port: number };
  // libuv keeps the listening socket's descriptor here; Node offers no public way to hand a bound
  // socket to a child, and stdio slots take descriptors.
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    server.close();
    throw new VirtcbtError('cannot hand the listening socket to qemu-storage-daemon (no descriptor)', { ...where(o), hint: 'Report this: it needs Node on Linux' });
  }
  let child: ChildProcess;
  try {
    const args = frontEndArgs(o, exportName, pidFile);
    // Without a parent-death signal, a front end of a killed virtcbtd would serve the snapshot until
    // someone found it; with it, the kernel ends it with virtcbtd.
    child = existsSync(SETPRIV)
      ? spawn(SETPRIV, ['--pdeathsig', 'SIGKILL', '--', QSD, ...args], { stdio: ['ignore', 'ignore', 'pipe', fd] })
      : spawn(QSD, args, { stdio: ['ignore', 'ignore', 'pipe', fd] });
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
      if (line.trim() !== '') o.log.warn(`export for another host: ${line.replace(/^qemu-storage-daemon: /, '')}`, { ...where(o), export: exportName });
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
        throw new VirtcbtError(`qemu-storage-daemon could not serve ${o.source.exportName} to another host: ${stderr.trim() || `exit ${child.exitCode ?? child.signalCode}`}`, {
          ...where(o), hint: /tls|cert|key|pem/i.test(stderr) ? `Check the credentials in ${o.tlsDir} (snapshot.remote.tlsDir)` : 'Check that the private export still exists',
        });
      }
      return (await readFile(pidFile, 'utf8').catch(() => '')).trim() === String(pid);
    }, `qemu-storage-daemon to serve ${o.source.exportName} on ${o.bind.host}:${port}`, { timeoutMs: o.startTimeoutMs ?? 30_000, signal: o.signal, intervalMs: 5 });
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    await rm(pidFile, { force: true });
    throw err;
  }

  serving = true;
  let ending: RemoteExportEnd | undefined;
  let resolveClosed!: (end: RemoteExportEnd) => void;
  const closed = new Promise<RemoteExportEnd>((resolve) => { resolveClosed = resolve; });
  let deadline: NodeJS.Timeout | undefined;
  const onAbort = () => { void end('aborted'); };
  const end = async (why: RemoteExportEnd): Promise<void> => {
    if (ending === undefined) {
      ending = why;
      if (deadline) clearTimeout(deadline);
      o.signal?.removeEventListener('abort', onAbort);
      if (!dead()) child.kill('SIGTERM');
      // qemu-storage-daemon quits on SIGTERM within milliseconds; a hung one is killed.
      const hard = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(hard);
      await rm(pidFile, { force: true });
      resolveClosed(why);
    }
    await closed;
  };
  void exited.then(() => end('exited'));
  if (o.deadlineMs !== undefined) {
    // unref'd: this timer alone keeps no process alive; a front end whose owner exits dies with it (parent-death signal).
    deadline = setTimeout(() => { void end('deadline'); }, o.deadlineMs);
    deadline.unref();
  }
  o.signal?.addEventListener('abort', onAbort, { once: true });
  if (o.signal?.aborted) onAbort();

  const host = o.bind.host;
  return {
    uri: `nbds://${uriHost(host)}:${port}/${exportName}`,
    exportName,
    pid,
    host,
    port,
    closed,
    close: () => end('closed'),
    [Symbol.asyncDispose]: () => end('closed'),
  };
}

/** The pid file a front-end command line (after the program name) names, when it is one of ours. */
function frontEndPidFile(args: readonly string[]): string | undefined {
  const i = args.indexOf('--pidfile');
  const f = i >= 0 ? args[i + 1] : undefined;
  if (f === undefined || args.indexOf('--pidfile', i + 1) >= 0) return undefined;
  return PID_FILE.test(basename(f)) && args.includes('--nbd-server') ? f : undefined;
}

/**
 * Kills a front end left behind by a killed virtcbtd (normally the parent-death signal has done
 * so already). The pid comes from a file anyone with access to the run directory could write: only
 * a qemu-storage-daemon (or the setpriv about to exec one) whose --pidfile is a front end's pid
 * file inside `runDir` is killed. Says what it did.
 */
export async function killStaleRemoteExport(pid: number, runDir: string): Promise<{ killed: boolean; why: string }> {
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  if (argv.at(-1) === '') argv.pop();
  const at = argv[0] === SETPRIV && argv[1] === '--pdeathsig' ? argv.indexOf('--') + 1 : 0;
  const program = argv[at];
  if ((at === 0 && argv[0] === SETPRIV) || program === undefined || (program !== QSD && !program.endsWith(`/${QSD}`))) {
    return { killed: false, why: `process ${pid} is not a qemu-storage-daemon` };
  }
  const pidFile = frontEndPidFile(argv.slice(at + 1));
  const dir = await realpath(runDir).catch(() => undefined);
  const its = pidFile && (await realpath(dirname(pidFile)).catch(() => undefined));
  if (!pidFile || !dir || its !== dir) {
    return { killed: false, why: `qemu-storage-daemon ${pid} is not a front end of an export to another host in ${runDir}: left alone` };
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return { killed: false, why: `qemu-storage-daemon ${pid} has exited` };
    throw err;
  }
  await pollUntil(() => !pidAlive(pid), `qemu-storage-daemon ${pid} to exit`, { timeoutMs: 10_000, intervalMs: 10 });
  await rm(pidFile, { force: true });
  return { killed: true, why: `killed the front end ${pid} of an export to another host (${basename(pidFile)})` };
}

/**
 * After a restart of virtcbtd: ends every front end whose pid file is in `runDir` and removes the
 * pid files (a front end whose virtcbtd died has nobody to close it). Returns what it did.
 */
export async function sweepStaleRemoteExports(runDir: string): Promise<string[]> {
  const done: string[] = [];
  for (const name of await readdir(runDir).catch(() => [] as string[])) {
    if (!PID_FILE.test(name)) continue;
    const file = join(runDir, name);
    const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) {
      const r = await killStaleRemoteExport(pid, runDir);
      done.push(r.why);
      if (r.killed) continue;
    }
    await rm(file, { force: true });
    done.push(`removed ${name}`);
  }
  return done;
}
