// Runs one scan job: each disk read over NBD with TLS, its partitions and ext2/3/4 filesystems found by
// src/fs, files (all, or only those owning changed blocks) streamed to clamd several at a time.
import { createHash } from 'node:crypto';
import type { Endpoint } from '../../copy/index.js';
import { NbdEndpoint } from '../../copy/index.js';
import { coarsen, intersect, merge, toPairs, type Extent } from '../../extent/index.js';
import { ChunkRing, DIGEST_GRANULE, DiskReader, ExtFilesystem, FilesystemError, GranuleDigestSession, OwnerIndex, OwnerIndexTooLarge, detectFilesystem, fileType, readPartitions, wholeGranules, type GranuleDigests, type Inode, type InodeMap, type Ownership, type Partition } from '../../fs/index.js';
import { CONTEXT_BASE_ALLOCATION, NbdUnsupportedError, parseNbdUri } from '../../nbd/index.js';
import { errorMessage, UsageError } from '../../util/errors.js';

/** A filesystem error's own words: its hint (about used maps and e2fsck) is for the sync room. */
const why = (err: FilesystemError) => err.message;
import type { InfectedFile, LimitHit, LimitName, NotScanned, ScanEvent, ScanJob, ScanResult, SkippedFile, SkipReason } from '../protocol.js';
import type { ClamdClient, ClamdSession, ClamdVerdict } from './clamd.js';
import { SpoolFile, SpoolWriteError, type ClamdSpool } from './clamd-spool.js';
import { OwnerIndexStore } from './owner-indexes.js';

export interface ScanLimits {
  /** Files larger than this are skipped (reported), not read. */
  maxFileBytes: number;
  /** At most this many files per job are scanned; the rest are skipped (reported). */
  maxFiles: number;
  /** After this long no new file is started and files in flight are abandoned (reported). */
  maxSeconds: number;
  /** clamd's StreamMaxLength: a larger file would be cut off by clamd, so it is skipped and reported instead. */
  streamMaxLength: number;
  /** Files streamed to clamd at once (clamd's MaxThreads is the useful upper bound). */
  concurrency: number;
}

export interface ScanJobOptions {
  clamd: ClamdClient;
  /** Files handed to clamd by path where it can read them (clamd-spool.ts); INSTREAM otherwise. */
  spool?: ClamdSpool;
  /** ca-cert.pem, client-cert.pem, client-key.pem the scanner presents to NBD exports. */
  nbdTlsDir: string;
  limits: ScanLimits;
  emit: (event: ScanEvent) => void;
  signal?: AbortSignal;
  /** Plain nbd:// accepted (tests of the scanning alone); off in the service: snapshots travel encrypted. */
  allowPlainNbd?: boolean;
  /** Told of every file whose contents are opened (the service logs it at debug level). */
  onFile?: (disk: string, partition: number, path: string) => void;
  /** Opens a disk (tests); NbdEndpoint with nbdTlsDir by default. */
  open?: (uri: string, signal?: AbortSignal) => Promise<Endpoint>;
  /** Owner indexes kept between scans (ScanJob.ownerIndex), and the identity of the hypervisor that posted the job. */
  ownerIndexes?: { store: OwnerIndexStore; client: string };
}

/** At most this many skipped files are listed one by one (the counts in limitsHit stay exact). */
const MAX_LISTED_SKIPS = 1000;
/**
 * At most this many unowned extents are reported per disk (more are coarsened: a superset, so
 * the next scan checks a little more, never less). The hypervisor applies the same bound.
 */
export const MAX_UNOWNED_EXTENTS = 20_000;
/** Progress events at most this often. */
const PROGRESS_MS = 500;

interface FileTask {
  disk: string;
  partition: number;
  fs: ExtFilesystem;
  ino: number;
  /** Already read (incremental scans find owners by reading every inode). */
  inode?: Inode;
  /** Known from the walk (full scans), or looked up when a report needs it (incremental scans). */
  path?: string;
  paths?: PathFinder;
  /** Told the file's granule digests once it was read in whole and found clean, or undefined (owner index). */
  digests?: { key: Buffer; keep: (d: GranuleDigests | undefined) => void };
}

/**
 * The paths of some inodes, found by one walk of the tree started only when a path is first asked
 * for, and stopped once all are found: an incremental scan of clean files never walks the tree.
 */
class PathFinder {
  private found?: Promise<Map<number, string>>;

  constructor(private readonly fs: ExtFilesystem, private readonly wanted: ReadonlySet<number>) {}

