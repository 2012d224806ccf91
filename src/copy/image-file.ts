// An existing qcow2 or raw image file (or one made here when missing) opened through qemu-nbd for reading or
// writing: the target of a disk sync, which must be able to take the changed blocks and free the freed ones.
import { constants } from 'node:fs';
import { access, lstat, open, rm } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { KNOWN_INCOMPATIBLE, Qcow2HeaderError, createQcow2, readQcow2Header, type Qcow2Header } from '../qcow2/index.js';
import { abortReason } from '../util/abort.js';
import { UsageError, VirtcbtError, errorMessage } from '../util/errors.js';
import { fileKind } from '../util/regular-file.js';
import { serveImage, type ServedImage } from './qemu-nbd.js';

export type ImageFormat = 'qcow2' | 'raw';

export interface ImageEndpointOptions {
  /** Directory for qemu-nbd's socket (short path). */
  runDir: string;
  writable?: boolean;
  /** Detected from the file's header when not given (qcow2 magic, else raw). */
  format?: ImageFormat;
  /**
   * Writable only: data writes of zeroes are unmapped too (qemu-nbd --detect-zeroes=unmap), so
   * the target frees what became zero as well as what was discarded. Default true.
   */
  detectZeroes?: boolean;
  /** Make the file when it is missing: `size` bytes, sparse (format: `format`, default qcow2); never replaces a file. */
  create?: { size: number; mode?: number };
  /** For messages. */
  domain?: string;
  disk?: string;
  timeoutMs?: number;
  /** The job's signal: aborts requests in flight and stops qemu-nbd. */
  signal?: AbortSignal;
}

export interface ImageEndpoint extends ServedImage {
  path: string;
  format: ImageFormat;
  /** The file was made by this call (it reads as zeroes: zero ranges were skipped). */
  created: boolean;
}

/**
 * Opens the image at `path` through qemu-nbd, writable with --discard=unmap so that
 * Endpoint.discard frees blocks in the file (qcow2 clusters, raw blocks). Refuses, changing
 * nothing, what is not a regular file (a symlink is not followed), a qcow2 with features QEMU 7.2
 * does not know, and a qcow2 whose backing or data file cannot be opened, naming the file.
 */
export async function openImageEndpoint(path: string, o: ImageEndpointOptions): Promise<ImageEndpoint> {
  if (o.signal?.aborted) throw abortReason(o.signal, `opening ${path}`);
  const { format, created } = await prepareImageFile(path, o);
  try {
    const served = await serveImage(path, {
      runDir: o.runDir, writable: o.writable, format, timeoutMs: o.timeoutMs, signal: o.signal,
      detectZeroes: o.writable && (o.detectZeroes ?? true),
      // A file made here reads as zeroes everywhere (a qcow2 made here has no backing file).
      zeroInitialized: created,
    });
    return Object.assign(served, { path, format, created });
  } catch (err) {
    // Made here and not usable: bad input changes nothing.
    if (created) await rm(path, { force: true });
    throw err;
  }
}

/**
 * Checks an image file before something opens it for writing, or makes it when missing and
 * `create` is given: refuses, changing nothing, what is not a regular file (a symlink is not
 * followed), a qcow2 with features QEMU 7.2 does not know, and a qcow2 whose backing or data file
 * cannot be opened, naming the file. Returns the format (detected when not given) and whether the
 * file was made here (the caller removes it if it then cannot use it).
 */
