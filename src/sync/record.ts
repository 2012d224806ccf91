// What virtcbtd remembers of each sync target, beside the change log (which holds the consumer's
// position): the target's identity after the last sync, the change log it was synced under, and
// the used map of that instant (so that --discard frees only what was freed since). One file per
// domain and consumer in the state directory, written atomically, read as untrusted input.
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomically } from '../util/atomic-file.js';
import type { Extent } from '../extent/index.js';
import { NotRegularFileError, readRegularFile } from '../util/regular-file.js';
import type { TargetIdentity } from './target.js';

export interface SyncRecord {
  format: 'virtcbt-sync/1';
  domain: string;
  disk: string;
  consumer: string;
  /** The target as named (a path, or the URI without its query). */
  target: string;
  /** The target's key (targetKey): which records name the same target, whatever disk synced to it. */
  key?: string;
  identity: TargetIdentity;
  /** The change log the target was synced under (see changelog/identity.ts). */
  logId: string;
  generation: number;
  syncedAt: string;
  /** Set when a later sync was interrupted after it began writing (keepRecordAfterFailure): when. */
  interruptedAt?: string;
  /** The used map of the synced instant, as [offset, length] pairs (absent when too large to keep). */
  used?: [number, number][];
}

/**
 * Where an interrupted seed got to, kept beside the record as `CONSUMER.seed` until a sync to the
 * target completes: the next sync copies only what is above `doneBelow`, and below it what changed
 * since `generation`, instead of every used block again.
 */
export interface SeedProgress {
  format: 'virtcbt-sync-seed/1';
  domain: string;
  consumer: string;
  key: string;
  /** The target as the interrupted sync left it (closed cleanly): anything else is seeded anew. */
  identity: TargetIdentity;
  logId: string;
  /** The generation whose blocks the seed copied: what changed after it is copied again. */
  generation: number;
  /** Every block the seed was to copy below this byte offset has been copied. */
  doneBelow: number;
  interruptedAt: string;
}

/**
 * A sync that is writing its target, kept beside the record as `CONSUMER.writing` from its first
 * write until it ends (cleanly or not): what a virtcbtd killed meanwhile (SIGKILL, the OOM killer,
 * a crash) left, so that the next one records it as a clean failure would have (recoverWriting)
 * instead of seeding the target again. A seed's `doneBelow` moves only after a flush of the target
 * (checkpoints): what a killed writer acknowledged but never flushed (a qcow2 target's cluster
 * mappings in qemu-nbd's memory) is not counted as copied.
 */
export interface WritingMarker {
  format: 'virtcbt-sync-writing/1';
  domain: string;
  consumer: string;
  key: string;
  /** Which process wrote it (a random token per process): a marker of another is its dead writer's. */
  writer: string;
  /** A file target's path; absent for an NBD target. */
  path?: string;
  /** The target as opened, before the first write: a file's device and inode must still be these. */
  identity: TargetIdentity;
  /** incremental: the record (of identity `recordIdentity`) stays the last good sync; seed: a seed of `generation`. */
  kind: 'incremental' | 'seed';
  recordIdentity?: TargetIdentity;
  logId: string;
  generation: number;
  /** A seed: every block it was to copy below this offset is on the target and flushed. */
  doneBelow: number;
  startedAt: string;
}

/** In a domain's directory: its on-stop syncs are owed (markOnStopOwed). */
const ON_STOP_OWED = 'on-stop.pending';

/** Records are small; a used map of a badly fragmented filesystem is left out above this. */
const MAX_RECORD_BYTES = 16 * 1024 * 1024;
const MAX_USED_EXTENTS = 200_000;

export class SyncRecords {
  constructor(readonly dir: string) {}

  private path(domain: string, consumer: string): string {
    return join(this.dir, encodeURIComponent(domain), `${consumer}.json`);
  }

  /** The record, or undefined when there is none or it cannot be trusted (then the target is seeded again). */
  async read(domain: string, consumer: string): Promise<{ record?: SyncRecord; problem?: string }> {
    let text: string;
    try {
      text = (await readRegularFile(this.path(domain, consumer), MAX_RECORD_BYTES)).text;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
      if (err instanceof NotRegularFileError) return { problem: err.message };
      throw err;
    }
    const r = parseRecord(text, domain, consumer);
    return r ? { record: r } : { problem: `the sync record ${this.path(domain, consumer)} is not one virtcbt wrote` };
  }

