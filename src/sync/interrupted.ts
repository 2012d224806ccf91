// Syncs whose virtcbtd was killed while they wrote (SIGKILL, the OOM killer, a crash): nothing in
// the sync itself ran to record how far it got, so without this the next sync would find the
// target's modification time changed and seed every used block again. Each sync keeps a writing
// marker (WritingMarker) from its first write to its end; a marker of another process is its dead
// writer's, and is turned here into what a clean failure records:
// - an incremental sync: the record keeps the last good sync's generation with the target's
//   identity now (every block the dead sync wrote is one the next sync copies again, because the
//   consumer did not move);
// - a seed: its flushed progress (SeedProgress), so that the next sync resumes it; the change log
//   already keeps the seed's history (the pin is set when a seed begins).
// A target replaced or gone since is left to the next sync's own checks (a seed). What is not
// detectable: a write to the target file by something else between the kill and this recovery
// (the daemon's restart); with the daemon under systemd that is seconds.
import { randomBytes } from 'node:crypto';
import type { ChangeLog } from '../changelog/index.js';
import type { CopyProgress, Endpoint } from '../copy/index.js';
import { fromPairs } from '../extent/index.js';
import { errorMessage } from '../util/errors.js';
import type { SyncRecords, WritingMarker } from './record.js';
import { fileIdentity, identityChange, seedPinName, seedPinOwner, type TargetIdentity } from './target.js';

/** This process's token in its writing markers. */
export const WRITER = randomBytes(8).toString('hex');

function dropPin(log: ChangeLog, domain: string, consumer: string): void {
  try {
    if (log.listConsumers(domain).some((c) => c.name === seedPinName(consumer))) log.removeConsumer(domain, seedPinName(consumer));
  } catch { /* a domain the change log no longer has: nothing to keep */ }
}

/**
 * Records what the dead writer of `consumer`'s marker left, and removes the marker. Returns what
 * was done, for a note or the log; undefined when there was no marker of a dead writer.
 */
export async function recoverWriting(records: SyncRecords, log: ChangeLog, domain: string, consumer: string): Promise<string | undefined> {
  const m = await records.readWriting(domain, consumer);
  if (m === undefined || (m !== 'junk' && m.writer === WRITER)) return undefined;
  try {
    if (m === 'junk') {
      // Unknown progress: the seed pin, if any, holds nothing a seed file does not also name.
      if (!(await records.readSeed(domain, consumer))) dropPin(log, domain, consumer);
      return `a sync marker that is not one virtcbt wrote was removed (${consumer}.writing): the target is synced as its record says`;
    }
    return await recover(records, log, m);
  } finally {
    await records.removeWriting(domain, consumer);
  }
}

async function recover(records: SyncRecords, log: ChangeLog, m: WritingMarker): Promise<string> {
  const { domain, consumer } = m;
  const what = `the sync to ${m.path ?? (m.identity.kind === 'nbd' ? m.identity.uri : consumer)} begun ${m.startedAt} ended with its virtcbtd`;
  const seedLeft = () => {
    if (m.kind === 'seed') dropPin(log, domain, consumer);
  };
  let now: TargetIdentity | undefined = m.identity;
  if (m.path !== undefined) {
    now = await fileIdentity(m.path).catch(() => undefined);
    if (!now || now.kind !== 'file' || m.identity.kind !== 'file' || now.dev !== m.identity.dev || now.ino !== m.identity.ino) {
      seedLeft();
      return `${what}; the target file is gone or replaced since: the next sync seeds it`;
    }
  }
  const { record } = await records.read(domain, consumer);
  // The sync got as far as recording the target: it ended, only its clean-up did not.
  if (record && record.syncedAt >= m.startedAt && identityChange(record.identity, now) === undefined) {
    seedLeft();
    await records.removeSeed(domain, consumer);
    return `${what} after it recorded the target: nothing to continue`;
  }
  if (m.kind === 'incremental') {
    if (!record || !m.recordIdentity || identityChange(m.recordIdentity, record.identity) !== undefined) {
      return `${what}; its record changed since: the next sync goes by the record`;
    }
    await records.write({ ...record, identity: now!, interruptedAt: m.startedAt }, record.used ? fromPairs(record.used) : undefined);
    return `${what}: the next sync copies everything since the last complete one (${record.syncedAt}), not a full seed`;
  }
  const pinned = log.listConsumers(domain).find((c) => c.name === seedPinName(consumer))?.last;
  if (m.doneBelow === 0 || pinned !== m.generation) {
    seedLeft();
    return `${what} before its first checkpoint: the next sync seeds the target`;
  }
  await records.writeSeed({
    format: 'virtcbt-sync-seed/1', domain, consumer, key: m.key, identity: now!, logId: m.logId,
    generation: m.generation, doneBelow: m.doneBelow, interruptedAt: m.startedAt,
  });
  return `${what}: the next sync resumes its seed from byte ${m.doneBelow}`;
}

/**
 * A seed's checkpoints: after about `everyBytes` more were copied, the target is flushed and the
 * marker records where the seed got to before that flush (the copy engine's doneBelow: every piece
 * below it was acknowledged). One at a time, beside the copy; a failed one ends them (the copy's
 * own writes fail the same way soon enough).
 */
export class SeedCheckpoints {
  private last = 0;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(private readonly target: Pick<Endpoint, 'flush'>, private readonly records: SyncRecords, private readonly marker: WritingMarker, private readonly everyBytes: number) {}

  progress(p: Readonly<CopyProgress>): void {
    if (this.stopped || this.running || p.done - this.last < this.everyBytes || p.doneBelow <= this.marker.doneBelow) return;
    this.last = p.done;
    const doneBelow = p.doneBelow;
    this.running = (async () => {
      await this.target.flush();
      await this.records.writeWriting({ ...this.marker, doneBelow });
      this.marker.doneBelow = doneBelow;
    })().catch(() => { this.stopped = true; }).finally(() => { this.running = undefined; });
  }

  /** No more checkpoints; resolves once the one under way is written. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }
}

/**
 * At daemon start: every marker a killed virtcbtd left is recovered, and seed pins that no seed
 * progress or marker uses any more are removed (they would keep change-log history for nothing).
 */
export async function sweepInterruptedSyncs(records: SyncRecords, log: ChangeLog, report: (msg: string, fields: Record<string, unknown>) => void): Promise<void> {
  for (const { domain, consumer } of await records.listWriting()) {
    try {
      const done = await recoverWriting(records, log, domain, consumer);
      if (done) report(done, { domain, consumer });
    } catch (err) {
      report(`an interrupted sync could not be recorded (the next sync checks its target): ${errorMessage(err)}`, { domain, consumer });
    }
  }
  for (const d of log.listDomains()) {
    for (const c of log.listConsumers(d.name)) {
      const consumer = seedPinOwner(c.name);
      if (consumer === undefined) continue;
      if (await records.readSeed(d.name, consumer) || await records.readWriting(d.name, consumer)) continue;
      dropPin(log, d.name, consumer);
      report('removed a seed pin no interrupted seed uses', { domain: d.name, consumer: c.name });
    }
  }
}
