// The backup repository on a local directory: REPO/DOMAIN/CONSUMER/ holds one chain of qcow2
// images per consumer (a full backup is a standalone image, an incremental an overlay backed by
// the previous one) and a manifest per restore point. Files no manifest names are leftovers of
// a killed run and are removed by the next one; a lock file keeps a backup and a prune of the
// same chain apart. The repository is untrusted input: every name read from it is checked, no
// symlink inside it is followed, and a damaged file is reported without hiding the others.
import type { Stats } from 'node:fs';
import { hostname } from 'node:os';
import { lstat, mkdir, open, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { NotFoundError, UsageError, VirtcbtError } from '../util/errors.js';
import { fileKind } from '../util/regular-file.js';
import { pidAlive } from '../util/process.js';
import { killStaleQemuNbd } from './image-server.js';
import { CREATE_EXCLUSIVE, readManifestCached, readRepoFile, writeFileDurable, type Manifest } from './manifest.js';
import { PLAIN_NAME, imageName, imageOwner, inChain, pointSeq } from './names.js';

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

function pathName(entry: string): string | undefined {
  try {
    return decodeURIComponent(entry);
  } catch {
    return undefined;
  }
}

export interface RepoLock {
  release(): Promise<void>;
}

/** A file of the repository that cannot be used, and why: reported, never fatal to the rest. */
export interface RepoProblem {
  path: string;
  problem: string;
  consumer?: string;
  /** The restore point a damaged manifest's name says it is. */
  id?: string;
}

/** What one consumer's chain directory holds, as read. */
export interface ChainState {
  /** Intact restore points, in sequence order; those a pending prune removes are left out. */
  points: Manifest[];
  /** Intact restore points including those a pending prune removes. */
  all: Manifest[];
  journal?: PruneJournal;
  /** Damaged manifests, a damaged prune journal: failures. */
  damaged: RepoProblem[];
  /** Files that are not named like anything of a chain (a stray notes.json): warnings. */
  ignored: RepoProblem[];
  /** One past the highest sequence number any manifest (intact or damaged) takes. */
  nextSeq: number;
}

/** Every chain of a domain. */
export interface DomainState {
  domain: string;
  chains: (ChainState & { consumer: string })[];
  /** Points of all consumers: each chain in its sequence order, the chains merged by time. */
  points: Manifest[];
  damaged: RepoProblem[];
  ignored: RepoProblem[];
}

const REPAIR_HINT = 'Run `virtcbt verify`; move the file out of the repository or restore it from a good copy';

/** What an errno means for a repository path, said so that the admin knows what to do. */
function pathError(path: string, err: unknown, doing: string): VirtcbtError {
  const code = (err as NodeJS.ErrnoException).code;
  const [what, hint] = code === 'EROFS' ? [`${path} is on a read-only file system`, 'Mount it read-write, or choose another --repo (backup.repo)']
    : code === 'EACCES' || code === 'EPERM' ? [`permission denied on ${path}`, 'Check its owner and mode (virtcbtd runs as root; the CLI as you)']
      : code === 'ENOSPC' || code === 'EDQUOT' ? [`no space left for ${path}`, 'Free space there, prune old backups, or choose another --repo']
        : code === 'ENOTDIR' || code === 'EEXIST' ? [`${path} or a directory above it is a file, not a directory`, 'Pass a directory to --repo (backup.repo)']
          : [`${path}: ${(err as Error).message}`, 'Check --repo (backup.repo)'];
  return new UsageError(`cannot ${doing}: ${what}`, { cause: err, hint });
}

/** Like `mkdir -p`, one level at a time, so that a failure says which level and why (Node's own says ENOENT on a read-only file system). */
async function makeDirs(path: string, mode: number): Promise<void> {
  const missing: string[] = [];
  for (let p = path; ; p = dirname(p)) {
    const st = await stat(p).catch((err: NodeJS.ErrnoException) => {
      // ENOTDIR: a file above; the walk up finds it and names it.
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined;
      throw pathError(p, err, `create the backup repository ${path}`);
    });
    if (st) {
      if (!st.isDirectory()) throw new UsageError(`cannot create the backup repository ${path}: ${p} is ${fileKind(st)}, not a directory`, { hint: 'Pass a directory to --repo (backup.repo)' });
      break;
    }
    missing.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const p of missing) {
    await mkdir(p, { mode }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw pathError(p, err, `create the backup repository ${path}`);
    });
  }
}