  private all(): Promise<Map<number, string>> {
    this.found ??= (async () => {
      const m = new Map<number, string>();
      for await (const e of this.fs.walk()) {
        if (!this.wanted.has(e.ino) || m.has(e.ino)) continue;
        m.set(e.ino, e.path);
        if (m.size === this.wanted.size) break;
      }
      return m;
    })();
    return this.found;
  }

  async path(ino: number): Promise<string> {
    try {
      return (await this.all()).get(ino) ?? `(inode ${ino}, in no directory: deleted while open)`;
    } catch (err) {
      // A report is not lost for want of a path: damage, or the export gone mid-walk, is said instead.
      return err instanceof FilesystemError ? `(inode ${ino}: no path, the directory tree is damaged: ${why(err)})` : `(inode ${ino}: no path: ${errorMessage(err)})`;
    }
  }
}

const pathOf = (t: FileTask): Promise<string> => (t.path !== undefined ? Promise.resolve(t.path) : t.paths!.path(t.ino));

/** Checks a posted job's shape; a bad job is a UsageError naming the field (the API answers 400). */
export function checkJob(v: unknown): ScanJob {
  const bad = (what: string) => new UsageError(`scan job: ${what}`, { hint: 'Send { id, domain, disks: [{ target, uri, size, extents? }] }' });
  if (!v || typeof v !== 'object') throw bad('the body must be a JSON object');
  const j = v as Record<string, unknown>;
  if (typeof j.id !== 'string' || !/^[A-Za-z0-9._:-]{1,128}$/.test(j.id)) throw bad('id must be 1-128 letters, digits, ".", "_", ":" or "-"');
  if (typeof j.domain !== 'string' || j.domain === '' || j.domain.length > 256) throw bad('domain must be a domain name');
  if (!Array.isArray(j.disks) || j.disks.length === 0 || j.disks.length > 64) throw bad('disks must be a list of 1-64 disks');
  if (j.changedSince !== undefined && !(typeof j.changedSince === 'number' && Number.isFinite(j.changedSince))) {
    throw bad('changedSince must be a time in Unix seconds');
  }
  if (j.ownerIndex !== undefined) {
    const oi = j.ownerIndex as Record<string, unknown> | null;
    const token = (t: unknown) => typeof t === 'string' && /^[A-Za-z0-9._:-]{1,128}$/.test(t);
    if (!oi || typeof oi !== 'object' || !token(oi.next) || (oi.base !== undefined && !token(oi.base)) || Object.keys(oi).some((k) => k !== 'base' && k !== 'next')) {
      throw bad('ownerIndex must be { base?, next }, tokens of 1-128 letters, digits, ".", "_", ":" or "-"');
    }
  }
  const targets = new Set<string>();
  j.disks.forEach((d: unknown, i) => {
    const at = `disks[${i}]`;
    if (!d || typeof d !== 'object') throw bad(`${at} must be an object`);
    const disk = d as Record<string, unknown>;
    for (const k of Object.keys(disk)) if (!['target', 'uri', 'size', 'extents'].includes(k)) throw bad(`${at}: unknown key '${k}'`);
    if (typeof disk.target !== 'string' || !/^[A-Za-z0-9_-]{1,32}$/.test(disk.target)) throw bad(`${at}.target must be a disk target such as vda`);
    if (targets.has(disk.target)) throw bad(`${at}.target ${disk.target} appears twice`);
    targets.add(disk.target);
    if (typeof disk.uri !== 'string' || !/^nbds?(\+unix)?:\/\//.test(disk.uri)) throw bad(`${at}.uri must be an nbds:// URI`);
    if (!Number.isSafeInteger(disk.size) || (disk.size as number) <= 0) throw bad(`${at}.size must be a positive whole number of bytes`);
    if (disk.extents !== undefined) {
      if (!Array.isArray(disk.extents)) throw bad(`${at}.extents must be a list of [offset, length]`);
      for (const e of disk.extents as unknown[]) {
        if (!Array.isArray(e) || e.length !== 2 || !e.every((n) => Number.isSafeInteger(n) && (n as number) >= 0)
          || (e[0] as number) + (e[1] as number) > (disk.size as number)) {
          throw bad(`${at}.extents: ${JSON.stringify(e)} is not an [offset, length] inside the disk`);
        }
      }
    }
  });
  return j as unknown as ScanJob;
}

class Verdict {
  readonly infected: InfectedFile[] = [];
  readonly notScanned: NotScanned[] = [];
  readonly skipped: SkippedFile[] = [];
  readonly limits = new Map<LimitName, LimitHit>();
  readonly scanned = { files: 0, bytesRead: 0, nbdBytesRead: 0, filesOpened: 0 };
  /** Per incremental disk: changed bytes no file owned (ScanResult.unowned), as disk offsets. */
  readonly unowned = new Map<string, Extent[]>();
  skippedTotal = 0;

  /** Skipped files whose path is looked up once the scan is over. */
  readonly unnamed: { entry: SkippedFile; task: FileTask }[] = [];

  skip(t: FileTask, reason: SkipReason, limit?: { name: LimitName; value?: number }, detail?: string): void {
    this.skippedTotal++;
    if (this.skipped.length < MAX_LISTED_SKIPS) {
      const entry: SkippedFile = { disk: t.disk, partition: t.partition, path: t.path ?? '', reason, ...(detail ? { detail } : {}) };
      this.skipped.push(entry);
      if (t.path === undefined) this.unnamed.push({ entry, task: t });
    }
    if (limit) this.hit(limit.name, limit.value).files++;
  }

  hit(name: LimitName, value?: number): LimitHit {
    const hit = this.limits.get(name) ?? { limit: name, ...(value === undefined ? {} : { value }), files: 0 };
    this.limits.set(name, hit);
    return hit;
  }
}

/** The disk's URI with the scanner's own credentials: a directory named by the caller is never used. */
function target(uri: string, o: ScanJobOptions) {
  const t = parseNbdUri(uri);
  if (!t.tls && !o.allowPlainNbd) {
    throw new UsageError(`${uri} is not an NBD export over TLS`, { hint: 'Export the snapshot with TLS (nbds://) for the scanner\'s identity' });
  }
  return { ...t, tlsCertificates: t.tls ? o.nbdTlsDir : undefined, tlsVerifyPeer: true };
}

/**
 * The disk's export, with block status when the server has it (a blank region is then known
 * without reading it); a server without it is read all the same.
 */
async function openExport(t: ReturnType<typeof target>, signal?: AbortSignal): Promise<NbdEndpoint> {
  try {
    return await NbdEndpoint.open(t, { signal, metaContexts: [CONTEXT_BASE_ALLOCATION] });
  } catch (err) {
    if (!(err instanceof NbdUnsupportedError)) throw err;
    return NbdEndpoint.open(t, { signal });
  }
}

export async function runScanJob(job: ScanJob, o: ScanJobOptions): Promise<ScanResult> {
  const started = Date.now();
  const v = new Verdict();
  const modes: ScanResult['modes'] = {};
  // The time limit: no new file after it; files in flight are abandoned.
  const timeCtl = new AbortController();
  const timer = setTimeout(() => timeCtl.abort(), o.limits.maxSeconds * 1000);
  timer.unref();
  const signal = o.signal ? AbortSignal.any([o.signal, timeCtl.signal]) : timeCtl.signal;
  let lastProgress = 0;
  const stats: { bytesRead: number; requests: number }[] = [];
  const nbdBytes = () => stats.reduce((n, s) => n + s.bytesRead, 0);
  const progress = (force = false) => {
    const now = Date.now();
    if (!force && now - lastProgress < PROGRESS_MS) return;
    lastProgress = now;
    o.emit({ type: 'progress', id: job.id, files: v.scanned.files, bytesRead: v.scanned.bytesRead, nbdBytesRead: nbdBytes() });
  };
  let scannedCount = 0;

  // Whether this job hands files to clamd by path: probed once per job until clamd reads the spool.
  const spooling = o.spool ? await o.spool.ready(o.clamd, o.signal) : false;
  const handoff: { spooled: number; streamed: number; why?: string } = { spooled: 0, streamed: 0 };

  const scanFile = async (t: FileTask, clamdScan: (read: () => AsyncIterable<Uint8Array>, size: number) => Promise<ClamdVerdict>, ring: ChunkRing): Promise<void> => {
    if (timeCtl.signal.aborted) return v.skip(t, 'time limit', { name: 'maxSeconds', value: o.limits.maxSeconds });
    if (o.signal?.aborted) return;
    let inode;
    try {
      inode = t.inode ?? await t.fs.inode(t.ino);
    } catch (err) {
      if (!(err instanceof FilesystemError)) throw err;
      return v.skip(t, 'unreadable', undefined, why(err));
    }
    if (inode.size > o.limits.maxFileBytes) return v.skip(t, 'size limit', { name: 'maxFileBytes', value: o.limits.maxFileBytes }, `${inode.size} bytes`);
    if (inode.size > o.limits.streamMaxLength) return v.skip(t, 'stream limit', { name: 'streamMaxLength', value: o.limits.streamMaxLength }, `${inode.size} bytes`);
    if (scannedCount >= o.limits.maxFiles) return v.skip(t, 'count limit', { name: 'maxFiles', value: o.limits.maxFiles });
    scannedCount++;
    v.scanned.filesOpened++;
    if (o.onFile) o.onFile(t.disk, t.partition, await pathOf(t));
    let bytes = 0;
    const fileSignal = signal;
    // Its digests are kept only once it was read in whole and found clean.
    t.digests?.keep(undefined);
    let granules: GranuleDigestSession | undefined;
    // With digests the file's map is needed twice (the granules it fills whole, the reads): made once.
    let digestsOf: { map: InodeMap; whole: Set<number> } | undefined;
    // Chunks come from the worker's ring: clamd's session sends one while the next is read, and
    // holds at most one back (the ring has room for both and one more). Read again from the start
    // when a spool file could not be written and the file goes by INSTREAM instead.
    async function* chunks() {
      bytes = 0;
      if (t.digests && !digestsOf) {
        const map = await t.fs.map(inode!);
        digestsOf = { map, whole: wholeGranules(bytesOnDisk(map, inode!, t.fs.sb.blockSize)) };
      }
      const g = t.digests && new GranuleDigestSession(t.digests.key, digestsOf!.whole);
      granules = g;
      const onPiece = g && ((at: number, b: Buffer) => g.add(at, b));
      for await (const c of t.fs.readChunks(inode!, { ring, onPiece, map: digestsOf?.map })) {
        if (fileSignal.aborted) throw fileSignal.reason ?? new Error('aborted');
        bytes += c.length;
        yield c;
      }
    }
    let verdict;
    try {
      verdict = await clamdScan(chunks, inode.size);
    } catch (err) {
      if (timeCtl.signal.aborted && !o.signal?.aborted) return v.skip(t, 'time limit', { name: 'maxSeconds', value: o.limits.maxSeconds });
      if (err instanceof FilesystemError) return v.skip(t, 'unreadable', undefined, why(err));
      throw err;
    } finally {
      v.scanned.bytesRead += bytes;
      progress();
    }
    if (verdict.status === 'error') {
      const limit = /size limit/i.test(verdict.message);
      return v.skip(t, limit ? 'stream limit' : 'unreadable', limit ? { name: 'streamMaxLength', value: o.limits.streamMaxLength } : undefined, `clamd: ${verdict.message}`);
    }
    // Not clean and not infected: clamd read only part of it. Skipped like a file over our own limits.
    if (verdict.status === 'limit') return v.skip(t, 'clamd limit', { name: `clamd:${verdict.limit}` }, `clamd.conf ${verdict.limit} reached`);
    if (bytes !== inode.size) return v.skip(t, 'unreadable', undefined, `read ${bytes} of ${inode.size} bytes`);
    v.scanned.files++;
    if (verdict.status !== 'found' && granules) t.digests!.keep(granules.digests());
    if (verdict.status === 'found') {
      const file: InfectedFile = { disk: t.disk, partition: t.partition, path: await pathOf(t), signature: verdict.signature, size: inode.size, sha256: await digest(t.fs, inode) };
      v.infected.push(file);
      o.emit({ type: 'found', id: job.id, file });
    }
  };

  /**
   * Runs the tasks with `concurrency` files in flight (each worker one clamd session, one clamd
   * thread at a time). Tasks are pulled as workers get free: a walk feeding them is read no further
   * ahead than the scanning, so a full scan starts at once and never holds the whole file list.
   */
  const pool = async (tasks: Iterable<FileTask> | AsyncIterable<FileTask>) => {
    const source = (async function* () { yield* tasks; })();
    const worker = async () => {
      let session: ClamdSession | undefined;
      // The session's spool file: rewritten for each file, gone with the session.
      let spoolFile: SpoolFile | undefined;
      let spoolFailed = false;
      const ring = new ChunkRing(3);
      const clamdScan = async (read: () => AsyncIterable<Uint8Array>, size: number) => {
        if (!session || session.broken) {
          await spoolFile?.remove();
          spoolFile = undefined;
          session = await o.clamd.session(signal);
        }
        if (spooling && !spoolFailed && o.spool!.takes(size)) {
          // A spool that cannot take the file (full, gone): this worker streams from now on, the
          // file read again from the start. Errors of the snapshot's reads stay the file's own.
          const spoolFails = (err: unknown) => {
            spoolFailed = true;
            handoff.why ??= errorMessage(err);
          };
          try {
            spoolFile ??= SpoolFile.create(o.spool!.dir);
          } catch (err) {
            spoolFails(err);
          }
          if (spoolFile && !spoolFailed) {
            try {
              await spoolFile.fill(read());
            } catch (err) {
              if (!(err instanceof SpoolWriteError)) throw err;
              spoolFails(err);
            }
            if (!spoolFailed) {
              handoff.spooled++;
              return session.scanPath(spoolFile.path);
            }
          }
        }
        handoff.streamed++;
        if (spooling && !spoolFailed) handoff.why ??= `files larger than ${o.spool!.maxFileBytes} bytes (clamd.spoolMaxFileBytes) go by INSTREAM`;
        return session.scan(read());
      };
      try {
        for (let next = await source.next(); !next.done; next = await source.next()) await scanFile(next.value, clamdScan, ring);
      } finally {
        session?.close();
        await spoolFile?.remove();
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, o.limits.concurrency) }, worker));
  };

  try {
    for (const d of job.disks) {
      if (o.signal?.aborted) break;
      const incremental = d.extents !== undefined;
      modes[d.target] = incremental ? 'incremental' : 'full';
      o.emit({ type: 'disk', id: job.id, disk: d.target, mode: modes[d.target]!, size: d.size });
      let endpoint: Endpoint;
      try {
        endpoint = o.open ? await o.open(d.uri, o.signal) : await openExport(target(d.uri, o), o.signal);
      } catch (err) {
        v.notScanned.push({ disk: d.target, kind: 'disk', reason: `export not readable: ${errorMessage(err)}` });
        continue;
      }
      try {
        if (endpoint.size !== d.size) {
          v.notScanned.push({ disk: d.target, kind: 'disk', reason: `the export has ${endpoint.size} bytes, the job says ${d.size}: not the disk asked for` });
          continue;
        }
        const disk = new DiskReader(endpoint, 0, endpoint.size, `${job.domain} ${d.target}`);
        stats.push(disk.stats);
        const changed = incremental ? merge(d.extents!.map(([offset, length]) => ({ offset, length }))) : undefined;
        await scanDisk(d.target, disk, changed, v, o, job, pool, signal, timeCtl.signal);
      } finally {
        await endpoint.close().catch(() => undefined);
      }
    }
  } finally {
    clearTimeout(timer);
  }
  v.scanned.nbdBytesRead = nbdBytes();
  progress(true);
  if (v.skippedTotal > v.skipped.length) {
    v.notScanned.push({ disk: '*', kind: 'files', reason: `${v.skippedTotal - v.skipped.length} more skipped files not listed (see limitsHit)` });
  }
  return {
    type: 'result', id: job.id, domain: job.domain, modes,
    infected: v.infected, scanned: v.scanned, notScanned: v.notScanned, skipped: v.skipped,
    limitsHit: [...v.limits.values()],
    complete: v.notScanned.length === 0 && v.skippedTotal === 0 && !o.signal?.aborted,
    unowned: [...v.unowned].map(([disk, extents]) => ({ disk, extents: toPairs(coarsen(extents, MAX_UNOWNED_EXTENTS)) })),
    clamdHandoff: { ...handoff, ...(!handoff.why && !spooling && o.spool ? { why: spoolWhy(o.spool) } : {}) },
    seconds: (Date.now() - started) / 1000,
  };
}

