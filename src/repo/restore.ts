// Restore: one disk of a restore point into a new qcow2 or raw file, or in place onto a block
// device, read through the chain the manifests give (qemu-nbd) and written with the copy engine
// (zero ranges skipped where the target is fresh and sparse). Disk images hold the guest's
// secrets: what restore creates is readable by its owner only.
import { execa } from 'execa';
import { constants, type Stats } from 'node:fs';
import { chmod, lstat, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { FileEndpoint, copyExtents, isNoSpace, wholeDisk, type CopyProgress, type Endpoint, type ServedImage } from '../copy/index.js';
import { NotFoundError, UsageError, VirtcbtError } from '../util/errors.js';
import { pidAlive } from '../util/process.js';
import { fileKind } from '../util/regular-file.js';
import { checkDiskChain } from './chain.js';
import { checkImage } from './verify.js';
import { makeRunDir, serveChain, sweepStaleRunDirs } from './image-server.js';
import { fsyncDir } from './manifest.js';
import { inChain } from './names.js';
import type { Repository } from './repository.js';

export interface RestoreOptions {
  domain: string;
  disk: string;
  to: string;
  /** A backup id or an ISO time; the newest backup when undefined. */
  at?: string;
  format?: 'qcow2' | 'raw';
  /** Replace an existing file, or write over an existing block device. */
  force?: boolean;
  requestSize?: number;
  inflight?: number;
  onProgress?(p: Readonly<CopyProgress>, total: number): void;
}

export interface RestoreResult {
  id: string;
  consumer: string;
  time: string;
  disk: string;
  to: string;
  format: 'qcow2' | 'raw';
  /** 'file': a new file took the name --to; 'device': the block device was written in place. */
  target: 'file' | 'device';
  sizeBytes: number;
  bytes: number;
  written: number;
  elapsedMs: number;
}

/** Permission bits of every file restore creates. */
const PRIVATE = 0o600;

/** The image file of the disk at a restore point, resolved to its path, and its chain as the manifests give it (checked). */
export async function restorePointImage(repo: Repository, domain: string, disk: string, at?: string) {
  const m = await repo.resolve(domain, at);
  const d = m.disks.find((x) => x.target === disk);
  if (!d) {
    throw new NotFoundError(`backup ${m.id} of ${domain} has no disk ${disk} (it has ${m.disks.map((x) => x.target).join(', ')})`, {
      domain, disk, hint: 'Pass one of those to --disk',
    });
  }
  const dir = repo.chainDir(domain, m.consumer);
  // The points a pending prune removes still back the kept ones until it finishes.
  const all = await repo.chain(domain, m.consumer, { includePruning: true });
  const files = await checkDiskChain(dir, all, m, disk, { journal: () => repo.pruneJournal(domain, m.consumer) });
  return { manifest: m, disk: d, path: inChain(dir, d.file), chain: files.map((f) => inChain(dir, f)) };
}

/** What --to names: nothing yet, a regular file (replaced by rename) or a block device (written in place). */
type Target = { kind: 'new' } | { kind: 'file' } | { kind: 'device'; path: string };

async function inspectTarget(to: string, force: boolean): Promise<Target> {
  let st: Stats;
  try {
    st = await lstat(to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new UsageError(`cannot use --to ${to}: ${(err as Error).message}`, { cause: err });
    const parent = await stat(dirname(to)).catch(() => undefined);
    if (!parent?.isDirectory()) throw new UsageError(`cannot restore to ${to}: the directory ${dirname(to)} does not exist`, { hint: 'Create it, or choose another --to' });
    return { kind: 'new' };
  }
  const kind = fileKind(st);
  if (st.isDirectory()) {
    throw new UsageError(`--to ${to} is a directory`, { hint: `Name the file to create, e.g. --to ${join(to, 'DISK.qcow2')}` });
  }
  let device: string | undefined;
  if (st.isBlockDevice()) device = to;
  else if (st.isSymbolicLink()) {
    // /dev/VG/LV and /dev/mapper/NAME are symlinks to the device node: those are written in place.
    const resolved = await stat(to).catch(() => undefined);
    if (!resolved?.isBlockDevice()) {
      throw new UsageError(`--to ${to} is a symlink${resolved ? '' : ' to nothing'}: restore does not replace or follow it`, {
        hint: 'Name a new file, an existing regular file (with --force) or a block device',
      });
    }
    device = to;
  } else if (!st.isFile()) {
    throw new UsageError(`--to ${to} is ${kind}: restore writes only into a new or regular file or a block device, and changed nothing`, {
      hint: 'Choose another --to',
    });
  }
  if (!force) {
    throw new UsageError(`${to} exists${device ? ' (a block device)' : ''}`, {
      hint: device ? 'Pass --force --format raw to write the disk onto it in place, or choose another --to' : 'Pass --force to replace it, or choose another --to',
    });
  }
  return device ? { kind: 'device', path: device } : { kind: 'file' };
}


/** The temporary name a restore writes under before it renames the file to `to`. */
export function partName(to: string, pid = process.pid): string {
  return join(dirname(to), `.${basename(to)}.part-${pid}`);
}

/** Removes the `.part` files of earlier restores to the same `to` whose process is gone (killed), and their temp directories. */
export async function sweepRestoreLeftovers(to: string): Promise<string[]> {
  const re = new RegExp(`^\\.${basename(to).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.part-(\\d+)$`);
  const removed: string[] = [];
  for (const e of await readdir(dirname(to), { withFileTypes: true }).catch(() => [])) {
    const m = re.exec(e.name);
    // Only regular files: a part is never anything else, and nothing is followed.
    if (!m || !e.isFile() || pidAlive(Number(m[1]))) continue;
    const p = join(dirname(to), e.name);
    await rm(p, { force: true }).then(() => removed.push(p), () => undefined);
  }
  removed.push(...await sweepStaleRunDirs());
  return removed;
}

/** Creates `path` (never following or reusing anything there) with owner-only permissions. */
async function createPrivate(path: string): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, PRIVATE);
  await fh.close();
}

