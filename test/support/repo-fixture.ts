// A repository made by hand, no VM needed: a chain of real qcow2 images (a full one, then overlays,
// written with qemu-img and qemu-io) and the manifests a backup would write for them, checksums
// included, so that list, verify, restore and prune work on it. Beside the repository, a sandbox
// directory of files that no command may touch (compared byte for byte at the end).
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { DIGEST_SEGMENT, MANIFEST_FORMAT, Repository, newDigestInfo, writeManifest, type Manifest } from '../../src/repo/index.js';
import { MiB, tempDir } from './backup.js';

export const DISK_SIZE = 4 * MiB;

/** The pattern byte point `seq` writes, over [seq-1 MiB, +1 MiB) of its disk. */
export function pattern(seq: number): number {
  return 0x10 + seq;
}

/** The checksum a backup records for `length` bytes of `byte` at `offset` (digest.ts's definition). */
function digestOf(offset: number, length: number, byte: number): string {
  const outer = createHash('sha256');
  for (let p = offset; p < offset + length;) {
    const e = Math.min(offset + length, (Math.floor(p / DIGEST_SEGMENT) + 1) * DIGEST_SEGMENT);
    const rec = Buffer.alloc(48);
    rec.writeBigUInt64BE(BigInt(p), 0);
    rec.writeBigUInt64BE(BigInt(e - p), 8);
    createHash('sha256').update(Buffer.alloc(e - p, byte)).digest().copy(rec, 16);
    outer.update(rec);
    p = e;
  }
  return outer.digest('hex');
}

export interface HandMadeRepo {
  /** The directory beside the repository whose files must stay as they are. */
  sandbox: string;
  root: string;
  repo: Repository;
  /** Chain directory of each consumer. */
  dirs: Record<string, string>;
}

/** The manifest of point `seq` of `consumer`, as a backup writes it. */
export function manifestOf(domain: string, consumer: string, seq: number, time: string): Manifest {
  const id = `${consumer}-${String(seq).padStart(4, '0')}`;
  const prev = `${consumer}-${String(seq - 1).padStart(4, '0')}`;
  const off = (seq - 1) * MiB;
  return {
    format: MANIFEST_FORMAT, id, domain, uuid: 'u-1', consumer, seq, time, completedAt: time, generation: seq, since: seq === 1 ? null : seq - 1,
    pass: seq, parent: seq === 1 ? null : prev, kind: seq === 1 ? 'full' : 'incremental', running: false, consistency: 'filesystem',
    freezeWindowMs: null, digest: newDigestInfo(), domainXml: '<domain/>',
    disks: [{
      target: 'vda', sizeBytes: DISK_SIZE, file: `${id}.vda.qcow2`, backing: seq === 1 ? null : `${prev}.vda.qcow2`, full: seq === 1,
      extents: [[off, MiB]], bytes: MiB, written: MiB, sha256: digestOf(off, MiB, pattern(seq)),
    }],
  };
}

/**
 * Makes a repository with, for each consumer, `points` restore points of domain `domain` (disk
 * vda), point N writing pattern(N) over [N-1 MiB, N MiB); `times` gives each point's time.
 */
export async function handMadeRepo(o: { domain?: string; consumers?: Record<string, string[]> } = {}): Promise<HandMadeRepo> {
  const domain = o.domain ?? 'vm1';
  const consumers = o.consumers ?? { nightly: ['2026-01-01T00:00:00.000Z', '2026-01-02T00:00:00.000Z', '2026-01-03T00:00:00.000Z'] };
  const base = tempDir('handmade');
  const sandbox = join(base, 'sandbox');
  mkdirSync(sandbox);
  for (const f of ['victim.qcow2', 'victim.json', 'nightly-0001.vda.qcow2', 'secret.txt']) writeFileSync(join(sandbox, f), `sandbox file ${f}\n`);
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(sandbox, 'live.qcow2'), String(DISK_SIZE)]);
  const root = join(base, 'repo');
  const repo = await Repository.open(root, { create: true });
  const dirs: Record<string, string> = {};
  for (const [consumer, times] of Object.entries(consumers)) {
    const dir = repo.chainDir(domain, consumer);
    mkdirSync(dir, { recursive: true });
    dirs[consumer] = dir;
    for (let seq = 1; seq <= times.length; seq++) {
      const m = manifestOf(domain, consumer, seq, times[seq - 1]!);
      const d = m.disks[0]!;
      const args = ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536'];
      if (d.backing) args.push('-b', d.backing, '-F', 'qcow2');
      await execa('qemu-img', [...args, join(dir, d.file), String(DISK_SIZE)], { cwd: dir });
      await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern(seq)} ${(seq - 1) * MiB} ${MiB}`, join(dir, d.file)], { cwd: dir });
      await writeManifest(dir, m);
    }
  }
  return { sandbox, root: repo.root, repo, dirs };
}

/** Every file under `dir` with its content (symlinks as their target), to compare before and after. */
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

/** The sandbox is exactly as it was. */
export function expectUntouched(dir: string, before: Record<string, string>, what?: string): void {
  expect(snapshotTree(dir), what).toEqual(before);
}