async function scanDisk(
  target: string, disk: DiskReader, changed: Extent[] | undefined, v: Verdict, o: ScanJobOptions, job: ScanJob,
  pool: (tasks: Iterable<FileTask> | AsyncIterable<FileTask>) => Promise<void>, signal: AbortSignal, timeUp: AbortSignal,
): Promise<void> {
  let parts: Partition[];
  try {
    parts = (await readPartitions(disk)).partitions.filter((p) => !p.extended);
  } catch (err) {
    if (!(err instanceof FilesystemError)) throw err;
    v.notScanned.push({ disk: target, offset: 0, length: disk.length, kind: 'partition table', problem: err.problem, reason: `partition table not readable: ${why(err)}` });
    return;
  }
  for (const p of parts) {
    if (o.signal?.aborted) return;
    const region = { disk: target, partition: p.number, offset: p.offset, length: p.length };
    // Incremental: a partition without a changed byte has nothing new to scan.
    const local = changed && intersect(changed, [{ offset: p.offset, length: p.length }]).map((e) => ({ offset: e.offset - p.offset, length: e.length }));
    // Its owner index, if one was left at the state this job's changes start from (taken out
    // either way: only a partition read through to the end puts one back).
    const indexes = o.ownerIndexes && job.ownerIndex ? { ...o.ownerIndexes, ...job.ownerIndex, key: OwnerIndexStore.key(o.ownerIndexes.client, job.domain, target, p.offset) } : undefined;
    const kept = indexes?.store.take(indexes.key, local ? indexes.base : undefined);
    if (local && local.length === 0) {
      // Nothing changed: the index describes this state too.
      if (kept) indexes!.store.put(indexes!.key, indexes!.next, kept);
      continue;
    }
    // Out of time before this partition was read (a slow export, a busy scanner host): it is not
    // scanned and says so; passing over it in silence would leave a scan that reads as complete.
    if (timeUp.aborted) {
      v.hit('maxSeconds', o.limits.maxSeconds);
      v.notScanned.push({ ...region, kind: 'unknown', reason: `time limit (maxSeconds ${o.limits.maxSeconds}) reached before it was read` });
      continue;
    }
    const where = p.number === 0 ? `${job.domain} ${target}` : `${job.domain} ${target}, partition ${p.number}`;
    let kind: string = 'unknown';
    let fs: ExtFilesystem;
    try {
      const part = disk.sub(p.offset, p.length, where);
      kind = await detectFilesystem(part);
      // A blank region (an extra disk never written, an unused partition) holds nothing to scan:
      // not a gap in the verdict.
      if (kind === 'unknown' && await part.readsAsZeroes(signal)) {
        o.emit({ type: 'filesystem', id: job.id, disk: target, partition: p.number, kind: 'empty', files: 0 });
        continue;
      }
      if (kind !== 'ext2' && kind !== 'ext3' && kind !== 'ext4') {
        v.notScanned.push({ ...region, kind, reason: kind === 'unknown' ? 'no filesystem the scanner recognises' : `${kind} is not readable by the scanner` });
        continue;
      }
      fs = await ExtFilesystem.open(part, { label: where });
    } catch (err) {
      if (!(err instanceof FilesystemError)) throw err;
      v.notScanned.push({ ...region, kind, problem: err.problem, reason: `${kind} not readable: ${why(err)}` });
      continue;
    }
    if (local) {
      // Incremental: the regular files owning changed blocks, scanned by inode number; their paths
      // are looked up only for a report that needs one (or the debug log of opened files).
      let ownersFrom: 'owner index' | 'inode tables' = 'inode tables';
      /** Owners whose blocks changed though their inode and mapping did not (known with an index only). */
      const unchanged = new Set<number>();
      /** The index this scan brought forward or built (kept in the store), which its files' digests go to. */
      let index: OwnerIndex | undefined;
      let owners: Inode[];
      try {
        let unowned: Extent[];
        const found = await ownershipOf(fs, local, kept, indexes?.store);
        ({ owners, unowned } = changedFiles(fs, found.ownership, job.changedSince));
        for (const w of found.ownership.owners) if (w.blocks && w.changed === false) unchanged.add(w.ino);
        // Kept once its files were scanned (below), with their digests: the store's budget counts them.
        index = indexes && found.index;
        ownersFrom = found.from;
        const list = v.unowned.get(target) ?? [];
        for (const e of unowned) list.push({ offset: e.offset + p.offset, length: e.length });
        v.unowned.set(target, list);
      } catch (err) {
        if (!(err instanceof FilesystemError)) throw err;
        v.notScanned.push({ ...region, kind, problem: err.problem, reason: `${kind}: the changed blocks' owners cannot be found: ${why(err)}` });
        continue;
      }
      // With the index: a file that only shares a changed granule with a changed file (its inode
      // and mapping unchanged) is passed over when its own bytes there match its digests.
      let passedOver = 0;
      const key = indexes?.store.digestKey;
      if (index && key && unchanged.size > 0) {
        try {
          const kept: Inode[] = [];
          for (const inode of owners) {
            if (unchanged.has(inode.ino) && await sameGranules(fs, index, inode, local, key)) passedOver++;
            else kept.push(inode);
          }
          owners = kept;
        } catch (err) {
          if (!(err instanceof FilesystemError)) throw err;
        }
      }
      const paths = new PathFinder(fs, new Set(owners.map((i) => i.ino)));
      const tasks: FileTask[] = owners.map((inode) => ({
        disk: target, partition: p.number, fs, ino: inode.ino, inode, paths,
        ...(index && key ? { digests: { key, keep: (d: GranuleDigests | undefined) => index.setDigests(inode.ino, d) } } : {}),
      }));
      o.emit({ type: 'filesystem', id: job.id, disk: target, partition: p.number, kind, files: tasks.length, ownersFrom, ...(index ? { passedOver } : {}) });
      await pool(tasks);
      if (index) indexes!.store.put(indexes!.key, indexes!.next, index);
      // Skipped files are named while the export is still open.
      for (const u of v.unnamed.splice(0)) u.entry.path = await u.task.paths!.path(u.task.ino);
      continue;
    }
    // One walk gives every path (ino → first path; hard links are scanned once), scanned as it is
    // listed. A walk that breaks off at damage still scans what it found, and the filesystem is
    // reported as not (fully) scanned.
    const seen = new Set<number>();
    let listed = 0;
    // The files' granule digests, for the owner index built beside the walk.
    const fullKey = indexes?.store.digestKey;
    const fullDigests = new Map<number, GranuleDigests | undefined>();
    let walkError: unknown;
    let walkCut = false;
    const listing = async function* (): AsyncGenerator<FileTask> {
      try {
        for await (const e of fs.walk()) {
          if (signal.aborted) { walkCut = true; return; }
          if (e.type !== 'file' || seen.has(e.ino)) continue;
          seen.add(e.ino);
          listed++;
          const ino = e.ino;
          yield { disk: target, partition: p.number, fs, ino, path: e.path, ...(fullKey ? { digests: { key: fullKey, keep: (d: GranuleDigests | undefined) => { fullDigests.set(ino, d); } } } : {}) };
        }
      } catch (err) {
        if (!(err instanceof FilesystemError)) throw err;
        walkError = err;
      }
    };
    // The owner index for the next incremental scan, built beside the walk (the inode tables are a
    // small part of what a full scan reads); kept only when the walk got through.
    const building = indexes && indexes.store.fits(OwnerIndex.estimateBytes(fs))
      ? OwnerIndex.build(fs, [], { signal, maxBytes: indexes.store.maxBytes }).then((b) => b.index, () => undefined) : undefined;
    try {
      await pool(listing());
    } finally {
      const built = await building;
      if (built && !walkError && !walkCut) {
        for (const [ino, d] of fullDigests) built.setDigests(ino, d);
        indexes!.store.put(indexes!.key, indexes!.next, built);
      }
    }
    // Stopped by the time limit while listing: what was not listed is not scanned, and says so.
    if (walkCut && timeUp.aborted && !o.signal?.aborted) {
      v.hit('maxSeconds', o.limits.maxSeconds);
      v.notScanned.push({ ...region, kind, reason: `time limit (maxSeconds ${o.limits.maxSeconds}) reached while listing its files: only the ${listed} listed were considered` });
    }
    if (walkError) {
      v.notScanned.push({ ...region, kind, problem: (walkError as FilesystemError).problem, reason: `${kind} directory tree damaged, ${listed} files found before it were scanned: ${why(walkError as FilesystemError)}` });
    }
    o.emit({ type: 'filesystem', id: job.id, disk: target, partition: p.number, kind, files: listed });
  }
}

