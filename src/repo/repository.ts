// The backup repository on a local directory: REPO/DOMAIN/CONSUMER/ holds one chain of qcow2
// images per consumer (a full backup is a standalone image, an incremental an overlay backed by
// the previous one) and a manifest per restore point. Files no manifest names are leftovers of
// a killed run and are removed by the next one; a lock file keeps a backup and a prune of the
// same chain apart.
import { hostname } from 'node:os';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError, VirtcbtError } from '../util/errors.js';
import { killStaleQemuNbd, pidAlive } from './image-server.js';
import { readManifestCached, writeFileDurable, type Manifest } from './manifest.js';

export const LOCK_FILE = '.lock';
export const INPROGRESS_FILE = '.inprogress.json';
export const PRUNE_JOURNAL = '.prune.json';

/** What a running backup records before it writes anything, so that the next run can undo a killed one. */
export interface InProgress {
  id: string;
  /** The pass it began (null until the rotation is done). */
  pass: number | null;
  /** The domain's generation before the rotation: a pass of this consumer begun at or after it is this backup's. */
  generation: number;
  /** The change log `generation` belongs to (absent in markers of an older virtcbt). */
  logId?: string;
  files: string[];
  /** qemu-nbd processes writing the files (killed if a crash left them waiting). */
  pids: number[];
  pid: number;
  startedAt: string;
}

/** A prune under way: the restore points it removes are hidden, and it is resumed by the next prune. */
export interface PruneJournal {
  keep: number;
  removing: string[];
  into: string | null;
  disks: { target: string; base: string; top: string; merged: string }[];
  startedAt: string;
}

function pathSafe(name: string): string {
  // Domain names are free text in libvirt; keep them one path component and never '.' or '..'.
  const e = encodeURIComponent(name);
  return e.startsWith('.') ? `%2E${e.slice(1)}` : e;
}

export interface RepoLock {
  release(): Promise<void>;
}

export class Repository {
  constructor(readonly root: string) {}

  /** Checks that the repository directory exists (or creates it) and is a directory. */
  static async open(root: string, opts: { create?: boolean } = {}): Promise<Repository> {
    if (!root) throw new UsageError('no repository given', { hint: 'Pass --repo DIR or set backup.repo in the config' });
    if (opts.create) await mkdir(root, { recursive: true, mode: 0o750 });
    const st = await stat(root).catch(() => undefined);
    if (!st?.isDirectory()) {
      throw new UsageError(`backup repository ${root} does not exist or is not a directory`, { hint: 'Check --repo; `virtcbt backup` creates it' });
    }
    return new Repository(root);
  }

  domainDir(domain: string): string {
    return join(this.root, pathSafe(domain));
  }

  chainDir(domain: string, consumer: string): string {
    return join(this.domainDir(domain), pathSafe(consumer));
  }

  async domains(): Promise<string[]> {
    const names = await readdir(this.root, { withFileTypes: true }).catch(() => []);
    return names.filter((d) => d.isDirectory() && !d.name.startsWith('.')).map((d) => decodeURIComponent(d.name)).sort();
  }

  async consumers(domain: string): Promise<string[]> {
    const names = await readdir(this.domainDir(domain), { withFileTypes: true }).catch(() => []);
    return names.filter((d) => d.isDirectory() && !d.name.startsWith('.')).map((d) => decodeURIComponent(d.name)).sort();
  }

  /** Restore points of one consumer's chain, oldest first; those a pending prune removes are left out unless asked for. */
  async chain(domain: string, consumer: string, opts: { includePruning?: boolean } = {}): Promise<Manifest[]> {
    const dir = this.chainDir(domain, consumer);
    const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.json') && !f.startsWith('.'));
    // Frozen, shared between calls (see readManifestCached): change a copy.
    const out = await Promise.all(files.map((f) => readManifestCached(join(dir, f))));
    const hidden = opts.includePruning ? new Set<string>() : new Set((await this.pruneJournal(domain, consumer))?.removing ?? []);
    return out.filter((m) => !hidden.has(m.id)).sort((a, b) => a.seq - b.seq);
  }

  /** Every restore point of a domain (all consumers), oldest first. */
  async list(domain: string): Promise<Manifest[]> {
    const all: Manifest[] = [];
    for (const c of await this.consumers(domain)) all.push(...(await this.chain(domain, c)));
    return all.sort((a, b) => a.time.localeCompare(b.time) || a.id.localeCompare(b.id));
  }

  /**
   * The restore point `at` names: a backup id, or an ISO time (the newest backup taken at or
   * before it); the newest of the domain when `at` is undefined.
   */
  async resolve(domain: string, at?: string): Promise<Manifest> {
    const all = await this.list(domain);
    const notFound = (what: string) => Object.assign(new VirtcbtError(what, {
      domain, hint: `List the restore points with \`virtcbt list --repo ${this.root} ${domain}\``,
    }), { exitCode: 4 });
    if (all.length === 0) throw notFound(`the repository ${this.root} has no backups of ${domain}`);
    if (at === undefined) return all[all.length - 1]!;
    const byId = all.filter((m) => m.id === at);
    if (byId.length === 1) return byId[0]!;
    const t = Date.parse(at);
    if (!Number.isNaN(t) && /^\d{4}-\d\d-\d\d/.test(at)) {
      const before = all.filter((m) => Date.parse(m.time) <= t);
      if (before.length > 0) return before[before.length - 1]!;
      throw notFound(`no backup of ${domain} was taken at or before ${at}`);
    }
    throw notFound(`no backup '${at}' of ${domain}`);
  }

