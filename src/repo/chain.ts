// The backing chain of a disk at a restore point, as the manifests give it (never an image
// header's): the files from the point's image down to its standalone base, the check that each of
// them is what the manifests say, and the QEMU block spec that opens exactly those files.
import { execa } from 'execa';
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { VirtcbtError } from '../util/errors.js';
import type { BackupDisk, Manifest } from './manifest.js';
import type { PruneJournal } from './repository.js';

/** Image files of `target` from `top` down to its standalone base, by following the manifests' backing fields. */
export function diskChain(chain: readonly Manifest[], top: Manifest, target: string): string[] {
  const files: string[] = [];
  let cur: BackupDisk | undefined = top.disks.find((d) => d.target === target);
  if (!cur) throw new VirtcbtError(`restore point ${top.id} has no disk ${target}`, { domain: top.domain, disk: target });
  while (cur) {
    // A loop of backing links (only a tampered manifest makes one) would never reach a base.
    if (files.includes(cur.file)) {
      throw new VirtcbtError(`restore point ${top.id}, disk ${target}: the manifests' backing links loop at ${cur.file}`, {
        domain: top.domain, disk: target, hint: 'Run `virtcbt verify`; restore from another backup',
      });
    }
    files.push(cur.file);
    if (!cur.backing) return files;
    const backing: string = cur.backing;
    cur = chain.find((m) => m.disks.some((d) => d.target === target && d.file === backing))?.disks.find((d) => d.target === target);
    if (!cur) {
      throw new VirtcbtError(`restore point ${top.id}, disk ${target}: no manifest names its backing file ${backing}`, {
        domain: top.domain, disk: target, hint: 'Run `virtcbt verify`; restore from another backup',
      });
    }
  }
  return files;
}

/** What `qemu-img info` says of one repository image (opened as qcow2, its backing not opened). */
export interface ImageHeader {
  backing: string | null;
  virtualSize: number;
  dataFile: string | null;
}

export async function readImageHeader(path: string): Promise<ImageHeader> {
  // Opened as qcow2 without a backing file: no format is probed and nothing the header names is opened.
  const r = await execa('qemu-img', ['info', '--output=json', '-U', chainSpec([path])], { reject: false });
  if (r.exitCode !== 0) throw new Error(`it is not a readable qcow2 image: ${r.stderr.trim() || `qemu-img exit ${r.exitCode}`}`);
  const info = JSON.parse(r.stdout) as { 'backing-filename'?: string; 'virtual-size': number; 'format-specific'?: { data?: { 'data-file'?: string } } };
  return { backing: info['backing-filename'] ?? null, virtualSize: info['virtual-size'], dataFile: info['format-specific']?.data?.['data-file'] ?? null };
}

export interface ChainCheckOptions {
  /** A prune under way, whose rebase may have reached an image's header before its manifest. */
  journal?: PruneJournal;
  /** The disk's size from the manifest: the top image must have it. */
  sizeBytes?: number;
  /** Checks already made (by file and expectation), shared by the checks of one chain's points: verify checks each image once. */
  memo?: Map<string, Promise<void>>;
}

/**
 * Checks that every file of `files` (top first, as diskChain gives them) is a regular file in
 * `dir` (not a symlink), a qcow2 image without an external data file, whose header names the
 * next file as its backing (the base: none). Throws an error naming the first damaged file.
 */
export async function checkDiskChain(dir: string, files: readonly string[], where: ImageWhere, o: ChainCheckOptions = {}): Promise<void> {
  for (const [i, file] of files.entries()) {
    const want: string | null = files[i + 1] ?? null;
    const moving = want === null ? undefined : o.journal?.disks.find((e) => e.target === where.disk && (e.top === want || e.merged === want));
    const backing = moving ? [moving.top, moving.merged] : [want];
    const size = i === 0 ? o.sizeBytes : undefined;
    const key = JSON.stringify([dir, file, backing, size]);
    let p = o.memo?.get(key);
    if (!p) {
      p = checkImageFile(dir, file, backing, where, size);
      o.memo?.set(key, p);
    }
    await p;
  }
}

/** The restore point and disk an image belongs to, for messages. */
export interface ImageWhere {
  domain: string;
  disk: string;
  id: string;
}

/** Checks one image of a chain (see checkDiskChain): its header must name one of `backing` (null: none). */
export async function checkImageFile(dir: string, file: string, backing: readonly (string | null)[], where: ImageWhere, sizeBytes?: number): Promise<void> {
  const damaged = (what: string) => new VirtcbtError(`restore point ${where.id}: image ${join(dir, file)} ${what}`, {
    domain: where.domain, disk: where.disk, hint: 'Run `virtcbt verify` for the whole report; restore from another backup',
  });
  const path = join(dir, file);
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    throw damaged(err.code === 'ENOENT' ? 'is missing' : `cannot be read: ${err.message}`);
  });
  if (!st.isFile()) throw damaged(`is ${st.isSymbolicLink() ? 'a symlink' : 'a directory or special file'}, not a regular file: it is not followed`);
  let h: ImageHeader;
  try {
    h = await readImageHeader(path);
  } catch (err) {
    throw damaged((err as Error).message);
  }
  if (h.dataFile !== null) throw damaged(`keeps its data in an external file (${h.dataFile}): repository images never do`);
  if (!backing.includes(h.backing)) {
    throw damaged(`names ${h.backing === null ? 'no backing file' : `the backing file ${h.backing}`} in its header; the manifests say ${backing[0] ?? 'none'}`);
  }
  if (sizeBytes !== undefined && h.virtualSize !== sizeBytes) {
    throw damaged(`is ${h.virtualSize} bytes; the manifest says the disk is ${sizeBytes}`);
  }
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
