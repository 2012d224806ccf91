// The backing chain of a disk at a restore point, as the manifests give it (never an image header's): the one walk
// from the point's image down to its standalone base, the one check that each of those files is what the manifests
// say (read in-process, cheaply, with a cache), and the QEMU block spec that opens exactly those files.
import type { BigIntStats } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { KNOWN_INCOMPATIBLE, Qcow2HeaderError, readQcow2Header, type Qcow2Header } from '../qcow2/index.js';
import { VirtcbtError } from '../util/errors.js';
import { fileKind } from '../util/regular-file.js';
import { fileStamp } from '../util/file-stamp.js';
import type { BackupDisk, Manifest } from './manifest.js';
import { inChain } from './names.js';
import type { PruneJournal } from './repository.js';

/** What is wrong with a chain: `file` (a name in the chain directory) and what about it, e.g. "is missing". */
export interface ChainProblem {
  file: string;
  what: string;
}

/** "FILE what": the short form, for a backup's reason (the point and disk are said around it). */
export function problemText(p: ChainProblem): string {
  return `${p.file} ${p.what}`;
}

const HINT = 'Run `virtcbt verify` for the whole report; restore from another backup';

/** The restore point and disk an image belongs to, for messages. */
export interface ImageWhere {
  domain: string;
  disk: string;
  id: string;
}

/** "PATH what": the long form, the file named by its path (a name that is no file of `dir` as it was read). */
export function problemAt(dir: string, p: ChainProblem): string {
  let path: string;
  try {
    path = inChain(dir, p.file);
  } catch {
    path = JSON.stringify(p.file);
  }
  return `${path} ${p.what}`;
}

function chainError(dir: string, where: ImageWhere, p: ChainProblem): VirtcbtError {
  return new VirtcbtError(`restore point ${where.id}, disk ${where.disk}: image ${problemAt(dir, p)}`, { domain: where.domain, disk: where.disk, hint: HINT });
}

/**
 * The manifest entries of disk `target` from `top` down to its standalone base, by following the manifests' backing
 * fields; or the first break in that walk (a backing file no manifest names, links that loop). `top` must have the disk.
 */
export function walkDisk(manifests: readonly Manifest[], top: Manifest, target: string): { disks: BackupDisk[] } | { problem: ChainProblem; unnamed: boolean } {
  const disks: BackupDisk[] = [];
  let cur = top.disks.find((d) => d.target === target);
  while (cur) {
    // A loop of backing links (only a tampered manifest makes one) would never reach a base.
    if (disks.some((d) => d.file === cur!.file)) return { problem: { file: cur.file, what: 'is reached twice: the manifests\' backing links loop' }, unnamed: false };
    disks.push(cur);
    if (cur.backing === null) return { disks };
    const backing: string = cur.backing;
    const below = manifests.find((m) => m.disks.some((d) => d.target === target && d.file === backing))?.disks.find((d) => d.target === target && d.file === backing);
    if (!below) return { problem: { file: cur.file, what: `is backed by ${JSON.stringify(backing)} in its manifest, which no restore point's manifest names` }, unnamed: true };
    cur = below;
  }
  return { disks };
}

/** Image files of `target` from `top` down to its standalone base, as the manifests give them (not checked on disk). */
export function diskChain(chain: readonly Manifest[], top: Manifest, target: string): string[] {
  if (!top.disks.some((d) => d.target === target)) {
    throw new VirtcbtError(`restore point ${top.id} has no disk ${target}`, { domain: top.domain, disk: target });
  }
  const w = walkDisk(chain, top, target);
  if ('problem' in w) throw new VirtcbtError(`restore point ${top.id}, disk ${target}: ${problemText(w.problem)}`, { domain: top.domain, disk: target, hint: HINT });
  return w.disks.map((d) => d.file);
}

/** Headers by path, reused while the file is unchanged (same stamp as the lstat just taken): a check costs an lstat. */
const headers = new Map<string, { stamp: string; header: Qcow2Header }>();
const HEADERS_MAX = 4096;