  async nextSeq(domain: string, consumer: string): Promise<number> {
    const chain = await this.chain(domain, consumer, { includePruning: true });
    return chain.length === 0 ? 1 : chain[chain.length - 1]!.seq + 1;
  }

  // ---- lock ------------------------------------------------------------------------------

  /**
   * Takes the chain's lock (a file created exclusively, holding the owner's pid). A lock whose
   * process is gone (killed) is taken over.
   */
  async lock(domain: string, consumer: string, what: string): Promise<RepoLock> {
    const dir = this.chainDir(domain, consumer);
    await mkdir(dir, { recursive: true, mode: 0o750 });
    const path = join(dir, LOCK_FILE);
    const me = JSON.stringify({ pid: process.pid, host: hostname(), what, at: new Date().toISOString() });
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const fh = await open(path, 'wx', 0o640);
        await fh.writeFile(me);
        await fh.close();
        return { release: () => rm(path, { force: true }) };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new VirtcbtError(`cannot lock backup chain ${dir}: ${(err as Error).message}`, { domain, cause: err, hint: 'Check that the repository is writable and not full' });
        }
      }
      let owner: { pid?: number; host?: string; what?: string; at?: string } = {};
      try {
        owner = JSON.parse(await readFile(path, 'utf8'));
      } catch {
        // Half-written by a process killed between create and write: treat as stale.
      }
      if (owner.pid && owner.host === hostname() && pidAlive(owner.pid) && owner.pid !== process.pid) {
        throw new VirtcbtError(`backup chain ${dir} is busy: ${owner.what ?? 'in use'} (pid ${owner.pid} since ${owner.at})`, {
          domain, hint: 'Wait for it to finish, then run the command again',
        });
      }
      await rm(path, { force: true });
    }
    throw new VirtcbtError(`cannot lock backup chain ${dir}: it keeps being taken`, { domain });
  }

  // ---- in-progress marker and leftovers ------------------------------------------------------

  /** `durable: false` for updates that only help clean-up (qemu-nbd pids): no fsync on the backup's path. */
  async writeInProgress(domain: string, consumer: string, ip: InProgress, opts: { durable?: boolean } = {}): Promise<void> {
    const path = join(this.chainDir(domain, consumer), INPROGRESS_FILE);
    if (opts.durable === false) {
      // Still atomic (a kill must not leave half a marker), just not fsynced.
      const tmp = `${path}.tmp-${process.pid}`;
      await writeFile(tmp, JSON.stringify(ip, null, 2));
      await rename(tmp, path);
    } else {
      await writeFileDurable(path, JSON.stringify(ip, null, 2));
    }
  }

  /**
   * The marker of an interrupted backup. One that cannot be read still says a backup was
   * interrupted: it comes back with generation 0, so that every open pass of the consumer counts
   * as that backup's.
   */
  async readInProgress(domain: string, consumer: string): Promise<InProgress | undefined> {
    let text: string;
    try {
      text = await readFile(join(this.chainDir(domain, consumer), INPROGRESS_FILE), 'utf8');
    } catch {
      return undefined;
    }
    try {
      const ip = JSON.parse(text) as InProgress;
      if (typeof ip.id === 'string' && Number.isInteger(ip.generation)) return ip;
    } catch { /* fall through */ }
    return { id: '(unreadable marker)', pass: null, generation: 0, files: [], pids: [], pid: 0, startedAt: '' };
  }

  async clearInProgress(domain: string, consumer: string): Promise<void> {
    await rm(join(this.chainDir(domain, consumer), INPROGRESS_FILE), { force: true });
  }

  async pruneJournal(domain: string, consumer: string): Promise<PruneJournal | undefined> {
    try {
      return JSON.parse(await readFile(join(this.chainDir(domain, consumer), PRUNE_JOURNAL), 'utf8')) as PruneJournal;
    } catch {
      return undefined;
    }
  }

  /**
   * After a killed backup: kills the qemu-nbd it left, removes image files no manifest names and
   * temp files. Call with the chain locked. Returns the interrupted backup (its pass must be
   * aborted if still open) and the files removed.
   */
  async cleanupLeftovers(domain: string, consumer: string, opts: { keepMarker?: boolean } = {}): Promise<{
    interrupted?: InProgress; removed: string[];
    /** The chain as chain() gives it, and the next sequence number (read once here for the caller). */
    chain: Manifest[]; nextSeq: number;
  }> {
    const dir = this.chainDir(domain, consumer);
    const interrupted = await this.readInProgress(domain, consumer);
    for (const pid of interrupted?.pids ?? []) await killStaleQemuNbd(pid);
    const chain = await this.chain(domain, consumer, { includePruning: true });
    const keep = new Set(chain.flatMap((m) => m.disks.flatMap((d) => [d.file, ...(d.backing ? [d.backing] : [])])));
    const journal = await this.pruneJournal(domain, consumer);
    for (const d of journal?.disks ?? []) { keep.add(d.base); keep.add(d.top); keep.add(d.merged); }
    const removed: string[] = [];
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      const temp = f.startsWith('.') && f.includes('.tmp-');
      if ((f.endsWith('.qcow2') && !keep.has(f)) || temp) {
        await rm(join(dir, f), { force: true });
        removed.push(f);
      }
    }
    // The marker tells virtcbtd which pass to abort: only the backup job clears it.
    if (interrupted && !opts.keepMarker) await this.clearInProgress(domain, consumer);
    const hidden = new Set(journal?.removing ?? []);
    return {
      interrupted, removed, chain: chain.filter((m) => !hidden.has(m.id)),
      nextSeq: chain.length === 0 ? 1 : chain[chain.length - 1]!.seq + 1,
    };
  }
}
