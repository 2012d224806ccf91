// The manifest of one backup (a restore point): what was copied, from which instant, into which
// files, with the checksum of the data. A backup exists exactly when its manifest does; manifests
// are written atomically (temp file, fsync, rename, fsync of the directory).
import { constants } from 'node:fs';
import { lstat, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { VirtcbtError } from '../util/errors.js';
import { fileStamp } from '../util/file-stamp.js';
import { NotRegularFileError, readRegularFile } from '../util/regular-file.js';
import { DIGEST_ALGORITHM, DIGEST_SEGMENT } from './digest.js';
import { PLAIN_NAME, imageName, imageOwner, inChain, manifestName, pointId, pointSeq } from './names.js';

export const MANIFEST_FORMAT = 'virtcbt-backup/1';
/** A change log's identity as src/changelog makes it (a random UUID); checked here without loading the change log. */
const LOG_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface BackupDisk {
  target: string;
  sizeBytes: number;
  /** Image of this restore point, relative to the chain directory. */
  file: string;
  /** The image's backing file (relative), or null for a standalone image. */
  backing: string | null;
  /** Everything was copied (new chain for this disk): the consumer's first pass, a raised floor, --full. */
  full: boolean;
  reason?: string;
  /** The data copied: [offset, length], sorted and disjoint. Everything else reads as the backing (or zero). */
  extents: [number, number][];
  /** Sum of the extents' lengths. */
  bytes: number;
  /** Bytes written as data (holes and zeroes inside the extents are not). */
  written: number;
  /** Checksum of the extents' bytes, see digest.ts. */
  sha256: string;
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  /** `CONSUMER-NNNN`: unique per domain. */
  id: string;
  domain: string;
  uuid: string;
  consumer: string;
  seq: number;
  /** The instant the data is from: the rotation transaction (ISO 8601). */
  time: string;
  completedAt: string;
  /**
   * The identity of the change log `generation` and `since` belong to (a UUID; absent in manifests of a virtcbt
   * before identities: unknown). A chain is continued only under the same identity.
   */
  logId?: string;
  /** The change log's generation this backup covers up to (the pass's P). */
  generation: number;
  /** The consumer's last generation before (null: none); the incremental covers (since, generation]. */
  since: number | null;
  pass: number | null;
  /** The restore point this one's overlays are backed by (null: every disk is standalone). */
  parent: string | null;
  kind: 'full' | 'incremental';
  /** Whether the domain was running (fleecing) or stopped (images read directly). */
  running: boolean;
  /** 'filesystem': the guest agent froze the filesystems around the snapshot; 'crash': it did not. */
  consistency: 'filesystem' | 'crash';
  consistencyNote?: string;
  /** How long the guest's filesystems stayed frozen (null when not frozen). */
  freezeWindowMs: number | null;
  digest: { algorithm: typeof DIGEST_ALGORITHM; segment: number };
  disks: BackupDisk[];
  /** Restore points folded into this one by prune. */
  merged?: string[];
  domainXml: string;
}

/** Flags for a new file in the repository: created here, never through a symlink, never an existing file. */
export const CREATE_EXCLUSIVE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

export function newDigestInfo(): Manifest['digest'] {
  return { algorithm: DIGEST_ALGORITHM, segment: DIGEST_SEGMENT };
}

/**
 * Writes `data` to `path` so that a crash leaves either the old file or the new one, never a torn
 * one. `beforeRename` (e.g. the fsync of what the file will name) must succeed before the new
 * file takes its name; it runs alongside the write and fsync of the temporary file.
 */
export async function writeFileDurable(path: string, data: string, opts: { beforeRename?: Promise<void> } = {}): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}`);
  const written = (async () => {
    // A temp file of a killed process with the same pid goes first; then the file is created
    // exclusively, never through a symlink or over something another process made meanwhile.
    await rm(tmp, { force: true });
    const fh = await open(tmp, CREATE_EXCLUSIVE, 0o640);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
  })();
  try {
    await Promise.all([written, opts.beforeRename]);
  } catch (err) {
    await written.catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(dirname(path));
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function writeManifest(dir: string, m: Manifest, opts: { beforeRename?: Promise<void> } = {}): Promise<void> {
  await writeFileDurable(inChain(dir, manifestName(m.id)), JSON.stringify(m, null, 2) + '\n', opts);
}

/** The chain a manifest is read from: what its domain, consumer and id must say. */
export interface ChainRef {
  domain: string;
  consumer: string;
}

const HINT_DAMAGED = 'Run `virtcbt verify`; restore from another backup, or move the file out of the repository';

/**
 * Larger than any manifest: one of a fragmented 2 TiB disk lists about a million extents (~30 MiB).
 * A file bigger than this is not read into memory at all.
 */
const MAX_REPO_FILE = 256 * 1024 * 1024;

/**
 * Reads a file of the repository without following a symlink at its name (a FIFO or device there
 * is refused too, without blocking on it). Returns the text and the stamp of what was read.
 */
export async function readRepoFile(path: string): Promise<{ text: string; stamp: string }> {
  const { text, stat } = await readRegularFile(path, MAX_REPO_FILE);
  return { text, stamp: fileStamp(stat) };
}

/** Whether `n` is not a byte count or offset (a safe non-negative integer). */
function notBytes(n: unknown): boolean {
  return typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0;
}

/**
 * What is wrong with a manifest read from `file` in the chain `where`, or undefined. Every name in
 * it becomes a path or a backing link: the id must be the file's own, of this consumer; images
 * must be this point's (`ID.TARGET.qcow2`, `ID.TARGET.merged.qcow2`), backing images those of an
 * older point of the same chain and disk.
 */
export function manifestProblem(m: unknown, where: ChainRef, file: string): string | undefined {
  if (!m || typeof m !== 'object' || Array.isArray(m)) return 'it is not a JSON object';
  const x = m as Record<string, unknown>;
  if (x.format !== MANIFEST_FORMAT) return `format is ${JSON.stringify(x.format)}, expected ${MANIFEST_FORMAT}`;
  const seq = pointSeq(where.consumer, x.id);
  if (seq === undefined) return `id ${JSON.stringify(x.id)} is not a restore point id of consumer ${where.consumer} (${pointId(where.consumer, 1)}, ...)`;
  const id = x.id as string;
  if (manifestName(id) !== file) return `id ${id} does not match the file name ${file}`;
  if (x.seq !== seq) return `seq ${JSON.stringify(x.seq)} does not match the id ${id}`;
  if (x.consumer !== where.consumer) return `consumer ${JSON.stringify(x.consumer)} is not the directory's (${where.consumer})`;
  if (x.domain !== where.domain) return `domain ${JSON.stringify(x.domain)} is not the directory's (${where.domain})`;
  if (typeof x.time !== 'string' || Number.isNaN(Date.parse(x.time))) return `time ${JSON.stringify(x.time)} is not a time`;
  if (typeof x.uuid !== 'string') return 'uuid missing';
  if (x.kind !== 'full' && x.kind !== 'incremental') return `kind ${JSON.stringify(x.kind)} is neither full nor incremental`;
  if (!Number.isSafeInteger(x.generation)) return 'generation missing';
  if (x.logId !== undefined && (typeof x.logId !== 'string' || !LOG_ID.test(x.logId))) return `logId ${JSON.stringify(x.logId)} is not a change-log identity (a UUID)`;
  if (x.parent !== null && (pointSeq(where.consumer, x.parent) ?? seq) >= seq) return `parent ${JSON.stringify(x.parent)} is not an older point of this chain`;
  if (x.merged !== undefined && (!Array.isArray(x.merged) || x.merged.some((p) => pointSeq(where.consumer, p) === undefined))) return 'merged names something other than points of this chain';
  if (typeof x.domainXml !== 'string') return 'domainXml missing';
  if (!Array.isArray(x.disks) || x.disks.length === 0) return 'no disks';
  const targets = new Set<string>();
  for (const d of x.disks as Record<string, unknown>[]) {
    if (!d || typeof d !== 'object' || typeof d.target !== 'string' || !PLAIN_NAME.test(d.target)) return `disk target ${JSON.stringify(d?.target)} is not a device name`;
    const t = d.target;
    if (targets.has(t)) return `disk ${t} is listed twice`;
    targets.add(t);
    if (d.file !== imageName(id, t) && d.file !== imageName(id, t, true)) return `disk ${t}: file ${JSON.stringify(d.file)} is not ${imageName(id, t)} or ${imageName(id, t, true)}`;
    if (d.backing !== null && (imageOwner(where.consumer, t, d.backing)?.seq ?? seq) >= seq) {
      return `disk ${t}: backing file ${JSON.stringify(d.backing)} is not an image of disk ${t} of an older point of this chain`;
    }
    if (notBytes(d.sizeBytes) || notBytes(d.bytes) || notBytes(d.written)) return `disk ${t}: sizeBytes, bytes or written is not a byte count`;
    if (typeof d.full !== 'boolean' || typeof d.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(d.sha256)) return `disk ${t}: full or sha256 missing`;
    if (!Array.isArray(d.extents)) return `disk ${t}: extents missing`;
    let end = 0;
    for (const e of d.extents as unknown[]) {
      if (!Array.isArray(e) || e.length !== 2 || notBytes(e[0]) || notBytes(e[1])) return `disk ${t}: extent ${JSON.stringify(e)} is not [offset, length]`;
      const [o, l] = e as [number, number];
      if (o < end || o + l > (d.sizeBytes as number)) return `disk ${t}: extent [${o}, ${l}] overlaps another or lies outside the disk`;
      end = o + l;
    }
  }
  return undefined;
}

