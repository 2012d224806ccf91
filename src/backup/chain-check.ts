// Whether a restore point's chain is whole: before a backup continues it (and its consumer moves onto the new
// point), every image from that point down to its standalone base, linked as the MANIFESTS say (not the headers),
// must be a regular file whose qcow2 header has the manifest's virtual size and backing file. Cheap by design: an
// lstat per image, and its header (one or two small reads) only when the file changed since it was last read.
import type { BigIntStats } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { Qcow2HeaderError, readQcow2Header, type Qcow2Header } from '../qcow2/index.js';
import type { BackupDisk, Manifest } from '../repo/index.js';
import { fileStamp } from '../util/file-stamp.js';

/** Headers by path, reused while the file is unchanged (same stamp as the lstat just taken). */
const headers = new Map<string, { stamp: string; header: Qcow2Header }>();
const HEADERS_MAX = 4096;

/**
 * Per disk target of `top`, what is wrong with its chain (e.g. "ce-0001.vda.qcow2 is missing"); a disk whose chain
 * is whole has no entry. `manifests` are the chain's restore points; `more` is asked for further manifests only when
 * a backing file is named by none of them (points a pending prune hides).
 */
export async function checkChain(
  dir: string, top: Manifest, manifests: readonly Manifest[], more: () => Promise<readonly Manifest[]>,
): Promise<Map<string, string>> {
  let all: readonly Manifest[] | undefined;
  const find = async (target: string, file: string): Promise<BackupDisk | undefined> => {
    const named = (ms: readonly Manifest[]) => {
      for (const m of ms) for (const d of m.disks) if (d.target === target && d.file === file) return d;
      return undefined;
    };
    const d = named(manifests);
    if (d) return d;
    all ??= await more();
    return named(all);
  };
  const damage = new Map<string, string>();
  await Promise.all(top.disks.map(async (start) => {
    const why = await checkDisk(dir, start, find);
    if (why !== undefined) damage.set(start.target, why);
  }));
  return damage;
}

async function checkDisk(dir: string, start: BackupDisk, find: (target: string, file: string) => Promise<BackupDisk | undefined>): Promise<string | undefined> {
  const seen = new Set<string>();
  for (let d: BackupDisk | undefined = start; d;) {
    if (seen.has(d.file)) return `the manifests' backing links loop back to ${d.file}`;
    seen.add(d.file);
    const why = await checkImage(dir, d);
    if (why !== undefined) return why;
    if (d.backing === null) return undefined;
    const below: BackupDisk | undefined = await find(start.target, d.backing);
    if (!below) return `no manifest names ${d.backing}, the backing file of ${d.file}`;
    d = below;
  }
  return undefined;
}

/** What is wrong with one image against its manifest entry, or undefined. */
async function checkImage(dir: string, d: BackupDisk): Promise<string | undefined> {
  // Manifests may come from anywhere: a name that is not one plain file of the chain's directory is not followed.
  if (d.file.includes('/') || d.file.includes('\0') || d.file === '.' || d.file === '..' || d.file === '') {
    return `${JSON.stringify(d.file)} is not a file name in the chain's directory`;
  }
  const path = join(dir, d.file);
  let st: BigIntStats;
  try {
    st = await lstat(path, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return `${d.file} is missing`;
    return `${d.file} cannot be read (${(err as Error).message})`;
  }
  if (st.isSymbolicLink()) return `${d.file} is a symbolic link`;
  if (!st.isFile()) return `${d.file} is not a regular file`;
  const stamp = fileStamp(st);
  let header = headers.get(path)?.stamp === stamp ? headers.get(path)!.header : undefined;
  if (!header) {
    try {
      header = await readQcow2Header(path);
    } catch (err) {
      if (err instanceof Qcow2HeaderError) return `${d.file} ${err.what}`;
      return `${d.file} cannot be read (${(err as Error).message})`;
    }
    headers.delete(path);
    headers.set(path, { stamp, header });
    if (headers.size > HEADERS_MAX) headers.delete(headers.keys().next().value as string);
  }
  if (header.size !== d.sizeBytes) return `${d.file} has a virtual size of ${header.size} bytes, its manifest says ${d.sizeBytes}`;
  if (header.backing !== d.backing) {
    return `${d.file} is backed by ${header.backing === null ? 'no file' : JSON.stringify(header.backing)} in its header, ` +
      `by ${d.backing === null ? 'no file' : JSON.stringify(d.backing)} in its manifest`;
  }
  // A header that reads well may belong to a copy cut short further on: its lost clusters would read as zeroes.
  if (Number.isSafeInteger(d.written) && st.size < BigInt(d.written)) {
    return `${d.file} is ${st.size} bytes, smaller than the ${d.written} bytes of data its backup wrote into it (cut short)`;
  }
  return undefined;
}