/** A directory inside the repository that is not a real directory (a symlink above all): refused, nothing changed. */
function notADirectory(path: string, st: Stats, domain?: string): VirtcbtError {
  return new VirtcbtError(`${path} in the backup repository is ${fileKind(st)}, not a directory: virtcbt never follows a link inside a repository`, {
    domain, hint: `Nothing was changed. Replace ${path} by a real directory (move the chain into it) or remove it`,
  });
}

/** Checks a prune journal read from the chain of `consumer`: every name in it is one of that chain's. */
function journalProblem(j: unknown, consumer: string): string | undefined {
  if (!j || typeof j !== 'object') return 'it is not a JSON object';
  const x = j as Record<string, unknown>;
  if (!Number.isSafeInteger(x.keep) || (x.keep as number) < 1) return 'keep is not a count';
  if (!Array.isArray(x.removing) || x.removing.some((id) => pointSeq(consumer, id) === undefined)) return 'removing names something other than points of this chain';
  if (x.into !== null && pointSeq(consumer, x.into) === undefined) return `into ${JSON.stringify(x.into)} is not a point of this chain`;
  if (!Array.isArray(x.disks)) return 'disks missing';
  for (const d of x.disks as Record<string, unknown>[]) {
    if (!d || typeof d.target !== 'string' || !PLAIN_NAME.test(d.target)) return `disk target ${JSON.stringify(d?.target)} is not a device name`;
    if (x.into === null || d.merged !== imageName(x.into as string, d.target, true)) return `disk ${d.target}: merged image ${JSON.stringify(d.merged)} is not ${x.into === null ? 'expected' : imageName(x.into as string, d.target, true)}`;
    if (!imageOwner(consumer, d.target, d.base) || !imageOwner(consumer, d.target, d.top)) return `disk ${d.target}: base or top is not an image of this chain`;
  }
  return undefined;
}

export class Repository {
  constructor(readonly root: string) {}