/** Why a job did not spool (the spool's last probe). */
function spoolWhy(spool: ClamdSpool): string | undefined {
  const st = spool.status();
  return st.mode === 'instream' ? st.why : undefined;
}

/**
 * A found file's sha256, read again from the snapshot (which does not change under it): hashing
 * only what was found spares every clean file's bytes a pass through SHA-256.
 */
async function digest(fs: ExtFilesystem, inode: Inode): Promise<string> {
  const hash = createHash('sha256');
  for await (const c of fs.readChunks(inode)) hash.update(c);
  return hash.digest('hex');
}

/** A file's bytes on disk as readChunks reads them (initialised runs, up to its size), sorted and merged. */
function bytesOnDisk(map: InodeMap, inode: Inode, bs: number): Extent[] {
  const pieces: Extent[] = [];
  for (const r of map.data) {
    if (r.uninit || r.logical * bs >= inode.size) continue;
    pieces.push({ offset: r.physical * bs, length: Math.min(r.count * bs, inode.size - r.logical * bs) });
  }
  return merge(pieces);
}

/**
 * Whether a regular file's bytes in every digest granule the changed extents touch are what its
 * digests say (read now, from the snapshot): then its content did not change, though it shares
 * granules with blocks that did. False when it has no digests or any granule differs or is missing.
 */