/** What one image must be: its header names one of `backing` (null: none) and, when given, has this virtual size. */
export interface ImageExpect {
  backing: readonly (string | null)[];
  sizeBytes?: number;
  /** Bytes of data the backup wrote into the image: a file smaller than that was cut short (its lost clusters read as zeroes). */
  written?: number;
}

/**
 * What is wrong with the image `file` of the chain directory `dir`, or undefined: it must be a regular file there
 * (not a symlink, which is not followed), a qcow2 image QEMU opens without an external data file, whose header names
 * the expected backing file and size.
 */
export async function imageProblem(dir: string, file: string, expect: ImageExpect): Promise<ChainProblem | undefined> {
  const bad = (what: string): ChainProblem => ({ file, what });
  let path: string;
  try {
    path = inChain(dir, file);
  } catch {
    return bad('is not a file name in the chain\'s directory');
  }
  let st: BigIntStats;
  try {
    st = await lstat(path, { bigint: true });
  } catch (err) {
    return bad((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'is missing' : `cannot be read (${(err as Error).message})`);
  }
  // Nothing inside a repository is followed: a link or special file at an image's name is damage.
  if (!st.isFile()) return bad(`is ${fileKind(st)}, not a regular file`);
  const stamp = fileStamp(st);
  let h = headers.get(path)?.stamp === stamp ? headers.get(path)!.header : undefined;
  if (!h) {
    try {
      h = await readQcow2Header(path);
    } catch (err) {
      return bad(err instanceof Qcow2HeaderError ? err.what : `cannot be read (${(err as Error).message})`);
    }
    headers.delete(path);
    headers.set(path, { stamp, header: h });
    if (headers.size > HEADERS_MAX) headers.delete(headers.keys().next().value as string);
  }
  // QEMU would read the guest's data from that other file, wherever it is.
  if (h.externalDataFile) return bad(`keeps its data in an external file (${h.dataFileName === null ? 'name unreadable' : JSON.stringify(h.dataFileName)}): repository images never do`);
  const unknown = h.incompatibleFeatures & ~KNOWN_INCOMPATIBLE;
  if (unknown !== 0n) return bad(`has incompatible qcow2 features QEMU does not know (0x${unknown.toString(16)})`);
  if (!expect.backing.includes(h.backing)) {
    const want = expect.backing[0] ?? null;
    return bad(`is backed by ${h.backing === null ? 'no file' : JSON.stringify(h.backing)} in its header, by ${want === null ? 'no file' : JSON.stringify(want)} in its manifest`);
  }
  if (expect.sizeBytes !== undefined && h.size !== expect.sizeBytes) return bad(`has a virtual size of ${h.size} bytes, its manifest says ${expect.sizeBytes}`);
  // A header that reads well may belong to a copy cut short further on.
  if (expect.written !== undefined && Number.isSafeInteger(expect.written) && st.size < BigInt(expect.written)) {
    return bad(`is ${st.size} bytes, smaller than the ${expect.written} bytes of data its backup wrote into it (cut short)`);
  }
  return undefined;
}

/** Checks one image (see imageProblem); throws an error naming the file, the restore point, the disk and what to do. */
export async function checkImageFile(dir: string, file: string, backing: readonly (string | null)[], where: ImageWhere, sizeBytes?: number): Promise<void> {
  const p = await imageProblem(dir, file, { backing, sizeBytes });
  if (p) throw chainError(dir, where, p);
}

export interface ChainCheckOptions {
  /** A prune under way, whose rebase may have reached an image's header before its manifest (or how to read it, when needed). */
  journal?: PruneJournal | (() => Promise<PruneJournal | undefined>);
  /** Further manifests (points a pending prune hides), asked only when `manifests` name no image a backing field names. */
  more?: () => Promise<readonly Manifest[]>;
}

/**
 * What is wrong with the chain of disk `target` at `top` (the first problem from the top), or undefined: every image
 * from `top` down to its base, linked as the manifests say, must pass imageProblem against its own manifest entry.
 */
export async function diskChainProblem(dir: string, manifests: readonly Manifest[], top: Manifest, target: string, o: ChainCheckOptions = {}): Promise<ChainProblem | undefined> {
  const r = await walkAndCheck(dir, manifests, top, target, o);
  return 'problem' in r ? r.problem : undefined;
}

async function walkAndCheck(dir: string, manifests: readonly Manifest[], top: Manifest, target: string, o: ChainCheckOptions): Promise<{ files: string[] } | { problem: ChainProblem }> {
  let w = walkDisk(manifests, top, target);
  if ('problem' in w && w.unnamed && o.more) w = walkDisk(await o.more(), top, target);
  if ('problem' in w) return w;
  // The journal is read only when an image is not what its manifest says (backup: rarely, and after the ping).
  let journal: Promise<PruneJournal | undefined> | undefined;
  const j = () => (journal ??= typeof o.journal === 'function' ? o.journal() : Promise.resolve(o.journal));
  for (const [i, d] of w.disks.entries()) {
    const p = await entryProblem(dir, target, d, i === 0, j);
    if (p) return { problem: p };
  }
  return { files: w.disks.map((d) => d.file) };
}

/**
 * What is wrong with the image of manifest entry `d` (of disk `target`; `top`: the restore point's own image), or
 * undefined. A prune under way (`journal`, read only when needed) rebases the child of the point it merges onto the
 * merged image, header before manifest, and its commit may grow the images it merges: that is not damage.
 */
export async function entryProblem(dir: string, target: string, d: BackupDisk, top: boolean, journal: () => Promise<PruneJournal | undefined>): Promise<ChainProblem | undefined> {
  const p = await imageProblem(dir, d.file, { backing: [d.backing], sizeBytes: d.sizeBytes, written: d.written });
  if (!p || !/in its header|virtual size/.test(p.what)) return p;
  const moving = (await journal())?.disks.find((e) => e.target === target && (e.top === d.backing || e.merged === d.backing || e.base === d.file || e.top === d.file));
  if (!moving) return p;
  const backing = d.backing !== null && (moving.top === d.backing || moving.merged === d.backing) ? [moving.top, moving.merged] : [d.backing];
  return imageProblem(dir, d.file, { backing, sizeBytes: top ? d.sizeBytes : undefined, written: d.written });
}

/** Checks the chain of disk `target` at `top` (see diskChainProblem) and returns its files, top first; throws naming the damaged file. */
export async function checkDiskChain(dir: string, manifests: readonly Manifest[], top: Manifest, target: string, o: ChainCheckOptions = {}): Promise<string[]> {
  if (!top.disks.some((d) => d.target === target)) {
    throw new VirtcbtError(`restore point ${top.id} has no disk ${target}`, { domain: top.domain, disk: target });
  }
  const r = await walkAndCheck(dir, manifests, top, target, o);
  if ('problem' in r) throw chainError(dir, { domain: top.domain, disk: target, id: top.id }, r.problem);
  return r.files;
}

/**
 * Per disk target of `top`, what is wrong with its chain (see diskChainProblem), in the short form "FILE what"; a
 * disk whose chain is whole has no entry. Used before a backup continues a chain: a damaged disk is copied whole.
 */
export async function chainDamage(dir: string, manifests: readonly Manifest[], top: Manifest, o: ChainCheckOptions = {}): Promise<Map<string, string>> {
  const damage = new Map<string, string>();
  await Promise.all(top.disks.map(async (d) => {
    const p = await diskChainProblem(dir, manifests, top, d.target, o);
    if (p) damage.set(d.target, problemText(p));
  }));
  return damage;
}

/**
 * A `json:` filename that makes QEMU open exactly `paths` (top first) as one qcow2 chain, the
 * last one with no backing at all, whatever backing files or formats their headers name.
 */
export function chainSpec(paths: readonly string[]): string {
  type Node = { driver: 'qcow2'; file: { driver: 'file'; filename: string }; backing: Node | null };
  let node: Node | null = null;
  for (const p of [...paths].reverse()) node = { driver: 'qcow2', file: { driver: 'file', filename: p }, backing: node };
  if (!node) throw new Error('chainSpec: no image');
  return `json:${JSON.stringify(node)}`;
}
