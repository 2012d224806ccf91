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
// The TLS server itself (why qemu-storage-daemon, not nbdkit or qemu-nbd) is src/tls/nbd-server.ts.
//
// The front end dies with virtcbtd (setpriv's parent-death signal, as for the repository's
// qemu-nbd) and is recognisable after a kill -9 of virtcbtd by its --pidfile in the run
// directory (killStaleRemoteExport, sweepStaleRemoteExports).
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir, realpath, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { VirtcbtConfig } from '../config/index.js';
import { QSD, checkTlsServerOptions, startTlsNbdServer, type TlsNbdServer, type TlsNbdServerEnd, type TlsServerSettingNames } from '../tls/index.js';
import { abortReason, pollUntil } from '../util/abort.js';
import { UsageError, VirtcbtError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { pidAlive } from '../util/process.js';
import { isProgram, programOf } from '../util/setpriv.js';

/** The front end's pid file in the run directory: its name on the command line is how a stale one is recognised. */
const PID_FILE = /^remote-export-([0-9a-f]{32})\.pid$/;

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
export type RemoteExportEnd = TlsNbdServerEnd;

/** nbds://HOST:PORT/NAME (what the other host connects to, with its own ?tls-certificates=DIR), its pid and port, close(). */
export type RemoteExport = TlsNbdServer;

const SETTINGS: TlsServerSettingNames = {
  bind: 'snapshot.remote.bind', port: 'snapshot.remote.port', tlsDir: 'snapshot.remote.tlsDir',
  deadline: 'snapshot.remote.deadlineSeconds',
};
const WHAT = 'an export for another host';

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
  await checkTlsServerOptions({ ...o, what: WHAT, settings: SETTINGS });
  if (!(await stat(o.runDir).then((st) => st.isDirectory(), () => false))) {
    throw new UsageError(`run directory ${o.runDir} for an export to another host does not exist`, { ...where(o), hint: 'Create it (runDir in the configuration)' });
  }
  if (!existsSync(o.source.socket)) {
    throw new VirtcbtError(`the private export ${o.source.exportName} to serve to another host is gone (no socket ${o.source.socket})`, {
      ...where(o), hint: 'Take the snapshot again',
    });
  }
}

/**
 * Starts a front end serving `o.source` to another host. Resolves once it accepts connections; the
 * export is torn down by close(), disposal, the deadline or the signal, whichever comes first.
 * Close it before removing the private export it reads: removed first, its readers would get I/O
 * errors instead of a closed connection.
 */
export async function startRemoteExport(o: RemoteExportOptions): Promise<RemoteExport> {
  if (o.signal?.aborted) throw abortReason(o.signal, `starting ${WHAT}`);
  await checkOptions(o);
  const exportName = randomBytes(16).toString('hex');
  return startTlsNbdServer({
    what: WHAT,
    blockdevs: [{
      driver: 'nbd', 'node-name': 'source0', 'read-only': true,
      server: { type: 'unix', path: o.source.socket }, export: o.source.exportName,
    }],
    writable: false,
    exportName,
    tlsDir: o.tlsDir,
    identities: o.identities,
    bind: o.bind,
    pidFile: join(o.runDir, `remote-export-${exportName}.pid`),
    // A read-only front end has nothing to flush: it dies with virtcbtd at once.
    parentDeathSignal: 'SIGKILL',
    deadlineMs: o.deadlineMs,
    signal: o.signal,
    startTimeoutMs: o.startTimeoutMs,
    log: o.log,
    logPrefix: 'export for another host',
    domain: o.domain,
    disk: o.disk,
    settings: SETTINGS,
    startError: (stderr) => new VirtcbtError(`qemu-storage-daemon could not serve ${o.source.exportName} to another host: ${stderr.trim() || 'it exited'}`, {
      ...where(o), hint: /tls|cert|key|pem/i.test(stderr) ? `Check the credentials in ${o.tlsDir} (snapshot.remote.tlsDir)` : 'Check that the private export still exists',
    }),
  });
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
  const [program, ...args] = await programOf(pid);
  if (!isProgram(program, QSD)) return { killed: false, why: `process ${pid} is not a qemu-storage-daemon` };
  const pidFile = frontEndPidFile(args);
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