  /**
   * Checks that the repository directory exists (or creates it) and is a directory. The root may
   * be a symlink the admin chose: it is resolved here, once; nothing below it is followed.
   */
  static async open(root: string, opts: { create?: boolean } = {}): Promise<Repository> {
    if (!root) throw new UsageError('no repository given', { hint: 'Pass --repo DIR or set backup.repo in the config' });
    if (opts.create) await makeDirs(root, 0o750);
    const st = await stat(root).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw pathError(root, err, `open the backup repository ${root}`);
    });
    if (!st) throw new UsageError(`backup repository ${root} does not exist`, { hint: 'Check --repo (backup.repo); `virtcbt backup` creates it' });
    if (!st.isDirectory()) throw new UsageError(`backup repository ${root} is ${fileKind(st)}, not a directory`, { hint: 'Pass a directory to --repo (backup.repo)' });
    return new Repository(await realpath(root));
  }

  domainDir(domain: string): string {
    return join(this.root, pathSafe(domain));
  }

  chainDir(domain: string, consumer: string): string {
    return join(this.domainDir(domain), pathSafe(consumer));
  }

  /**
   * The chain directory after checking that it and the domain's directory are real directories
   * (lstat: never a symlink); undefined when it does not exist and `create` is not set.
   */
  async realChainDir(domain: string, consumer: string, opts: { create?: boolean } = {}): Promise<string | undefined> {
    for (const dir of [this.domainDir(domain), this.chainDir(domain, consumer)]) {
      let st = await lstat(dir).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw pathError(dir, err, `read the backup chain of ${domain} for ${consumer}`);
      });
      if (!st) {
        if (!opts.create) return undefined;
        await mkdir(dir, { mode: 0o750 }).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'EEXIST') throw pathError(dir, err, `create the backup chain of ${domain} for ${consumer}`);
        });
        st = await lstat(dir);
      }
      if (!st.isDirectory()) throw notADirectory(dir, st, domain);
    }
    return this.chainDir(domain, consumer);
  }

  /**
   * The path of an image a manifest names: inside the chain directory (inChain) and a regular
   * file (lstat: a symlink there is refused, never followed). An error naming it otherwise.
   */
  async imagePath(domain: string, consumer: string, file: string): Promise<string> {
    const path = inChain(this.chainDir(domain, consumer), file);
    const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') throw new VirtcbtError(`image ${path} is missing`, { domain, hint: REPAIR_HINT });
      throw pathError(path, err, `read the image ${path}`);
    });
    if (!st.isFile()) {
      throw new VirtcbtError(`image ${path} is ${fileKind(st)}, not a regular file: virtcbt never follows a link inside a repository`, { domain, hint: REPAIR_HINT });
    }
    return path;
  }

  /** Domains with anything in the repository (a symlink among them is listed, to be reported). */
  async domains(): Promise<string[]> {
    const names = await readdir(this.root, { withFileTypes: true }).catch(() => []);
    return names.filter((d) => (d.isDirectory() || d.isSymbolicLink()) && !d.name.startsWith('.')).map((d) => pathName(d.name))
      .filter((n): n is string => n !== undefined).sort();
  }

  /** Consumers with a chain directory for `domain` (a symlink among them is listed, to be reported by chainState). */
  async consumers(domain: string): Promise<string[]> {
    const dir = this.domainDir(domain);
    const st = await lstat(dir).catch(() => undefined);
    if (!st) return [];
    if (!st.isDirectory()) throw notADirectory(dir, st, domain);
    const names = await readdir(dir, { withFileTypes: true }).catch(() => []);
    return names.filter((d) => (d.isDirectory() || d.isSymbolicLink()) && !d.name.startsWith('.')).map((d) => pathName(d.name))
      .filter((n): n is string => n !== undefined).sort();
  }

  /**
   * Reads one consumer's chain: every manifest that is intact, and every file that is damaged or
   * not a chain's (reported, not thrown). Throws only when the chain directory itself cannot be
   * used (a symlink, unreadable).
   */
  async chainState(domain: string, consumer: string): Promise<ChainState> {
    const state: ChainState = { points: [], all: [], damaged: [], ignored: [], nextSeq: 1 };
    if (!PLAIN_NAME.test(consumer)) {
      throw new VirtcbtError(`${this.chainDir(domain, consumer)} is not a chain directory: ${JSON.stringify(consumer)} is not a consumer name`, { domain, hint: REPAIR_HINT });
    }
    const dir = await this.realChainDir(domain, consumer);
    if (!dir) return state;
    const where = { domain, consumer };
    let maxSeq = 0;
    const entries = await readdir(dir).catch((err: unknown) => { throw pathError(dir, err, `read the backup chain of ${domain} for ${consumer}`); });
    await Promise.all(entries.map(async (f) => {
      if (f.startsWith('.') || !f.endsWith('.json')) return;
      const path = join(dir, f);
      const seq = pointSeq(consumer, f.slice(0, -'.json'.length));
      if (seq === undefined) {
        state.ignored.push({ path, consumer, problem: `not named like a restore point of ${consumer} (${consumer}-NNNN.json): ignored` });
        return;
      }
      maxSeq = Math.max(maxSeq, seq);
      try {
        state.all.push(await readManifestCached(path, where));
      } catch (err) {
        state.damaged.push({ path, consumer, id: f.slice(0, -'.json'.length), problem: (err as Error).message });
      }
    }));
    state.all.sort((a, b) => a.seq - b.seq);
    state.damaged.sort((a, b) => a.path.localeCompare(b.path));
    state.nextSeq = maxSeq + 1;
    try {
      state.journal = await this.pruneJournal(domain, consumer);
    } catch (err) {
      // Nothing is hidden then: the points it would remove are still whole until a prune finishes.
      state.damaged.push({ path: join(dir, PRUNE_JOURNAL), consumer, problem: (err as Error).message });
    }
    const hidden = new Set(state.journal?.removing ?? []);
    state.points = state.all.filter((m) => !hidden.has(m.id));
    return state;
  }

  /** Intact restore points of one consumer's chain, in sequence order; those a pending prune removes are left out unless asked for. */
  async chain(domain: string, consumer: string, opts: { includePruning?: boolean } = {}): Promise<Manifest[]> {
    const s = await this.chainState(domain, consumer);
    return opts.includePruning ? s.all : s.points;
  }

  /**
   * Every chain of a domain. A chain directory that cannot be used is reported, the others read.
   * The points are in each chain's sequence order (never by their time: a clock set back must
   * not reorder a chain); the chains are merged by time.
   */
  async domainState(domain: string): Promise<DomainState> {
    const out: DomainState = { domain, chains: [], points: [], damaged: [], ignored: [] };
    let consumers: string[];
    try {
      consumers = await this.consumers(domain);
    } catch (err) {
      out.damaged.push({ path: this.domainDir(domain), problem: (err as Error).message });
      return out;
    }
    for (const consumer of consumers) {
      try {
        const s = await this.chainState(domain, consumer);
        out.chains.push({ consumer, ...s });
        out.damaged.push(...s.damaged);
        out.ignored.push(...s.ignored);
      } catch (err) {
        out.damaged.push({ path: this.chainDir(domain, consumer), consumer, problem: (err as Error).message });
      }
    }
    const heads = out.chains.map((c) => ({ points: c.points, i: 0 }));
    for (;;) {
      let best: { points: Manifest[]; i: number } | undefined;
      for (const h of heads) {
        const m = h.points[h.i];
        if (!m) continue;
        const b = best?.points[best.i];
        if (!b || m.time < b.time || (m.time === b.time && m.id < b.id)) best = h;
      }
      if (!best) break;
      out.points.push(best.points[best.i++]!);
    }
    return out;
  }

  /** Every intact restore point of a domain (all consumers), oldest first (see domainState). */
  async list(domain: string): Promise<Manifest[]> {
    return (await this.domainState(domain)).points;
  }

  /**
   * The restore point `at` names: a backup id, or an ISO time (the newest backup taken at or
   * before it); the newest of the domain when `at` is undefined. Damaged manifests are skipped,
   * unless `at` names one.
   */
  async resolve(domain: string, at?: string): Promise<Manifest> {
    const state = await this.domainState(domain);
    const all = state.points;
    // A point that is not found may be in a file or chain directory that could not be read: say which.
    const unreadable = state.damaged.length === 0 ? '' : `; ${state.damaged.length} file(s) of ${domain} in the repository could not be read: ` +
      state.damaged.slice(0, 3).map((d) => `${d.path} (${d.problem})`).join('; ') + (state.damaged.length > 3 ? '; ...' : '');
    const notFound = (what: string) => new NotFoundError(what + unreadable, {
      domain, hint: state.damaged.length ? `Run \`virtcbt verify --repo ${this.root} ${domain}\` for the whole report` : `List the restore points with \`virtcbt list --repo ${this.root} ${domain}\``,
    });
    if (at !== undefined) {
      const bad = state.damaged.find((d) => d.id === at);
      if (bad) throw new NotFoundError(`backup ${at} of ${domain} cannot be used: ${bad.problem}`, { domain, hint: REPAIR_HINT });
    }
    if (all.length === 0) throw notFound(`the repository ${this.root} has no ${state.damaged.length ? 'intact ' : ''}backups of ${domain}`);
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
    return (await this.chainState(domain, consumer)).nextSeq;
  }

  // ---- lock ------------------------------------------------------------------------------

  /**
   * Takes the chain's lock (a file created exclusively, holding the owner's pid). A lock whose
   * process is gone (killed) is taken over. Creates the chain directory (refusing a symlink).
   */
  async lock(domain: string, consumer: string, what: string): Promise<RepoLock> {
    const dir = (await this.realChainDir(domain, consumer, { create: true }))!;
    const path = join(dir, LOCK_FILE);
    const me = JSON.stringify({ pid: process.pid, host: hostname(), what, at: new Date().toISOString() });
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const fh = await open(path, CREATE_EXCLUSIVE, 0o640);
        await fh.writeFile(me);
        await fh.close();
        return { release: () => rm(path, { force: true }) };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          const e = pathError(path, err, `lock the backup chain ${dir}`);
          throw new VirtcbtError(e.message, { domain, cause: err, hint: e.hint });
        }
      }
      let owner: { pid?: number; host?: string; what?: string; at?: string } = {};
      try {
        owner = JSON.parse((await readRepoFile(path)).text);
      } catch {
        // Half-written by a process killed between create and write (or not a file): stale.
      }
      if (Number.isSafeInteger(owner.pid) && owner.host === hostname() && pidAlive(owner.pid!) && owner.pid !== process.pid) {
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
      const tmp = join(this.chainDir(domain, consumer), `${INPROGRESS_FILE}.tmp-${process.pid}`);
      await rm(tmp, { force: true });
      const fh = await open(tmp, CREATE_EXCLUSIVE, 0o640);
      try {
        await fh.writeFile(JSON.stringify(ip, null, 2));
      } finally {
        await fh.close();
      }
      await rename(tmp, path);
    } else {
      await writeFileDurable(path, JSON.stringify(ip, null, 2));
    }
  }

  /**
   * The marker of an interrupted backup. One that cannot be read, or names anything but this
   * chain's, still says a backup was interrupted: it comes back with generation 0 (every open
   * pass of the consumer counts as that backup's) and no files or processes.
   */
  async readInProgress(domain: string, consumer: string): Promise<InProgress | undefined> {
    let text: string;
    try {
      text = (await readRepoFile(join(this.chainDir(domain, consumer), INPROGRESS_FILE))).text;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      text = '';
    }
    try {
      const ip = JSON.parse(text) as InProgress;
      if (pointSeq(consumer, ip.id) !== undefined && Number.isSafeInteger(ip.generation) && (ip.pass === null || Number.isSafeInteger(ip.pass))) {
        return {
          ...ip,
          files: Array.isArray(ip.files) ? ip.files.filter((f) => typeof f === 'string' && f.startsWith(`${ip.id}.`)) : [],
          pids: Array.isArray(ip.pids) ? ip.pids.filter((p) => Number.isSafeInteger(p) && p > 1) : [],
        };
      }
    } catch { /* fall through */ }
    return { id: '(unreadable marker)', pass: null, generation: 0, files: [], pids: [], pid: 0, startedAt: '' };
  }

  async clearInProgress(domain: string, consumer: string): Promise<void> {
    await rm(join(this.chainDir(domain, consumer), INPROGRESS_FILE), { force: true });
  }

  /** The pending prune's journal; undefined when there is none, an error naming the file when it is damaged. */
  async pruneJournal(domain: string, consumer: string): Promise<PruneJournal | undefined> {
    const path = join(this.chainDir(domain, consumer), PRUNE_JOURNAL);
    let j: unknown;
    try {
      j = JSON.parse((await readRepoFile(path)).text);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new VirtcbtError(`prune journal ${path} is unreadable: ${(err as Error).message}`, { domain, cause: err, hint: REPAIR_HINT });
    }
    const problem = journalProblem(j, consumer);
    if (problem) throw new VirtcbtError(`prune journal ${path} is not valid: ${problem}`, { domain, hint: REPAIR_HINT });
    return j as PruneJournal;
  }

  /**
   * After a killed backup: kills the qemu-nbd it left, removes image files no manifest names and
   * temp files. Call with the chain locked. Returns the interrupted backup (its pass must be
   * aborted if still open) and the files removed. Only regular files are removed (a link is
   * never followed nor taken for an image), and nothing that may be a damaged manifest's.
   */
  async cleanupLeftovers(domain: string, consumer: string, opts: { keepMarker?: boolean } = {}): Promise<{
    interrupted?: InProgress; removed: string[];
    /** The chain as chain() gives it, and the next sequence number (read once here for the caller). */
    chain: Manifest[]; nextSeq: number;
    /** Damaged manifests and journal of the chain, left as they are. */
    damaged: RepoProblem[];
  }> {
    const dir = await this.realChainDir(domain, consumer);
    if (!dir) return { removed: [], chain: [], nextSeq: 1, damaged: [] };
    const interrupted = await this.readInProgress(domain, consumer);
    for (const pid of interrupted?.pids ?? []) await killStaleQemuNbd(pid, dir);
    const state = await this.chainState(domain, consumer);
    const keep = new Set(state.all.flatMap((m) => m.disks.flatMap((d) => [d.file, ...(d.backing ? [d.backing] : [])])));
    for (const d of state.journal?.disks ?? []) { keep.add(d.base); keep.add(d.top); keep.add(d.merged); }
    // A damaged manifest's images may be all that is left of that point: kept for the admin.
    const damagedIds = state.damaged.flatMap((d) => (d.id ? [`${d.id}.`] : []));
    // A damaged journal's merged images may hold a commit under way: kept with their point.
    const journalDamaged = state.damaged.some((d) => d.path.endsWith(PRUNE_JOURNAL));
    const removed: string[] = [];
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const f = e.name;
      const temp = f.startsWith('.') && f.includes('.tmp-');
      if (!temp && !(f.endsWith('.qcow2') && !keep.has(f))) continue;
      if (damagedIds.some((p) => f.startsWith(p)) || (journalDamaged && f.endsWith('.merged.qcow2'))) continue;
      const path = inChain(dir, f);
      // lstat: only a regular file is removed; a symlink (or anything else) is left untouched.
      const st = await lstat(path).catch(() => undefined);
      if (!st?.isFile()) continue;
      await rm(path, { force: true });
      removed.push(f);
    }
    // The marker tells virtcbtd which pass to abort: only the backup job clears it.
    if (interrupted && !opts.keepMarker) await this.clearInProgress(domain, consumer);
    return { interrupted, removed, chain: state.points, nextSeq: state.nextSeq, damaged: state.damaged };
  }
}
