// Hands files to clamd by path instead of INSTREAM: each clamd connection (IDSESSION) has one file of
// its own in a spool directory that clamd can read (the unit's RuntimeDirectory, a tmpfs), rewritten
// for every file the connection carries, and clamd is sent SCAN with its path. clamd then scans it as
// it scans a local file (`clamdscan --fdpass`); with INSTREAM it receives the stream and writes it
// into a temporary file of its own first, ~1.2-1.3x the CPU for the same files. A scanner has no file
// descriptor to pass (FILDES): Node cannot send one over a unix socket.
//
// Whether clamd can read the directory (its user's groups, its AppArmor profile) is found by a probe
// at start and before each job until one succeeds; until then files go by INSTREAM and the reason is logged once
// and shown in GET /v1/status. Nothing else changes with the hand-off: the same limits apply
// (streamMaxLength included, since clamd answers a file past its own limits with OK, or with
// Heuristics.Limits.Exceeded.NAME under AlertExceedsMax).
import { randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pidAlive } from '../../util/process.js';
import { errorMessage, VirtcbtError } from '../../util/errors.js';
import type { ClamdClient } from './clamd.js';

/** A spool file's name: the scanner's pid (what a later scanner's sweep checks) and a random part. */
const NAME = /^(?:s|probe)-(\d+)-[0-9a-f]{24}$/;
/** clamd (another user) reads spool files through the directory's group. */
const FILE_MODE = 0o640;

const spoolName = (kind: 's' | 'probe') => `${kind}-${process.pid}-${randomBytes(12).toString('hex')}`;

/** What the scanner told clamd's socket it would not spool, and why (GET /v1/status, the result). */
export type SpoolState =
  | { mode: 'spool'; dir: string }
  | { mode: 'instream'; dir?: string; why: string };

/** Writing a spool file failed (a full tmpfs, ENOSPC): the file goes by INSTREAM instead. */
export class SpoolWriteError extends VirtcbtError {}

/** One clamd connection's spool file: rewritten for each file, removed when the connection closes. */
export class SpoolFile {
  private fd?: number;
  /** The file's length now: truncated only when the next file is shorter (a system call saved per file otherwise). */
  private length = 0;

  private constructor(readonly path: string, fd: number) {
    this.fd = fd;
  }

  static create(dir: string, kind: 's' | 'probe' = 's'): SpoolFile {
    const path = join(dir, spoolName(kind));
    // O_EXCL: never a file (or link) someone else put there.
    const fd = openSync(path, 'wx+', FILE_MODE);
    try {
      // The unit's UMask=0077 took the group's read bit away.
      fchmodSync(fd, FILE_MODE);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    return new SpoolFile(path, fd);
  }

  /**
   * Replaces the contents with `chunks`; returns the bytes written. Synchronous writes: on tmpfs
   * they are a copy into memory, and the asynchronous ones cost ~10x the CPU in the thread pool.
   */
  async fill(chunks: AsyncIterable<Uint8Array>): Promise<number> {
    const fd = this.fd;
    if (fd === undefined) throw new SpoolWriteError(`spool file ${this.path} is closed`);
    // Only the spool's own calls are its errors: a failed read of the snapshot stays what it is.
    const io = (f: () => void) => {
      try {
        f();
      } catch (err) {
        // Its length is unknown now: the next fill truncates whatever it holds.
        this.length = Number.POSITIVE_INFINITY;
        throw new SpoolWriteError(`cannot write the spool file ${this.path}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`, {
          cause: err, hint: 'Give the spool directory (clamd.spoolDir) more room, or lower clamd.spoolMaxFileBytes',
        });
      }
    };
    let at = 0;
    for await (const c of chunks) {
      io(() => { for (let off = 0; off < c.length;) off += writeSync(fd, c, off, c.length - off, at + off); });
      at += c.length;
    }
    if (at < this.length) io(() => ftruncateSync(fd, at));
    this.length = at;
    return at;
  }

  /** Closes and removes the file (its contents are a guest's). */
  async remove(): Promise<void> {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    await rm(this.path, { force: true });
  }
}

export class ClamdSpool {
  private state: SpoolState;
  private warned?: string;
  /** A probe came to a conclusion (clamd answered it, or the directory is unusable), or there is no spool. */
  private concluded: boolean;