  /**
   * The most recent record, of any domain and disk, of a sync to the target with this key: a target
   * last synced from another disk holds that disk's copy. Records that cannot be trusted are skipped.
   */
  async lastOnTarget(key: string): Promise<SyncRecord | undefined> {
    let latest: SyncRecord | undefined;
    for (const { domain, consumer } of await this.filesEnding('.json')) {
      const { record } = await this.read(domain, consumer).catch(() => ({ record: undefined }));
      if (record?.key === key && (!latest || record.syncedAt > latest.syncedAt)) latest = record;
    }
    return latest;
  }

  /** Every (domain, consumer) with a record file, of one domain or all. */
  list(domain?: string): Promise<{ domain: string; consumer: string }[]> {
    return this.filesEnding('.json', domain);
  }

  /**
   * Every (domain, name before `suffix`) of a file ending in `suffix` in a domain's directory, of
   * one domain or all; directories and dot files virtcbt did not make are skipped.
   */
  private async filesEnding(suffix: string, domain?: string): Promise<{ domain: string; consumer: string }[]> {
    const out: { domain: string; consumer: string }[] = [];
    for (const d of await readdir(this.dir, { withFileTypes: true }).catch(() => [])) {
      const name = decodedName(d.name);
      if (!d.isDirectory() || name === undefined || (domain !== undefined && name !== domain)) continue;
      for (const f of await readdir(join(this.dir, d.name)).catch(() => [] as string[])) {
        if (f.endsWith(suffix) && !f.startsWith('.')) out.push({ domain: name, consumer: f.slice(0, -suffix.length) });
      }
    }
    return out;
  }

  /** `used` undefined: the record keeps no used map (the next --discard then frees every free block). */
  async write(rec: SyncRecord, used: readonly Extent[] | undefined): Promise<void> {
    const full: SyncRecord = { ...rec, used: used && used.length <= MAX_USED_EXTENTS ? used.map((e) => [e.offset, e.length]) : undefined };
    await writeFileAtomically(this.path(rec.domain, rec.consumer), JSON.stringify(full));
  }

  private seedPath(domain: string, consumer: string): string {
    return join(this.dir, encodeURIComponent(domain), `${consumer}.seed`);
  }

  /** An interrupted seed's progress, or undefined when there is none or it cannot be trusted (then the seed starts over). */
  async readSeed(domain: string, consumer: string): Promise<SeedProgress | undefined> {
    try {
      const v = JSON.parse((await readRegularFile(this.seedPath(domain, consumer), 64 * 1024)).text) as Partial<SeedProgress> | null;
      const num = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0;
      if (!v || v.format !== 'virtcbt-sync-seed/1' || v.domain !== domain || v.consumer !== consumer || typeof v.key !== 'string' || typeof v.logId !== 'string'
        || !num(v.generation) || !num(v.doneBelow) || typeof v.interruptedAt !== 'string' || !validIdentity(v.identity)) return undefined;
      return v as SeedProgress;
    } catch {
      return undefined;
    }
  }

  async writeSeed(p: SeedProgress): Promise<void> {
    await writeFileAtomically(this.seedPath(p.domain, p.consumer), JSON.stringify(p));
  }

  async removeSeed(domain: string, consumer: string): Promise<void> {
    await rm(this.seedPath(domain, consumer), { force: true });
  }

  private writingPath(domain: string, consumer: string): string {
    return join(this.dir, encodeURIComponent(domain), `${consumer}.writing`);
  }

  async writeWriting(m: WritingMarker): Promise<void> {
    await writeFileAtomically(this.writingPath(m.domain, m.consumer), JSON.stringify(m));
  }

  async removeWriting(domain: string, consumer: string): Promise<void> {
    await rm(this.writingPath(domain, consumer), { force: true });
  }

