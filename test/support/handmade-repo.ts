// A repository built by hand, without a VM: chains of real qcow2 images (a full backup, then overlays
// made with qemu-img create -b, data written with qemu-io), their manifests with the checksums a
// backup records (computed by the product's ExtentDigest), raw reference copies of every point on
// request, and a sandbox beside the repository whose files no command may touch.
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { closeSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { NullEndpoint, copyExtents } from '../../src/copy/index.js';
import { DIGEST_SEGMENT, ExtentDigest, MANIFEST_FORMAT, Repository, chainSpec, newDigestInfo, serveChain, writeManifest, type Manifest } from '../../src/repo/index.js';
import { MiB, tempDir } from './files.js';

export interface HandmadePoint {
  id: string;
  manifest: Manifest;
  /** Raw copy of each disk at this point (target → path); empty unless `refs` was set. */
  refs: Record<string, string>;
}

export interface HandmadeRepo {
  root: string;
  repo: Repository;
  domain: string;
  /** The first consumer, its chain directory and its points (the only chain unless `consumers` names more). */
  consumer: string;
  dir: string;
  points: HandmadePoint[];
  /** Chain directory of each consumer. */
  dirs: Record<string, string>;
  /** Points of each consumer, oldest first. */
  chains: Record<string, HandmadePoint[]>;
  /** The directory beside the repository whose files must stay as they are (only with `sandbox`). */
  sandbox?: string;
}

/** A repository made with `sandbox: true`. */
export type SandboxedRepo = HandmadeRepo & { sandbox: string };

export interface HandmadeOptions {
  /** Default vm1. */
  domain?: string;
  /** Consumer → its number of points, or the time of each point (ISO); default { nightly: 3 }. Point N's time is otherwise 2026-01-0N. */
  consumers?: Record<string, number | string[]>;
  /** Sequence numbers (1-based) that start a new chain with a full backup besides the first, in every consumer. */
  fullAt?: number[];
  /** Default ['vda']. */
  disks?: string[];
  /** Virtual size of every disk; default 16 MiB. */
  sizeBytes?: number;
  /** Bytes each point writes to each disk, at extentOf(...) with pattern(...); default 1 MiB. */
  writeBytes?: number;
  /** Make a raw reference copy of every disk at every point (HandmadePoint.refs). */
  refs?: boolean;
  /** Make a sandbox directory beside the repository (live.qcow2, victim.qcow2, victim.json, ...). */
  sandbox?: boolean;
}

/** The byte point `seq` writes to its `n`th disk: 0x10 + seq on the first disk. */
export function pattern(seq: number, n = 0): number {
  return (0x0f + seq + 0x40 * n) % 255 + 1;
}

/** Where point `seq` writes on its `n`th disk (of `disks`): (seq - 1) × writeBytes on a single disk. */
export function extentOf(seq: number, n = 0, o: { disks?: number; writeBytes?: number; sizeBytes?: number } = {}): [number, number] {
  const writeBytes = o.writeBytes ?? MiB;
  return [(((seq - 1) * (o.disks ?? 1) + n) * writeBytes) % (o.sizeBytes ?? 16 * MiB), writeBytes];
}

/** The checksum a backup records for `extents` of the image chain `files` (top first). */
async function checksum(files: string[], extents: [number, number][]): Promise<string> {
  const img = await serveChain(files, { runDir: tempDir('handmade-run') });
  try {
    const digest = new ExtentDigest();
    await copyExtents(img.endpoint, digest.wrap(new NullEndpoint(img.endpoint.size)), digest.track(extents.map(([offset, length]) => ({ offset, length }))), { requestSize: 4 * DIGEST_SEGMENT });
    return await digest.finish();
  } finally {
    await img.close();
  }
}

export async function handmadeRepo(o: HandmadeOptions & { sandbox: true }): Promise<SandboxedRepo>;
export async function handmadeRepo(o?: HandmadeOptions): Promise<HandmadeRepo>;
export async function handmadeRepo(o: HandmadeOptions = {}): Promise<HandmadeRepo> {
  const domain = o.domain ?? 'vm1';
  const disks = o.disks ?? ['vda'];
  const size = o.sizeBytes ?? 16 * MiB;
  const layout = { disks: disks.length, writeBytes: o.writeBytes ?? MiB, sizeBytes: size };
  const base = tempDir('handmade');
  let sandbox: string | undefined;
  if (o.sandbox) {
    sandbox = join(base, 'sandbox');
    mkdirSync(sandbox);
    for (const f of ['victim.qcow2', 'victim.json', 'nightly-0001.vda.qcow2', 'secret.txt']) writeFileSync(join(sandbox, f), `sandbox file ${f}\n`);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(sandbox, 'live.qcow2'), String(size)]);
  }
  const refDir = join(base, 'refs');
  if (o.refs) mkdirSync(refDir);
  const repo = await Repository.open(join(base, 'repo'), { create: true });
  const dirs: Record<string, string> = {};
  const chains: Record<string, HandmadePoint[]> = {};
  for (const [consumer, spec] of Object.entries(o.consumers ?? { nightly: 3 })) {
    const times = typeof spec === 'number' ? Array.from({ length: spec }, (_, i) => new Date(Date.UTC(2026, 0, i + 1)).toISOString()) : spec;
    const dir = repo.chainDir(domain, consumer);
    mkdirSync(dir, { recursive: true });
    dirs[consumer] = dir;
    const points: HandmadePoint[] = chains[consumer] = [];
    const chainOf = new Map<string, string[]>(); // target → files of the current chain, top first
    for (let seq = 1; seq <= times.length; seq++) {
      const id = `${consumer}-${String(seq).padStart(4, '0')}`;
      const full = seq === 1 || (o.fullAt ?? []).includes(seq);
      const refs: Record<string, string> = {};
      const mdisks: Manifest['disks'] = [];
      for (const [n, target] of disks.entries()) {
        const file = `${id}.${target}.qcow2`;
        const backing = full ? null : chainOf.get(target)![0]!;
        await execa('qemu-img', ['create', '-q', '-f', 'qcow2', ...(backing ? ['-b', backing, '-F', 'qcow2'] : []), join(dir, file), String(size)]);
        const [offset, length] = extentOf(seq, n, layout);
        await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern(seq, n)} ${offset} ${length}`, join(dir, file)]);
        const files = [file, ...(full ? [] : chainOf.get(target)!)];
        chainOf.set(target, files);
        if (o.refs) {
          refs[target] = join(refDir, `${id}.${target}.raw`);
          await execa('qemu-img', ['convert', '-O', 'raw', chainSpec(files.map((f) => join(dir, f))), refs[target]]);
        }
        const extents: [number, number][] = full ? [[0, size]] : [[offset, length]];
        mdisks.push({
          target, sizeBytes: size, file, backing, full, extents, bytes: extents.reduce((s, [, l]) => s + l, 0), written: length,
          sha256: await checksum(files.map((f) => join(dir, f)), extents),
        });
      }
      const time = times[seq - 1]!;
      const manifest: Manifest = {
        format: MANIFEST_FORMAT, id, domain, uuid: '00000000-0000-4000-8000-000000000001', consumer, seq, time, completedAt: time,
        generation: seq, since: full ? null : seq - 1, pass: seq, parent: full ? null : points[points.length - 1]!.id,
        kind: full ? 'full' : 'incremental', running: false, consistency: 'crash', freezeWindowMs: null, digest: newDigestInfo(),
        disks: mdisks, domainXml: `<domain><name>${domain}</name></domain>`,
      };
      await writeManifest(dir, manifest);
      points.push({ id, manifest, refs });
    }
  }
  const consumer = Object.keys(dirs)[0]!;
  return { root: repo.root, repo, domain, consumer, dir: dirs[consumer]!, points: chains[consumer]!, dirs, chains, sandbox };
}

/** Every file under `dir` with its content's hash (symlinks and others by kind), to compare before and after. */
export function snapshotTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const st = lstatSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) out[p] = createHash('sha256').update(readFileSync(p)).digest('hex');
      else out[p] = `(${st.isSymbolicLink() ? 'link' : 'other'})`;
    }
  };
  walk(dir);
  return out;
}

/** The directory is exactly as snapshotTree saw it. */
export function expectUntouched(dir: string, before: Record<string, string>, what?: string): void {
  expect(snapshotTree(dir), what).toEqual(before);
}

/**
 * Damages the qcow2 image at `path` where only its metadata shows it: the first L1 entry points past
 * the end of the file. Size and header stay as they were (the cheap chain check passes); `qemu-img
 * check` reports it, and a read of those clusters would fail or read zeroes.
 */
export function corruptFirstL1Entry(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    const header = Buffer.alloc(48);
    readSync(fd, header, 0, 48, 0);
    const l1 = Number(header.readBigUInt64BE(40));
    const entry = Buffer.alloc(8);
    readSync(fd, entry, 0, 8, l1);
    const copied = entry.readBigUInt64BE(0) & (1n << 63n);
    entry.writeBigUInt64BE(copied | 0x40000000n, 0);
    writeSync(fd, entry, 0, 8, l1);
  } finally {
    closeSync(fd);
  }
}
