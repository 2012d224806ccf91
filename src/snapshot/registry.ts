// The registry of live snapshots: one small file per snapshot in the state directory, written
// before anything of it exists in QEMU or on disk and removed after the last of it is gone. The
// clean-up of leftovers (a backup's, a restarted virtcbtd's) removes only what no live snapshot
// holds, so a backup never tears down a snapshot that a scan, a sync or another consumer's backup
// is still reading. A virtcbtd killed with snapshots open leaves their records: the next one finds
// what they held (fleecing tag, front-end processes, overlay files) and removes it.
import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomically } from '../util/atomic-file.js';
import { NotRegularFileError, readRegularFile } from '../util/regular-file.js';

/** What a snapshot holds, as recorded for its clean-up. */
export interface SnapshotRecord {
  format: 'virtcbt-snapshot/1';
  /** Names the snapshot's nodes, jobs and overlay files in QEMU (`vcbt-fl-TAG-...`). */
  tag: string;
  domain: string;
  /** The job that holds it (`virtcbt jobs`), or `pass-N` for a pass export kept until commit/abort. */
  job: string;
  /** The virtcbtd process that holds it: any other pid is a virtcbtd that died. */
  pid: number;
  createdAt: string;
  /** When it is torn down even if its job has not let go (ISO time), if ever. */
  deadline?: string;
  /** The open pass the snapshot belongs to, for pass exports (kept across a restart while the pass is open). */
  pass?: number;
  /** Front-end processes serving its exports to other hosts. */
  frontEnds: number[];
}

const TAG = /^[a-z0-9]{1,8}$/;
/** A record is a few hundred bytes: anything much bigger was not written by virtcbtd. */
const MAX_RECORD_BYTES = 64 * 1024;

function fileName(domain: string, tag: string): string {
  return `${encodeURIComponent(domain)}.${tag}.json`;
}

/** A record from disk, checked field by field (the state directory is trusted no more than any file). */
function parseRecord(text: string): SnapshotRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Record<string, unknown>;
  const int = (x: unknown) => Number.isSafeInteger(x) && (x as number) > 0;
  if (r.format !== 'virtcbt-snapshot/1' || typeof r.tag !== 'string' || !TAG.test(r.tag) || typeof r.domain !== 'string' || r.domain === '') return undefined;
  if (typeof r.job !== 'string' || !int(r.pid) || typeof r.createdAt !== 'string') return undefined;
  if (!Array.isArray(r.frontEnds) || !r.frontEnds.every(int)) return undefined;
  if (r.pass !== undefined && !int(r.pass)) return undefined;
  if (r.deadline !== undefined && typeof r.deadline !== 'string') return undefined;
  return r as unknown as SnapshotRecord;
}

export class SnapshotRegistry {
  constructor(readonly dir: string, private readonly pid = process.pid) {}

  static newTag(): string {
    return randomBytes(4).toString('hex');
  }

  private path(domain: string, tag: string): string {
    return join(this.dir, fileName(domain, tag));
  }

  /** Records a snapshot (durably: a kill right after must find it). */
  async add(rec: Omit<SnapshotRecord, 'format' | 'pid' | 'createdAt' | 'frontEnds'> & { frontEnds?: number[] }): Promise<SnapshotRecord> {
    const full: SnapshotRecord = { format: 'virtcbt-snapshot/1', pid: this.pid, createdAt: new Date().toISOString(), frontEnds: [], ...rec };
    await this.write(full);
    return full;
  }

  /** Rewrites a record (atomically: a reader sees the old or the new one). */
  async write(rec: SnapshotRecord): Promise<void> {
    await writeFileAtomically(this.path(rec.domain, rec.tag), JSON.stringify(rec) + '\n');
  }

  async remove(domain: string, tag: string): Promise<void> {
    await rm(this.path(domain, tag), { force: true });
  }

  /** Every readable record; files that are not records (junk, half-written temp files) are skipped and named. */
  async list(): Promise<{ records: SnapshotRecord[]; junk: string[] }> {
    const records: SnapshotRecord[] = [];
    const junk: string[] = [];
    for (const f of await readdir(this.dir).catch(() => [] as string[])) {
      if (f.startsWith('.')) {
        // A temp file of a write that never finished: nobody reads it.
        await rm(join(this.dir, f), { force: true }).catch(() => undefined);
        continue;
      }
      let rec: SnapshotRecord | undefined;
      try {
        rec = parseRecord((await readRegularFile(join(this.dir, f), MAX_RECORD_BYTES)).text);
      } catch (err) {
        if (!(err instanceof NotRegularFileError) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      if (rec && f === fileName(rec.domain, rec.tag)) records.push(rec);
      else junk.push(f);
    }
    return { records, junk };
  }

  /** Records of `domain` held by this virtcbtd. */
  async live(domain: string): Promise<SnapshotRecord[]> {
    return (await this.list()).records.filter((r) => r.domain === domain && r.pid === this.pid);
  }

  /** Tags the clean-up of `domain` must keep: this virtcbtd's live snapshots. */
  async heldTags(domain: string): Promise<Set<string>> {
    return new Set((await this.live(domain)).map((r) => r.tag));
  }

  /** Records left by another (dead) virtcbtd. */
  async orphans(): Promise<SnapshotRecord[]> {
    return (await this.list()).records.filter((r) => r.pid !== this.pid);
  }

  /** Takes over a record of a dead virtcbtd that is still wanted (a pass export whose pass is open). */
  async adopt(rec: SnapshotRecord): Promise<void> {
    await this.write({ ...rec, pid: this.pid, frontEnds: [] });
  }
}