/** Reads and checks the manifest at `path` (in the chain `where`); a damaged one is an error naming the file. */
export async function readManifest(path: string, where: ChainRef): Promise<Manifest> {
  return (await readManifestStamped(path, where)).m;
}

async function readManifestStamped(path: string, where: ChainRef): Promise<{ m: Manifest; stamp: string }> {
  let read: { text: string; stamp: string };
  let m: unknown;
  try {
    read = await readRepoFile(path);
    m = JSON.parse(read.text);
  } catch (cause) {
    const why = cause instanceof NotRegularFileError ? `it is ${cause.what}` : (cause as Error).message;
    throw new VirtcbtError(`backup manifest ${path} is unreadable: ${why}`, { domain: where.domain, cause, hint: HINT_DAMAGED });
  }
  const problem = manifestProblem(m, where, basename(path));
  if (problem) throw new VirtcbtError(`backup manifest ${path} is not valid: ${problem}`, { domain: where.domain, hint: HINT_DAMAGED });
  return { m: m as Manifest, stamp: read.stamp };
}

/**
 * Parsed manifests by path, reused while the file is unchanged (same device, inode, size, mtime and ctime:
 * manifests are only ever replaced whole, by rename). Every backup reads its consumer's whole
 * chain (the parent, the images to keep): measured, 30 manifests with one full backup of 20,000
 * extents per disk took 25-47 ms to read and parse, 365 took 130-230 ms; from here, one stat each.
 * The manifests handed out are frozen: a caller that changes one must change a copy.
 */
const cache = new Map<string, { key: string; m: Manifest }>();
const CACHE_MAX = 4096;

export async function readManifestCached(path: string, where: ChainRef): Promise<Manifest> {
  // lstat: a symlink at the name is never followed (readManifest refuses it by name).
  const st = await lstat(path, { bigint: true }).catch(() => undefined);
  const hit = cache.get(path);
  if (st && hit?.key === `${where.domain}/${fileStamp(st)}`) return hit.m;
  const { m, stamp } = await readManifestStamped(path, where);
  const frozen = deepFreeze(m);
  cache.delete(path);
  // Keyed by what was read (the open file's stamp), and by the chain it was checked against.
  cache.set(path, { key: `${where.domain}/${stamp}`, m: frozen });
  if (cache.size > CACHE_MAX) cache.delete(cache.keys().next().value as string);
  return frozen;
}

function deepFreeze<T>(v: T): T {
  if (v && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v as object)) deepFreeze(x);
  }
  return v;
}
