// Restore: one disk of a restore point into a new qcow2 or raw file, read through its chain with
// qemu-nbd and written with the copy engine (zero ranges skipped: the target is sparse).
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { FileEndpoint, copyExtents, wholeDisk, type CopyProgress, type Endpoint } from '../copy/index.js';
import { UsageError, VirtcbtError } from '../util/errors.js';
import { serveImage, type ServedImage } from './image-server.js';
import { fsyncDir } from './manifest.js';
import type { Repository } from './repository.js';

export interface RestoreOptions {
  domain: string;
  disk: string;
  to: string;
  /** A backup id or an ISO time; the newest backup when undefined. */
  at?: string;
  format?: 'qcow2' | 'raw';
  /** Replace an existing file. */
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
  sizeBytes: number;
  bytes: number;
  written: number;
  elapsedMs: number;
}

/** The image file of the disk at a restore point, resolved to its path. */
export async function restorePointImage(repo: Repository, domain: string, disk: string, at?: string) {
  const m = await repo.resolve(domain, at);
  const d = m.disks.find((x) => x.target === disk);
  if (!d) {
    throw Object.assign(new VirtcbtError(`backup ${m.id} of ${domain} has no disk ${disk} (it has ${m.disks.map((x) => x.target).join(', ')})`, {
      domain, disk, hint: 'Pass one of those to --disk',
    }), { exitCode: 4 });
  }
  return { manifest: m, disk: d, path: await repo.imagePath(domain, m.consumer, d.file) };
}

export async function restoreDisk(repo: Repository, o: RestoreOptions): Promise<RestoreResult> {
  const t0 = performance.now();
  const format = o.format ?? 'qcow2';
  if (format !== 'qcow2' && format !== 'raw') throw new UsageError(`--format must be qcow2 or raw, not ${format}`);
  if (existsSync(o.to) && !o.force) throw new UsageError(`${o.to} exists`, { hint: 'Pass --force to replace it, or choose another --to' });
  const { manifest: m, disk: d, path } = await restorePointImage(repo, o.domain, o.disk, o.at);
  // Written under a temporary name, renamed when complete: a failed restore leaves no half file at --to.
  const part = join(dirname(o.to), `.${basename(o.to)}.part-${process.pid}`);
  const runDir = await mkdtemp(join(tmpdir(), 'virtcbt-restore-'));
  let src: ServedImage | undefined;
  let dst: Endpoint | undefined;
  let served: ServedImage | undefined;
  try {
    src = await serveImage(path, { runDir });
    if (format === 'raw') {
      dst = await FileEndpoint.open(part, { create: { size: d.sizeBytes } });
    } else {
      const r = await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', part, String(d.sizeBytes)], { reject: false });
      if (r.exitCode !== 0) throw new VirtcbtError(`cannot create ${o.to}: ${r.stderr.trim()}`, { domain: o.domain, disk: o.disk });
      served = await serveImage(part, { runDir, writable: true, zeroInitialized: true });
      dst = served.endpoint;
    }
    const p = await copyExtents(src.endpoint, dst, wholeDisk(src.endpoint), {
      requestSize: o.requestSize, inflight: o.inflight, onProgress: o.onProgress ? (x) => o.onProgress!(x, d.sizeBytes) : undefined,
    });
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
    await rename(part, o.to);
    await fsyncDir(dirname(o.to));
    return {
      id: m.id, consumer: m.consumer, time: m.time, disk: o.disk, to: o.to, format, sizeBytes: d.sizeBytes,
      bytes: p.done, written: p.written, elapsedMs: Math.round(performance.now() - t0),
    };
  } catch (err) {
    await served?.kill();
    await dst?.close().catch(() => undefined);
    await src?.kill();
    await rm(part, { force: true });
    throw err;
  } finally {
    await rm(runDir, { recursive: true, force: true });
  }
}