async function sameGranules(fs: ExtFilesystem, index: OwnerIndex, inode: Inode, changed: Extent[], key: Buffer): Promise<boolean> {
  const stored = index.digestsOf(inode.ino);
  if (!stored) return false;
  const onDisk = bytesOnDisk(await fs.map(inode), inode, fs.sb.blockSize);
  const granules = new Set<number>();
  for (const e of intersect(onDisk, changed)) {
    for (let g = Math.floor(e.offset / DIGEST_GRANULE); g * DIGEST_GRANULE < e.offset + e.length; g++) granules.add(g);
  }
  // A granule without a digest (one the file fills whole: its own bytes were written) has it read.
  for (const g of granules) if (!stored.has(g)) return false;
  for (const g of granules) {
    // The file's bytes in the granule, in disk order (the digest at the scan saw them so).
    const session = new GranuleDigestSession(key);
    for (const e of intersect(onDisk, [{ offset: g * DIGEST_GRANULE, length: DIGEST_GRANULE }])) {
      session.add(e.offset, await fs.disk.readCached(e.offset, e.length, `data of inode ${inode.ino}`));
    }
    const a = session.digests().get(g);
    const b = stored.get(g);
    if (!a || !b || !a.equals(b)) return false;
  }
  return granules.size > 0;
}

