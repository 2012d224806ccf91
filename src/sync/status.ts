// `virtcbt sync status`: every sync target virtcbtd knows (records of past syncs, and the targets
// the config names for on-stop and scheduled syncs), with when it was last brought up to date, how
// much the guest has modified since (as folded into the change log so far), and what the next sync
// will do about anything out of the ordinary: a target changed behind virtcbt's back (a full seed),
// an interrupted sync (copies everything since the last complete one), a seed to resume.
import type { ChangeLog } from '../changelog/index.js';
import { totalBytes } from '../extent/index.js';
import { errorMessage } from '../util/errors.js';
import { WRITER } from './interrupted.js';
import type { SyncRecords } from './record.js';
import { describeTarget, fileIdentity, identityChange, parseTarget, syncConsumerName, targetKey } from './target.js';

export interface ConfiguredSync {
  domain: string;
  disk: string;
  to: string;
  /** Where the config names it: "on stop", "job NAME". */
  as: string;
}

export interface SyncTargetStatus {
  domain: string;
  disk: string;
  target: string;
  consumer: string;
  /** Where the config names this target (empty: synced by hand only). */
  configured: string[];
  /** When the last complete sync ended; absent: never. */
  lastSync?: string;
  /** The last sync after it was interrupted after it began writing (the next copies everything since the last complete one). */
  interruptedAt?: string;
  /** Why the record is not trusted (the next sync seeds the target). */
  recordProblem?: string;
  /** Why the target is not the copy the last sync left (the next sync seeds it); absent when it is, or for NBD targets (not checked from here). */
  targetChanged?: string;
  /** A seed cut short that the next sync resumes from this offset. */
  seedResumesAt?: number;
  /** A sync writing this target now (or left by a killed virtcbtd, recorded at its next start). */
  writing?: { startedAt: string; live: boolean };
  /** Bytes of the disk modified since the last sync, as folded into the change log so far; `full`: everything (no history). */
  modifiedSince?: { bytes: number; full: boolean };
  /** What could not be read for this entry. */
  problem?: string;
}

/** The status of every known sync target, of one domain or all, in domain, disk and target order. */
export async function syncStatus(records: SyncRecords, log: ChangeLog, configured: readonly ConfiguredSync[], domain?: string): Promise<SyncTargetStatus[]> {
  const byConsumer = new Map<string, SyncTargetStatus>();
  const entry = (d: string, consumer: string, init: () => Omit<SyncTargetStatus, 'domain' | 'consumer' | 'configured'>) => {
    const k = JSON.stringify([d, consumer]);
    let e = byConsumer.get(k);
    if (!e) byConsumer.set(k, e = { domain: d, consumer, configured: [], ...init() });
    return e;
  };
  for (const c of configured) {
    if (domain !== undefined && c.domain !== domain) continue;
    try {
      const t = parseTarget(c.to);
      entry(c.domain, syncConsumerName(c.disk, await targetKey(t)), () => ({ disk: c.disk, target: describeTarget(t) })).configured.push(c.as);
    } catch (err) {
      entry(c.domain, `?${c.disk}\0${c.to}`, () => ({ disk: c.disk, target: c.to, problem: errorMessage(err) })).configured.push(c.as);
    }
  }
  for (const r of await records.list(domain)) entry(r.domain, r.consumer, () => ({ disk: '?', target: '?' }));

  for (const e of byConsumer.values()) {
    if (e.problem) continue;
    const { record, problem } = await records.read(e.domain, e.consumer).catch((err: unknown) => ({ record: undefined, problem: errorMessage(err) }));
    if (problem) e.recordProblem = problem;
    if (record) {
      Object.assign(e, { disk: record.disk, target: record.target, lastSync: record.syncedAt });
      if (record.interruptedAt) e.interruptedAt = record.interruptedAt;
    }
    const marker = await records.readWriting(e.domain, e.consumer);
    if (marker && marker !== 'junk') e.writing = { startedAt: marker.startedAt, live: marker.writer === WRITER };
    const seed = await records.readSeed(e.domain, e.consumer);
    if (seed) e.seedResumesAt = seed.doneBelow;
    if (record?.identity.kind === 'file' && !e.writing?.live) {
      const now = await fileIdentity(record.target).catch(() => undefined);
      const why = identityChange(record.identity, now);
      if (why) e.targetChanged = why;
    }
    try {
      const d = log.changes(e.domain, e.consumer).find((x) => x.target === e.disk);
      if (d) e.modifiedSince = { bytes: d.full ? d.sizeBytes : totalBytes(d.extents), full: d.full };
    } catch { /* no such domain or consumer in the change log (never synced, or tracking disabled) */ }
  }
  return [...byConsumer.values()].sort((a, b) => a.domain.localeCompare(b.domain) || a.disk.localeCompare(b.disk) || a.target.localeCompare(b.target));
}