export async function prepareImageFile(path: string, o: Pick<ImageEndpointOptions, 'format' | 'create' | 'domain' | 'disk'>): Promise<{ format: ImageFormat; created: boolean }> {
  const ctx = { domain: o.domain, disk: o.disk };
  let format = o.format;
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' && o.create) return undefined;
    throw new UsageError(`cannot open image ${path}: ${errorMessage(err)}`, { ...ctx, cause: err, hint: err.code === 'ENOENT' ? 'Check the path, or let virtcbt create the image' : 'Check the path and its permissions' });
  });
  if (st && !st.isFile()) {
    throw new UsageError(`image ${path} is ${fileKind(st)}, not a regular file`, { ...ctx, hint: st.isSymbolicLink() ? 'Name the image file itself: symlinks are not followed' : 'Name a qcow2 or raw image file' });
  }
  if (!st) {
    format ??= 'qcow2';
    await createImage(path, format, o.create!, ctx);
    return { format, created: true };
  }
  const header = await readQcow2Header(path).catch((err: unknown) => {
    if (err instanceof Qcow2HeaderError && /no qcow2 magic|shorter than a qcow2 header/.test(err.what)) return undefined;
    throw new UsageError(`image ${path} ${err instanceof Qcow2HeaderError ? err.what : `cannot be read: ${errorMessage(err)}`}`, {
      ...ctx, cause: err, hint: 'Check the file with `qemu-img info`',
    });
  });
  format ??= header ? 'qcow2' : 'raw';
  if (format === 'qcow2' && !header) {
    throw new UsageError(`image ${path} is not a qcow2 image (no qcow2 magic)`, { ...ctx, hint: 'Open it as raw, or name the qcow2 image' });
  }
  if (format === 'qcow2' && header) await checkQcow2(path, header, ctx);
  return { format, created: false };
}

/** Makes a sparse image of `size` bytes at `path`, exclusively (never replaces a file, never through a symlink). */
async function createImage(path: string, format: ImageFormat, c: { size: number; mode?: number }, ctx: { domain?: string; disk?: string }): Promise<void> {
  if (!Number.isSafeInteger(c.size) || c.size <= 0) {
    throw new UsageError(`cannot create image ${path}: size ${c.size} is not a positive number of bytes`, ctx);
  }
  try {
    if (format === 'qcow2') {
      await createQcow2(path, { size: c.size });
      return;
    }
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, c.mode ?? 0o666);
    try {
      await fh.truncate(c.size);
    } finally {
      await fh.close();
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new VirtcbtError(`cannot create image ${path}: ${errorMessage(err)}`, {
      ...ctx, cause: err, hint: e.code === 'EEXIST' ? 'Another process made it meanwhile: run again to open it' : 'Check the directory and its free space',
    });
  }
}

/** A qcow2 that QEMU could not open, or would open with a file we cannot reach, is refused before qemu-nbd starts. */
async function checkQcow2(path: string, h: Qcow2Header, ctx: { domain?: string; disk?: string }): Promise<void> {
  const unknown = h.incompatibleFeatures & ~KNOWN_INCOMPATIBLE;
  if (unknown) {
    throw new UsageError(`image ${path} has qcow2 features this QEMU does not know (incompatible bits 0x${unknown.toString(16)})`, { ...ctx, hint: 'Convert it with a newer qemu-img, or name another image' });
  }
  const others: [string, string | null][] = [['backing file', h.backing], ['data file', h.externalDataFile ? h.dataFileName ?? '' : null]];
  for (const [what, name] of others) {
    if (name === null) continue;
    // QEMU resolves a relative name against the image's directory; protocol names (nbd:, json:) are not files we can check.
    if (name === '' || /^[a-z0-9+.-]+:/i.test(name)) {
      throw new UsageError(`image ${path} names a ${what} ${JSON.stringify(name)} that virtcbt cannot open as a file`, { ...ctx, hint: `Rebase or convert the image to a standalone one (qemu-img convert)` });
    }
    const full = resolve(dirname(path), name);
    await access(full, constants.R_OK).catch((err: unknown) => {
      throw new UsageError(`image ${path} has the ${what} ${full}, which cannot be opened: ${errorMessage(err)}`, {
        ...ctx, cause: err, hint: `Restore ${full}, or rebase the image onto another (qemu-img rebase)`,
      });
    });
  }
}