/**
 * The ownership of `extents`: brought forward from the owner index kept for this filesystem when
 * there is one, else from every inode table (building an index from them when the store has room;
 * a filesystem one cannot be built for, an inode that does not parse, is read as before).
 */
async function ownershipOf(fs: ExtFilesystem, extents: Extent[], kept: OwnerIndex | undefined, store: OwnerIndexStore | undefined,
): Promise<{ ownership: Ownership; index?: OwnerIndex; from: 'owner index' | 'inode tables' }> {
  if (kept && kept.geometry === OwnerIndex.geometryOf(fs)) {
    try {
      return { ownership: await kept.update(fs, extents, store?.maxBytes), index: kept, from: 'owner index' };
    } catch (err) {
      if (!(err instanceof OwnerIndexTooLarge)) throw err;
    }
  } else if (store?.fits(OwnerIndex.estimateBytes(fs))) {
    try {
      const { index, ownership } = await OwnerIndex.build(fs, extents, { maxBytes: store.maxBytes });
      return { ownership, index, from: 'inode tables' };
    } catch (err) {
      if (!(err instanceof FilesystemError) && !(err instanceof OwnerIndexTooLarge)) throw err;
    }
  }
  return { ownership: await fs.ownership(extents), from: 'inode tables' };
}

/** EXT4_INLINE_DATA_FL: the file's bytes live in its inode. */
const INLINE_DATA_FL = 0x10000000;

