// A repository built by hand, without a VM: one consumer's chain of qcow2 images (a full backup and
// incrementals made with qemu-img create -b, data written with qemu-io) and their manifests
// written with writeManifest, checksums included, plus a raw reference copy of every point.
import { execa } from 'execa';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { NullEndpoint, copyExtents } from '../../src/copy/index.js';
import { ExtentDigest, MANIFEST_FORMAT, Repository, chainSpec, newDigestInfo, serveImage, writeManifest, type Manifest } from '../../src/repo/index.js';
import { DIGEST_SEGMENT } from '../../src/repo/digest.js';
import { MiB, tempDir } from './backup.js';

export interface HandmadePoint {
  id: string;
  manifest: Manifest;
  /** Raw copy of each disk at this point (target → path). */
  refs: Record<string, string>;
}

export interface HandmadeRepo {
  root: string;
  repo: Repository;
  domain: string;
  consumer: string;
  /** The chain directory. */
  dir: string;
  points: HandmadePoint[];
}

export interface HandmadeOptions {
  domain?: string;
  consumer?: string;
  disks?: string[];
  /** Number of restore points: the first full, the others incrementals on it (or `fullAt` starts a new chain). */
  points?: number;
  /** Sequence numbers (1-based) that are full backups besides the first. */
  fullAt?: number[];
  sizeBytes?: number;
  /** Bytes each point writes (at its own offset, with its own pattern). */
  writeBytes?: number;
}

async function sha(files: string[], extents: [number, number][]): Promise<string> {
  const runDir = tempDir('handmade-run');
  const img = await serveImage(files, { runDir });
  try {
    const digest = new ExtentDigest();
    await copyExtents(img.endpoint, digest.wrap(new NullEndpoint(img.endpoint.size)), digest.track(extents.map(([offset, length]) => ({ offset, length }))), { requestSize: 4 * DIGEST_SEGMENT });
    return await digest.finish();
  } finally {
    await img.close();
  }
}

export async function handmadeRepo(o: HandmadeOptions = {}): Promise<HandmadeRepo> {
  const root = tempDir('handmade-repo');
  const refDir = tempDir('handmade-refs');
  const domain = o.domain ?? 'hand';
  const consumer = o.consumer ?? 'nightly';
  const disks = o.disks ?? ['vda'];
  const size = o.sizeBytes ?? 16 * MiB;
  const writeBytes = o.writeBytes ?? 1 * MiB;
  const repo = await Repository.open(root);
  const dir = repo.chainDir(domain, consumer);
  mkdirSync(dir, { recursive: true });
  const points: HandmadePoint[] = [];
  const chainOf = new Map<string, string[]>(); // target → files of the current chain, top first
  for (let seq = 1; seq <= (o.points ?? 3); seq++) {
    const id = `${consumer}-${String(seq).padStart(4, '0')}`;
    const full = seq === 1 || (o.fullAt ?? []).includes(seq);
    const refs: Record<string, string> = {};
    const mdisks: Manifest['disks'] = [];
    for (const [n, target] of disks.entries()) {
      const file = `${id}.${target}.qcow2`;
      const backing = full ? null : chainOf.get(target)![0]!;
      await execa('qemu-img', ['create', '-q', '-f', 'qcow2', ...(backing ? ['-b', backing, '-F', 'qcow2'] : []), join(dir, file), String(size)]);
      const offset = ((seq * 2 + n) * writeBytes) % size;
      await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${(seq * 16 + n) % 255 + 1} ${offset} ${writeBytes}`, join(dir, file)]);
      const files = [file, ...(full ? [] : chainOf.get(target)!)];
      chainOf.set(target, files);
      refs[target] = join(refDir, `${id}.${target}.raw`);
      await execa('qemu-img', ['convert', '-O', 'raw', chainSpec(files.map((f) => join(dir, f))), refs[target]]);
      const extents: [number, number][] = full ? [[0, size]] : [[offset, writeBytes]];
      mdisks.push({
        target, sizeBytes: size, file, backing, full, extents, bytes: extents.reduce((s, [, l]) => s + l, 0), written: writeBytes,
        sha256: await sha(files.map((f) => join(dir, f)), extents),
      });
    }
    const time = new Date(Date.UTC(2026, 0, 1, 0, seq)).toISOString();
    const manifest: Manifest = {
      format: MANIFEST_FORMAT, id, domain, uuid: '00000000-0000-4000-8000-000000000001', consumer, seq, time, completedAt: time,
      generation: seq, since: full ? null : seq - 1, pass: seq, parent: full ? null : points[points.length - 1]!.id,
      kind: full ? 'full' : 'incremental', running: false, consistency: 'crash', freezeWindowMs: null, digest: newDigestInfo(),
      disks: mdisks, domainXml: `<domain><name>${domain}</name></domain>`,
    };
    await writeManifest(dir, manifest);
    points.push({ id, manifest, refs });
  }
  return { root, repo, domain, consumer, dir, points };
}