  constructor(
    /** The spool directory (clamd.spoolDir); empty: never spool. */
    readonly dir: string,
    /** Larger files go by INSTREAM (a tmpfs holds concurrency x this at most). */
    readonly maxFileBytes: number,
    private readonly warn: (message: string, fields: Record<string, unknown>) => void = () => undefined,
  ) {
    this.state = dir ? { mode: 'instream', dir, why: 'not probed yet' } : { mode: 'instream', why: 'no spool directory is configured (clamd.spoolDir)' };
    this.concluded = !dir;
  }

  /** False until a probe came to a conclusion: the status says "not probed yet" until then. */
  get probed(): boolean {
    return this.concluded;
  }

  status(): SpoolState {
    return this.state;
  }

  /** Whether a file of `size` bytes goes by path in the current job (after `ready`). */
  takes(size: number): boolean {
    return this.state.mode === 'spool' && size <= this.maxFileBytes;
  }

  /**
   * Makes the directory (0750) and removes the spool files of scanners no longer running (a kill
   * leaves its session files behind). Files of a live scanner sharing the directory are left alone.
   */
  async sweep(): Promise<number> {
    if (!this.dir) return 0;
    await mkdir(this.dir, { recursive: true, mode: 0o750 });
    let removed = 0;
    for (const name of await readdir(this.dir)) {
      const m = NAME.exec(name);
      const pid = Number(m?.[1]);
      if (!m || pid === process.pid || pidAlive(pid)) continue;
      await rm(join(this.dir, name), { force: true });
      removed++;
    }
    return removed;
  }

  /**
   * Probes (until one probe succeeded) whether clamd reads files in the directory: a small file,
   * SCAN, an OK back. Returns whether this job spools. A refusal is logged once per reason.
   */
  async ready(clamd: ClamdClient, signal?: AbortSignal): Promise<boolean> {
    if (!this.dir) return false;
    if (this.state.mode === 'spool') return true;
    let why: string | undefined;
    let probe: SpoolFile | undefined;
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o750 });
      probe = SpoolFile.create(this.dir, 'probe');
      await probe.fill((async function* () { yield Buffer.from('virtcbt-scanner: can clamd read its spool directory?\n'); })());
      const session = await clamd.session(signal);
      try {
        const v = await session.scanPath(probe.path);
        // Without the probe's own name, so that the same reason reads the same every time.
        if (v.status === 'error') why = `clamd cannot read files in ${this.dir}: ${v.message.replaceAll(`${probe.path}: `, '')}`;
      } finally {
        session.close();
      }
    } catch (err) {
      // clamd unreachable is the job's own error, said there; this is about the directory.
      if (err instanceof VirtcbtError && /cannot reach clamd|closed the connection/.test(err.message)) return false;
      why = `cannot use the spool directory ${this.dir}: ${errorMessage(err)}`;
    } finally {
      await probe?.remove().catch(() => undefined);
    }
    this.concluded = true;
    if (why === undefined) {
      this.state = { mode: 'spool', dir: this.dir };
      return true;
    }
    this.state = { mode: 'instream', dir: this.dir, why };
    if (this.warned !== why) {
      this.warned = why;
      this.warn('files go to clamd by INSTREAM, which costs clamd more CPU, until it can read the spool directory', {
        why,
        hint: `Let clamd's user into the directory's group (usermod -aG virtcbt-scanner clamav), allow "${this.dir}/** r," in /etc/apparmor.d/local/usr.sbin.clamd (apparmor_parser -r /etc/apparmor.d/usr.sbin.clamd), restart clamav-daemon; or set clamd.spoolDir to "" to stop trying`,
      });
    }
    return false;
  }
}
