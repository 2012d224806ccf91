// The receiving side of a sync: serves an image file of this host (the target host) as a writable
// NBD export over TLS that only the named hypervisor identities may connect to, for `virtcbt sync
// --to nbds://…` on the hypervisor. No virtcbtd is needed here; the server is src/tls's
// qemu-storage-daemon, opening the image with QEMU's own block layer (format, locking, discards).
import { randomBytes } from 'node:crypto';
import { readdir, readlink, readFile, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { prepareImageFile, type ImageFormat } from '../copy/index.js';
import { startTlsNbdServer, checkTlsServerOptions, type TlsNbdServer, type TlsServerSettingNames } from '../tls/index.js';
import { abortReason } from '../util/abort.js';
import { UsageError, VirtcbtError } from '../util/errors.js';
import type { Logger } from '../util/log.js';

export interface SyncTargetOptions {
  /** The image file that receives the sync (qcow2 or raw). */
  image: string;
  /** Detected from the file's header when not given (qcow2 magic, else raw); a created image is qcow2 unless given. */
  format?: ImageFormat;
  /** Make the image when it is missing: `size` bytes, sparse. Never replaces a file. */
  create?: { size: number };
  /** This host's address the hypervisor reaches; port 0 or absent: any free port. */
  bind: { host: string; port?: number };
  /** Server credentials: ca-cert.pem (the CA of the hypervisors' client certificates), server-cert.pem, server-key.pem. */
  tlsDir: string;
  /** Client certificate subjects let in, in the form QEMU compares ("CN=hv1"; `virtcbt certs client` prints it). */
  identities: readonly string[];
  /** Directory for the daemon's pid file. */
  runDir: string;
  /** Export name (default: random). A fixed name and port keep the URI, which the hypervisor records as the target's identity. */
  exportName?: string;
  signal?: AbortSignal;
  /** Refused clients and lost connections, as warnings. */
  log?: Logger;
  /** For hints: where the caller's settings come from (default: the CLI's options). */
  settings?: TlsServerSettingNames;
}

export interface SyncTarget extends TlsNbdServer {
  readonly image: string;
  readonly format: ImageFormat;
  /** The image was made by this call. */
  readonly created: boolean;
}

const CLI_SETTINGS: TlsServerSettingNames = { bind: '--bind', port: '--bind HOST:PORT', tlsDir: '--tls-dir', runDir: 'runDir' };
/** NBD allows 4096 bytes of anything; a name that needs no escaping in a URI is what an admin can copy. */
const EXPORT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** How long the daemon may take to flush and close the image after SIGTERM before it is killed. */
const STOP_TIMEOUT_MS = 60_000;

/**
 * Serves `o.image` writable over NBD with TLS: `discard=unmap` and `detect-zeroes=unmap`, so a
 * sync's discards and zero writes free space in the file. Refuses, changing nothing, a file that is
 * not a regular file (or is a symlink), a missing file without `create`, and a file another
 * process holds (QEMU's image locking; the holders are named). Ends on close(), the signal, or
 * when the daemon exits; it quits on SIGTERM, closing the image cleanly (also when this process dies:
 * its parent-death signal is SIGTERM).
 */
export async function serveSyncTarget(o: SyncTargetOptions): Promise<SyncTarget> {
  if (o.signal?.aborted) throw abortReason(o.signal, `serving sync target ${o.image}`);
  const image = resolve(o.image);
  const what = `sync target ${image}`;
  const settings = o.settings ?? CLI_SETTINGS;
  if (o.exportName !== undefined && !EXPORT_NAME.test(o.exportName)) {
    throw new UsageError(`export name ${JSON.stringify(o.exportName)} is not 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit)`, { hint: 'Choose a plain name, e.g. the image\'s' });
  }
  await checkTlsServerOptions({ what, tlsDir: o.tlsDir, identities: o.identities, bind: o.bind, settings });
  if (!(await stat(o.runDir).then((st) => st.isDirectory(), () => false))) {
    throw new UsageError(`run directory ${o.runDir} for ${what} does not exist`, { hint: `Create it (${settings.runDir ?? 'runDir'})` });
  }
  const { format, created } = await prepareImageFile(image, { format: o.format, create: o.create });
  const exportName = o.exportName ?? randomBytes(16).toString('hex');
  const node = 'target0';
  try {
    const served = await startTlsNbdServer({
      what,
      blockdevs: [
        // discard=unmap on both nodes: qcow2 frees its clusters and passes the discard on to the file, which punches a hole.
        { driver: 'file', 'node-name': `${node}-file`, filename: image, discard: 'unmap' },
        { driver: format, 'node-name': node, file: `${node}-file`, discard: 'unmap', 'detect-zeroes': 'unmap' },
      ],
      node,
      writable: true,
      exportName,
      tlsDir: o.tlsDir,
      identities: o.identities,
      bind: o.bind,
      pidFile: join(o.runDir, `sync-target-${exportName}.pid`),
      // If this process is killed, the daemon still quits as on QMP `quit`: the image is closed cleanly.
      parentDeathSignal: 'SIGTERM',
      stopTimeoutMs: STOP_TIMEOUT_MS,
      signal: o.signal,
      log: o.log,
      settings,
      startError: (stderr) => startError(image, stderr),
    });
    return Object.assign(served, { image, format, created });
  } catch (err) {
    // Made here and not served: bad input changes nothing.
    if (created) await rm(image, { force: true });
    throw await withHolders(err, image);
  }
}

function startError(image: string, stderr: string): VirtcbtError {
  const msg = stderr.trim().replace(/^qemu-storage-daemon: /gm, '');
  if (/Failed to get .*lock/i.test(stderr)) {
    return new VirtcbtError(`sync target ${image} is in use by another process (QEMU's image lock: ${msg.split('\n')[0]})`, {
      hint: 'Stop the VM or tool that has it open; a sync target must have no other user',
    });
  }
  return new VirtcbtError(`qemu-storage-daemon could not serve sync target ${image}: ${msg || 'it exited'}`, {
    hint: /tls|cert|key|pem/i.test(stderr) ? 'Check the credentials in --tls-dir' : 'Check the image with `qemu-img check`',
  });
}

/** A lock refusal, completed with the processes that have the image open (found through /proc). */
async function withHolders(err: unknown, image: string): Promise<unknown> {
  if (!(err instanceof VirtcbtError) || !/is in use by another process/.test(err.message)) return err;
  const holders = await imageHolders(image);
  if (holders.length === 0) return err;
  return new VirtcbtError(`${err.message}; it is open in ${holders.join(', ')}`, { hint: err.hint, cause: err });
}

/** "pid 1234 (qemu-system-x86_64, guest=vm1)" for each process with the file open. */
export async function imageHolders(path: string): Promise<string[]> {
  const target = await stat(path).catch(() => undefined);
  if (!target) return [];
  const out: string[] = [];
  for (const p of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    const fds = await readdir(`/proc/${p}/fd`).catch(() => [] as string[]);
    let holds = false;
    for (const fd of fds) {
      // readlink first: stat of every descriptor would open sockets' and pipes' inodes for nothing.
      const link = await readlink(`/proc/${p}/fd/${fd}`).catch(() => '');
      if (!link.startsWith('/')) continue;
      const st = await stat(`/proc/${p}/fd/${fd}`).catch(() => undefined);
      if (st && st.dev === target.dev && st.ino === target.ino) { holds = true; break; }
    }
    if (!holds) continue;
    const comm = (await readFile(`/proc/${p}/comm`, 'utf8').catch(() => '?')).trim();
    const argv = (await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '')).split('\0');
    const guest = /(?:^|,)guest=([^,]+)/.exec(argv[argv.indexOf('-name') + 1] ?? '')?.[1];
    out.push(`pid ${p} (${comm}${guest ? `, guest=${guest}` : ''})`);
  }
  return out;
}