/**
 * The regular files (their inodes, by number) whose contents may have changed: every owner of a
 * changed data or mapping block, and owners of a changed inode-table slot whose inode changed.
 * With an owner index that is known (BlockOwner.changed: the slot's fingerprint or mapping
 * differs from the index's). Without one, a changed slot alone says little at the change log's
 * granularity (a 64 KiB chunk of the inode table holds 256 inodes, most untouched): its ctime tells
 * the one that changed at or after `changedSince` (when the hypervisor's last completed scan began,
 * on the guest's clock: a chmod, a rename, an extent tree pointed at blocks written before) from
 * its neighbours, and inline data (bytes in the slot) is read whenever its slot changed. Also
 * what of the extents no inode owns (the verdict's `unowned`, checked again at the next scan).
 */
function changedFiles(fs: ExtFilesystem, { owners, unowned }: Ownership, changedSince?: number): { owners: Inode[]; unowned: Extent[] } {
  const out: Inode[] = [];
  for (const owner of owners) {
    // Reserved inodes (the journal, resize inode ...) are not files anyone wrote.
    if (owner.ino < fs.sb.firstIno) continue;
    const inode = owner.parsed;
    if (fileType(inode.mode) !== 'file') continue;
    const slotChanged = owner.changed ?? (owner.inode && (inode.flags & INLINE_DATA_FL || (changedSince !== undefined && inode.ctime >= changedSince)));
    if (owner.blocks || slotChanged) out.push(inode);
  }
  return { owners: out.sort((a, b) => a.ino - b.ino), unowned };
}