export async function restoreDisk(repo: Repository, o: RestoreOptions): Promise<RestoreResult> {
  const t0 = performance.now();
  const format = o.format ?? 'qcow2';
  if (format !== 'qcow2' && format !== 'raw') throw new UsageError(`--format must be qcow2 or raw, not ${format}`);
  const target = await inspectTarget(o.to, Boolean(o.force));
  if (target.kind === 'device' && format !== 'raw') {
    throw new UsageError(`${o.to} is a block device: restore writes a raw disk onto it`, { hint: 'Pass --format raw' });
  }
  const { manifest: m, disk: d, chain } = await restorePointImage(repo, o.domain, o.disk, o.at);
  // Metadata only (L1/L2, refcounts): a cluster past a cut file would read as zeroes, never as an error.
  for (const path of chain) {
    const c = await checkImage(path);
    if (c.problems.length > 0) {
      throw new VirtcbtError(`restore point ${m.id}: image ${path} is corrupt: ${c.problems.join('; ')}; nothing was written`, {
        domain: o.domain, disk: o.disk, hint: 'Run `virtcbt verify` for the whole report; restore from another backup',
      });
    }
  }
  await sweepRestoreLeftovers(o.to);
  const done = (p: CopyProgress, kind: RestoreResult['target']): RestoreResult => ({
    id: m.id, consumer: m.consumer, time: m.time, disk: o.disk, to: o.to, format, target: kind, sizeBytes: d.sizeBytes,
    bytes: p.done, written: p.written, elapsedMs: Math.round(performance.now() - t0),
  });
  const copyOpts = {
    requestSize: o.requestSize, inflight: o.inflight, onProgress: o.onProgress ? (x: Readonly<CopyProgress>) => o.onProgress!(x, d.sizeBytes) : undefined,
  };
  const runDir = await makeRunDir('restore');
  let src: ServedImage | undefined;
  let dst: Endpoint | undefined;
  try {
    if (target.kind === 'device') {
      // In place: every byte of the disk is written (zeroes too: the device holds old data);
      // what lies past the disk's end on a bigger device is left as it is.
      const dev = await FileEndpoint.open(target.path, { write: true, exclusive: true }).catch((err: NodeJS.ErrnoException) => {
        throw new UsageError(`cannot write onto ${o.to}: ${err.code === 'EBUSY' ? 'it is in use (mounted or held by another program)' : err.message}`, {
          cause: err, hint: 'Stop what uses the device, then run the restore again',
        });
      });
      dst = dev;
      if (dev.size < d.sizeBytes) {
        throw new UsageError(`${o.to} is ${dev.size} bytes, smaller than disk ${o.disk} (${d.sizeBytes} bytes); nothing was written`, {
          hint: 'Grow the device (e.g. lvextend) or restore into a file',
        });
      }
      src = await serveChain(chain, { runDir });
      const p = await copyExtents(src.endpoint, dev, wholeDisk(src.endpoint), copyOpts);
      await dev.flush();
      dst = undefined;
      await dev.close();
      await src.close();
      src = undefined;
      return done(p, 'device');
    }
    return await restoreToFile(o, format, d.sizeBytes, chain, runDir, copyOpts, done);
  } catch (err) {
    await src?.kill();
    await dst?.close().catch(() => undefined);
    throw err;
  } finally {
    await rm(runDir, { recursive: true, force: true });
  }
}