  /**
   * The marker of a sync writing to this consumer's target, if any: `junk` when the file is there
   * but is not one virtcbt wrote (it is then removed by recoverWriting, and the target seeded as
   * its record says).
   */
  async readWriting(domain: string, consumer: string): Promise<WritingMarker | 'junk' | undefined> {
    let text: string;
    try {
      text = (await readRegularFile(this.writingPath(domain, consumer), 64 * 1024)).text;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return 'junk';
    }
    try {
      const v = JSON.parse(text) as Partial<WritingMarker> | null;
      const num = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0;
      if (!v || v.format !== 'virtcbt-sync-writing/1' || v.domain !== domain || v.consumer !== consumer || typeof v.key !== 'string'
        || typeof v.writer !== 'string' || (v.path !== undefined && typeof v.path !== 'string') || !validIdentity(v.identity)
        || (v.kind !== 'incremental' && v.kind !== 'seed') || (v.recordIdentity !== undefined && !validIdentity(v.recordIdentity))
        || typeof v.logId !== 'string' || !num(v.generation) || !num(v.doneBelow) || typeof v.startedAt !== 'string'
        || (v.path !== undefined) !== (v.identity.kind === 'file')) return 'junk';
      return v as WritingMarker;
    } catch {
      return 'junk';
    }
  }

  /** Every (domain, consumer) with a writing marker, for the sweep at daemon start. */
  listWriting(): Promise<{ domain: string; consumer: string }[]> {
    return this.filesEnding('.writing');
  }

  private onStopPath(domain: string): string {
    return join(this.dir, encodeURIComponent(domain), ON_STOP_OWED);
  }

  /** Notes that a domain's on-stop syncs are owed (until clearOnStopOwed): a killed virtcbtd's successor runs them. */
  async markOnStopOwed(domain: string): Promise<void> {
    await writeFileAtomically(this.onStopPath(domain), new Date().toISOString());
  }

  async clearOnStopOwed(domain: string): Promise<void> {
    await rm(this.onStopPath(domain), { force: true });
  }

  /** The domains whose on-stop syncs are owed. */
  async onStopOwed(): Promise<string[]> {
    return (await this.filesEnding(ON_STOP_OWED)).filter((f) => f.consumer === '').map((f) => f.domain);
  }
}

/** A domain directory's name decoded, or undefined for one virtcbt did not make ("%zz" would throw). */
function decodedName(name: string): string | undefined {
  try {
    const d = decodeURIComponent(name);
    return encodeURIComponent(d) === name ? d : undefined;
  } catch {
    return undefined;
  }
}

function validIdentity(u: unknown): u is TargetIdentity {
  const id = u as Record<string, unknown> | undefined;
  const num = (x: unknown) => typeof x === 'number' && Number.isFinite(x) && x >= 0;
  if (!id || typeof id !== 'object') return false;
  if (id.kind === 'file') return num(id.dev) && num(id.ino) && num(id.size) && num(id.mtimeMs);
  if (id.kind === 'nbd') return typeof id.uri === 'string' && num(id.size);
  return false;
}

function parseRecord(text: string, domain: string, consumer: string): SyncRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  const r = v as Partial<SyncRecord> | null;
  if (!r || typeof r !== 'object' || r.format !== 'virtcbt-sync/1' || r.domain !== domain || r.consumer !== consumer) return undefined;
  if (r.key !== undefined && typeof r.key !== 'string') return undefined;
  if (typeof r.syncedAt !== 'string') return undefined;
  if (r.interruptedAt !== undefined && typeof r.interruptedAt !== 'string') return undefined;
  if (typeof r.disk !== 'string' || typeof r.target !== 'string' || typeof r.logId !== 'string' || !Number.isSafeInteger(r.generation)) return undefined;
  if (!validIdentity(r.identity)) return undefined;
  if (r.used !== undefined) {
    if (!Array.isArray(r.used)) return undefined;
    let end = 0;
    for (const p of r.used) {
      if (!Array.isArray(p) || p.length !== 2 || !Number.isSafeInteger(p[0]) || !Number.isSafeInteger(p[1]) || p[0] < end || p[1] <= 0) return undefined;
      end = p[0] + p[1];
    }
  }
  return r as SyncRecord;
}
