// Verify: for every restore point, the chain check restore and backup make (chain.ts), `qemu-img
// check` of each image, and the checksum of the copied extents re-read through the chain.
import { execa } from 'execa';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { NullEndpoint, copyExtents } from '../copy/index.js';
import { fromPairs } from '../extent/index.js';
import { errorMessage } from '../util/errors.js';
import { DIGEST_ALGORITHM, DIGEST_SEGMENT, ExtentDigest } from './digest.js';
import { chainSpec, checkDiskChain, entryProblem, problemAt, walkDisk } from './chain.js';
import { makeRunDir, serveChain, sweepStaleRunDirs } from './image-server.js';
import type { Manifest } from './manifest.js';
import { inChain } from './names.js';
import type { PruneJournal, Repository, RepoProblem } from './repository.js';

export interface DiskVerdict {
  id: string;
  consumer: string;
  disk: string;
  file: string;
  ok: boolean;
  problems: string[];
  /** Harmless findings (leaked clusters). */
  warnings: string[];
  bytes: number;
}

export interface VerifyReport {
  ok: boolean;
  checked: number;
  disks: DiskVerdict[];
  /** Files under a domain that are not named like anything of a chain: not verified, left alone. */
  ignored: RepoProblem[];
}

export async function checkImage(path: string): Promise<{ problems: string[]; warnings: string[] }> {
  // Checked as qcow2 with no backing: the header's backing file is neither probed nor opened.
  const r = await execa('qemu-img', ['check', '--output=json', '-U', chainSpec([path])], { reject: false });
  // Exit 0: clean; 3: leaked clusters only (space, not data); 2: corruption; 1: could not check.
  if (r.exitCode === 0) return { problems: [], warnings: [] };
  if (r.exitCode === 3) return { problems: [], warnings: ['leaked clusters (wasted space only; `qemu-img check -r leaks` frees them)'] };
  let detail = r.stderr.trim();
  try {
    const j = JSON.parse(r.stdout) as { corruptions?: number; 'check-errors'?: number };
    detail = `${j.corruptions ?? 0} corruptions, ${j['check-errors'] ?? 0} check errors${detail ? `; ${detail}` : ''}`;
  } catch { /* not JSON: keep stderr */ }
  return { problems: [`qemu-img check failed (exit ${r.exitCode}): ${detail}`], warnings: [] };
}

/**
 * Checks one restore point. `chain` is every manifest of its consumer, those a pending prune is
 * removing included (their images still back the kept ones until it finishes); `journal` is that
 * prune's journal, whose rebase may have reached an image before its manifest.
 */
export async function verifyManifest(repo: Repository, m: Manifest, chain: Manifest[], journal?: PruneJournal): Promise<DiskVerdict[]> {
  const dir = repo.chainDir(m.domain, m.consumer);
  const out: DiskVerdict[] = [];
  const runDir = await makeRunDir('verify');
  try {
    for (const d of m.disks) {
      const v: DiskVerdict = { id: m.id, consumer: m.consumer, disk: d.target, file: d.file, ok: false, problems: [], warnings: [], bytes: d.bytes };
      out.push(v);
      // The structural check first: qemu-img check opens what a header names (an external data file), this does not.
      const own = await entryProblem(dir, d.target, d, true, async () => journal);
      if (own) {
        v.problems.push(`image ${problemAt(dir, own)}`);
        continue;
      }
      if (d.backing && !chain.some((x) => x.disks.some((y) => y.target === d.target && y.file === d.backing))) {
        v.problems.push(`no restore point of this chain owns the backing file ${d.backing}`);
      }
      const c = await checkImage(inChain(dir, d.file));
      v.problems.push(...c.problems);
      v.warnings.push(...c.warnings);
      if (m.digest?.algorithm !== DIGEST_ALGORITHM || m.digest.segment !== DIGEST_SEGMENT) {
        v.problems.push(`unknown checksum ${JSON.stringify(m.digest)}`);
      } else if (v.problems.length === 0) {
        try {
          // Read through the chain the manifests give, whatever the headers name; the other images
          // of that chain are checked as restore checks them (each is also verified as its own point).
          const files = await checkDiskChain(dir, chain, m, d.target, { journal });
          const img = await serveChain(files.map((f) => join(dir, f)), { runDir });
          try {
            const digest = new ExtentDigest();
            await copyExtents(img.endpoint, digest.wrap(new NullEndpoint(img.endpoint.size)), digest.track(fromPairs(d.extents)), {
              requestSize: 4 * DIGEST_SEGMENT,
            }).catch(async (err) => {
              await digest.abandon();
              throw err;
            });
            const sum = await digest.finish();
            if (sum !== d.sha256) v.problems.push(`checksum mismatch: the data reads as ${sum}, the manifest says ${d.sha256}`);
          } finally {
            await img.close();
          }
        } catch (err) {
          v.problems.push(`reading the data failed: ${errorMessage(err)}`);
        }
      }
      v.ok = v.problems.length === 0;
    }
  } finally {
    await rm(runDir, { recursive: true, force: true });
  }
  return out;
}

/**
 * Verifies every restore point of `domain` (or of every domain in the repository). A damaged
 * manifest (or journal, or chain directory) is a failed verdict naming the file; the rest is
 * verified all the same. Files that are not a chain's are warnings (`ignored`).
 */
export async function verifyRepo(repo: Repository, domain?: string, onDisk?: (v: DiskVerdict) => void): Promise<VerifyReport> {
  const disks: DiskVerdict[] = [];
  const ignored: RepoProblem[] = [];
  let checked = 0;
  const report = (v: DiskVerdict) => {
    disks.push(v);
    onDisk?.(v);
  };
  // Temp directories of killed verifies and restores.
  await sweepStaleRunDirs();
  for (const dom of domain ? [domain] : await repo.domains()) {
    const state = await repo.domainState(dom);
    ignored.push(...state.ignored);
    for (const p of state.damaged) {
      if (p.id) checked++;
      report({ id: p.id ?? '-', consumer: p.consumer ?? '-', disk: '-', file: p.path, ok: false, problems: [p.problem], warnings: [], bytes: 0 });
    }
    for (const c of state.chains) {
      // Images whose own point failed (by disk): a point above one reads its damage through the chain.
      const failed = new Map<string, string>();
      for (const m of c.points) {
        checked++;
        for (const v of await verifyManifest(repo, m, c.all, c.journal)) {
          if (v.ok) {
            const w = walkDisk(c.all, m, v.disk);
            for (const below of 'disks' in w ? w.disks.slice(1) : []) {
              const id = failed.get(`${v.disk}/${below.file}`);
              if (id) v.problems.push(`image ${inChain(repo.chainDir(m.domain, m.consumer), below.file)} (restore point ${id}) failed its check, and this point's data is read through it`);
            }
            v.ok = v.problems.length === 0;
          }
          if (!v.ok) failed.set(`${v.disk}/${v.file}`, m.id);
          report(v);
        }
      }
    }
  }
  return { ok: disks.every((d) => d.ok), checked, disks, ignored };
}