/** Written under a temporary name, renamed when complete: a failed restore leaves no half file at --to. */
async function restoreToFile(
  o: RestoreOptions, format: 'qcow2' | 'raw', sizeBytes: number, chain: string[], runDir: string,
  copyOpts: { requestSize?: number; inflight?: number; onProgress?(p: Readonly<CopyProgress>): void },
  done: (p: CopyProgress, kind: 'file') => RestoreResult,
): Promise<RestoreResult> {
  const part = partName(o.to);
  let src: ServedImage | undefined;
  let dst: Endpoint | undefined;
  let served: ServedImage | undefined;
  // Only a part this run created is removed on failure (an EEXIST one is someone else's).
  let created = false;
  const cannotCreate = (err: Error) => new VirtcbtError(`cannot create ${part} to restore into ${o.to}: ${err.message}`, {
    domain: o.domain, disk: o.disk, cause: err, hint: 'Check that the directory is writable and has room, or choose another --to',
  });
  try {
    if (format === 'raw') {
      dst = await FileEndpoint.open(part, { create: { size: sizeBytes, exclusive: true, mode: PRIVATE } }).catch((err: Error) => { throw cannotCreate(err); });
      created = true;
    } else {
      // qemu-img create makes files by the umask: the file is made first, owner-only, and qemu-img fills it.
      await createPrivate(part).catch((err: Error) => { throw cannotCreate(err); });
      created = true;
      const r = await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', part, String(sizeBytes)], { reject: false });
      if (r.exitCode !== 0) throw new VirtcbtError(`cannot create ${o.to}: ${r.stderr.trim()}`, { domain: o.domain, disk: o.disk });
      await chmod(part, PRIVATE);
      served = await serveChain(part, { runDir, writable: true, zeroInitialized: true });
      dst = served.endpoint;
    }
    src = await serveChain(chain, { runDir });
    const p = await copyExtents(src.endpoint, dst, wholeDisk(src.endpoint), copyOpts);
    if (served) {
      await served.close();
      served = undefined;
    } else {
      await dst.flush();
      await dst.close();
    }
    dst = undefined;
    await src.close();
    src = undefined;
    // What took the name meanwhile must still be something a rename may replace.
    const now = await lstat(o.to).catch(() => undefined);
    if (now && !(now.isFile() && o.force)) {
      throw new UsageError(`${o.to} appeared during the restore (${now.isFile() ? 'a file' : fileKind(now)}): it was left alone`, { hint: 'Choose another --to' });
    }
    await rename(part, o.to);
    await fsyncDir(dirname(o.to));
    return done(p, 'file');
  } catch (err) {
    await served?.kill();
    await dst?.close().catch(() => undefined);
    await src?.kill();
    if (created) await rm(part, { force: true });
    // Raw says a bare ENOSPC, qcow2 an NBD write error on a temp socket: name the target instead.
    if (isNoSpace(err)) {
      throw new VirtcbtError(`no space left on the file system of ${o.to} (restoring ${sizeBytes} bytes): ${(err as Error).message}`, {
        domain: o.domain, disk: o.disk, cause: err, hint: `Free space in ${dirname(o.to)} or choose another --to; nothing was left there`,
      });
    }
    throw err;
  }
}
