// The sync job (patent US8694746): bring a second copy of one disk up to date with only the blocks
// modified since its last sync *and* in use now. A snapshot of the domain (src/snapshot) is taken
// in the domain's queue, with the target's own consumer's pass begun in its transaction; the used
// map is read from that same snapshot (src/usedmap), so map and data describe one instant; the
// copy runs beside folds and other jobs; the target is flushed, its identity recorded, and only
// then the pass committed. A failure or a cancel leaves the consumer where it was: the next sync
// covers everything since the last good one.
import { lstat, stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { logContinuity, type ChangeLog } from '../changelog/index.js';
import { NbdEndpoint, ProgressMeter, copyExtents, dataExtents, openImageEndpoint, withWrite, type CopyProgress, type Endpoint } from '../copy/index.js';
import { fromPairs, merge, totalBytes, type Extent } from '../extent/index.js';
import type { GuestAgent } from '../guest/index.js';
import type { DomainXmlInfo } from '../libvirt/index.js';
import type { QmpExecutor } from '../qmp/index.js';
import type { Reconciler, TrackedDisk } from '../reconciler/index.js';
import { Snapshot, presetMarker, type FreezeMarker, type SnapshotHost } from '../snapshot/index.js';
import { AgentMapFreezer, usedMapFromCapture, usedMapFromImage, type UsedMap } from '../usedmap/index.js';
import { UsageError, VirtcbtError, errorMessage } from '../util/errors.js';
import { readQcow2Header } from '../qcow2/index.js';
import { planSync, type SyncPlan } from './plan.js';
import { SeedCheckpoints, WRITER, recoverWriting } from './interrupted.js';
import type { SeedProgress, SyncRecord, SyncRecords, WritingMarker } from './record.js';
import { describeTarget, displayUri, fileIdentity, identityChange, parseTarget, seedPinName, syncConsumerName, targetKey, type TargetIdentity } from './target.js';

/** Backing chains deeper than this are not followed (QEMU's own limit is far lower in practice). */
const MAX_CHAIN = 64;

export interface OtherDomain {
  domain: string;
  disks: { target: string; source?: string }[];
}

export interface SyncContext {
  domain: string;
  running: boolean;
  qmp: QmpExecutor;
  nbdSocket: string;
  disks: TrackedDisk[];
  reconciler: Reconciler;
  info: DomainXmlInfo;
  log: ChangeLog;
}

export interface SyncRequest {
  disk: string;
  /** An image file (qcow2 or raw; made when missing) or an nbd:// / nbds:// URI. */
  to: string;
  format?: 'qcow2' | 'raw';
  /** Also free on the target what is free in the guest now. */
  discard?: boolean;
  /** Seed the target with every used block, whatever its history. */
  full?: boolean;
  noFreeze?: boolean;
  /**
   * Where the used map comes from: 'image' (default) reads the snapshot's filesystems (ext2/3/4);
   * 'agent' has the guest read GETFSMAP while it is frozen (XFS too; a longer freeze).
   */
  map?: 'image' | 'agent';
}

export type SyncEvent =
  | { type: 'start'; domain: string; disk: string; target: string; consumer: string; running: boolean; sizeBytes: number }
  | { type: 'snapshot'; time: string; consistency: 'filesystem' | 'crash'; note?: string; freezeWindowMs: number | null; pass: number }
  | { type: 'plan'; seed: boolean; reason?: string; modifiedBytes: number; modifiedUsedBytes: number; skippedFreeBytes: number; copyBytes: number; discardBytes: number; usedMap: Omit<UsedMap, 'used'> }
  | { type: 'progress'; done: number; total: number; written: number; bytesPerSec: number; etaSec: number | null }
  | ({ type: 'result' } & SyncResult);

export interface SyncResult {
  domain: string;
  disk: string;
  target: string;
  consumer: string;
  seed: boolean;
  reason?: string;
  time: string;
  consistency: 'filesystem' | 'crash';
  freezeWindowMs: number | null;
  /** Bytes modified since the target's last sync (the change log's extents). */
  modifiedBytes: number;
  /** Of those, in use now: what an incremental sync ships. */
  modifiedUsedBytes: number;
  /** Modified but free now: not shipped. */
  skippedFreeBytes: number;
  /** Bytes read and written to the target (a seed: every used byte). */
  copiedBytes: number;
  writtenBytes: number;
  discardedBytes: number;
  usedBytes: number;
  usedMap: Omit<UsedMap, 'used'>;
  elapsedMs: number;
  notes: string[];
}

export interface SyncDeps {
  snapshots: SnapshotHost;
  job?: string;
  /** The copy may run outside the domain's queue from here (see BackupDeps.snapshotTaken). */
  snapshotTaken?: () => void;
  inQueue?: <T>(fn: () => Promise<T>) => Promise<T>;
  signal?: AbortSignal;
  runDir: string;
  records: SyncRecords;
  /** The agent to freeze through; null: none. */
  agent: GuestAgent | null;
  freezeTimeoutMs: number;
  agentTimeoutMs: number;
  freezeMarker?: FreezeMarker;
  nbd: { requestSize: number; inflight: number; connections: number; timeoutMs: number };
  /** The domain's live XML (the agent map names filesystems' disks by it). */
  domainXml?: () => Promise<string>;
  /** Certificates for nbds:// targets (ca-cert.pem, client-cert.pem, client-key.pem). */
  tlsCertificates?: string;
  /** The other libvirt domains and their disks: a target that is one of theirs is refused. */
  otherDomains?: () => Promise<OtherDomain[]>;
  /**
   * A seed flushes its target and records how far it got after about this many bytes (0: never):
   * a seed whose virtcbtd is killed resumes from its last such checkpoint instead of starting over.
   */
  seedCheckpointBytes?: number;
  /** Test-only fault injection: called before the copy ('copy') and after each write to the target with the bytes written so far ('copying'). */
  fault?: (step: 'copy' | 'copying', written?: number) => void | Promise<void>;
}

export async function runSync(ctx: SyncContext, req: SyncRequest, deps: SyncDeps, emit: (ev: SyncEvent) => void): Promise<SyncResult> {
  const t0 = performance.now();
  const { domain } = ctx;
  const disk = ctx.disks.find((d) => d.target === req.disk);
  if (!disk) {
    throw new UsageError(`domain ${domain} has no tracked disk ${req.disk}`, { domain, hint: `Tracked disks: ${ctx.disks.map((d) => d.target).join(', ') || 'none'}` });
  }
  const target = parseTarget(req.to, { format: req.format });
  const shown = describeTarget(target);
  const where = { domain, disk: disk.target };
  const source = ctx.info.disks.find((d) => d.target === disk.target)?.source;
  const byAgent = req.map === 'agent';
  // Bad input is refused before anything is made or moved: no consumer, no snapshot, no target file.
  if (byAgent && (!ctx.running || deps.agent === null || req.noFreeze)) {
    throw new UsageError(`the guest agent's used map needs the running domain's guest agent and its freeze (${
      !ctx.running ? 'the domain is not running' : req.noFreeze ? 'not with --no-freeze' : 'the domain has no guest agent channel'})`, {
      ...where, hint: 'Use the image map (the default), which reads ext2/3/4 from the snapshot itself',
    });
  }
  if (target.kind === 'file') {
    await refuseSourceAsTarget(target.path, ctx.info, where);
    await refuseSmallImage(target.path, disk, where);
  }
  const key = await targetKey(target);
  const consumer = syncConsumerName(disk.target, key);
  // A sync to this target whose virtcbtd was killed while it wrote: recorded as a clean failure
  // would have been, before the record is read (normally done at daemon start already).
  const recovered = await recoverWriting(deps.records, ctx.log, domain, consumer).catch((err: unknown) => `an interrupted sync to this target could not be recorded: ${errorMessage(err)}`);
  if (target.kind === 'file' && deps.otherDomains) {
    // Another domain's disk is refused unless it is this disk's copy as virtcbt left it.
    const now = await fileIdentity(target.path).catch(() => undefined);
    const mine = now && identityChange((await deps.records.read(domain, consumer).catch(() => undefined))?.record?.identity, now) === undefined;
    if (now && !mine) await refuseOtherDomainsDisk(target.path, await deps.otherDomains(), where);
  }

  const notes: string[] = recovered ? [recovered] : [];
  let snap: Snapshot | undefined;
  let leftQueue = false;
  const inQueue = <T>(fn: () => Promise<T>): Promise<T> => (leftQueue && deps.inQueue ? deps.inQueue(fn) : fn());
  let passId: number | undefined;
  let committed = false;
  let src: NbdEndpoint | undefined;
  // What an interrupted incremental sync needs to keep its target incremental (see keepRecordAfterFailure).
  let resumable: { record: SyncRecord; opened: { close(): Promise<void> } } | undefined;
  // A seed's progress, for one interrupted after it began writing (see keepSeedProgress).
  let seeding: SeedState | undefined;
  // The marker of this sync's writes (see WritingMarker), once it began.
  let marker: WritingMarker | undefined;
  let opening: Promise<{ endpoint: Endpoint; close(): Promise<void> }> | undefined;
  let targetClosed = false;
  let targetRefused = false;
  let madeConsumer = false;
  let releasing: Promise<void> | undefined;
  const release = (s: Snapshot) => (releasing ??= inQueue(async () => {
    await s.release().catch((err: unknown) => { notes.push(errorMessage(err)); });
    await ctx.reconciler.removeFolded(ctx.disks).catch((err: unknown) => { notes.push(`removing the folded bitmaps failed (the next fold retries): ${errorMessage(err)}`); });
  }));
  const agent = deps.agent === null || !ctx.running || req.noFreeze ? undefined
    : byAgent ? new AgentMapFreezer(deps.agent, { domainXml: await deps.domainXml?.() }) : deps.agent;
  const freezeMarker = agent && deps.freezeMarker ? presetMarker(deps.freezeMarker) : undefined;
  try {
    const pinged = agent ? agent.ping({ timeoutMs: Math.min(5_000, deps.agentTimeoutMs) }).then(() => true, (err: unknown) => {
      if (byAgent) {
        throw new UsageError(`the guest agent's used map needs the guest agent, which did not answer (${errorMessage(err)})`, {
          ...where, cause: err, hint: 'Start qemu-guest-agent in the guest, or use the image map (the default)',
        });
      }
      notes.push(`the guest agent did not answer (${errorMessage(err)}): crash-consistent`);
      return false;
    }) : Promise.resolve(false);
    if (byAgent) await pinged;

    // The target's identity before anything is written. The target is then opened for writing (a
    // qemu-nbd started, ~30 ms) beside the snapshot rather than before it: an image another process
    // holds is refused by QEMU's lock meanwhile, and the sync then fails as bad input that changed
    // nothing (the pass aborted, a consumer this sync made removed, the target as it was).
    const before: TargetIdentity | undefined = target.kind === 'file'
      ? await fileIdentity(target.path).catch((err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') return undefined; throw err; })
      : undefined;
    opening = openTarget(target, disk, deps, req, where).then(async (o) => {
      if (o.endpoint.size < disk.sizeBytes) {
        await o.close().catch(() => undefined);
        throw new UsageError(`sync target ${shown} holds ${o.endpoint.size} bytes (its size as served), less than disk ${disk.target}'s ${disk.sizeBytes} bytes`, {
          ...where, hint: `Give a target of at least ${disk.sizeBytes} bytes (or a missing file path: virtcbt creates it)`,
        });
      }
      return o;
    });
    opening.catch(() => undefined);
    if (!ctx.log.listConsumers(domain).some((c) => c.name === consumer)) {
      ctx.log.addConsumer(domain, consumer);
      madeConsumer = true;
    }
    emit({ type: 'start', domain, disk: disk.target, target: shown, consumer, running: ctx.running, sizeBytes: disk.sizeBytes });

    snap = Snapshot.open(ctx, deps.snapshots, { job: deps.job ?? `sync ${domain} ${disk.target}`, targets: [disk.target] });
    const agentOk = await pinged;
    deps.signal?.throwIfAborted();
    const taken = await snap.take({
      consumer, agent: agentOk ? agent : undefined, freezeTimeoutMs: deps.freezeTimeoutMs, marker: freezeMarker?.marker, signal: deps.signal,
      // As a backup's: the freeze call overlaps the rest of the preparation unless the rotation has a
      // recovery to do first; the folded bitmaps are removed with the snapshot (their removal makes
      // QEMU flush the VM's image); the fold reads the frozen bitmaps through the snapshot's export.
      early: ctx.disks.every((d) => ctx.reconciler.settled(d)),
      keepFolded: true,
      foldThroughExports: true,
      noAgentReason: !ctx.running ? 'the domain is stopped: its disks are consistent as they are'
        : req.noFreeze ? 'not frozen (--no-freeze): crash-consistent' : 'no usable guest agent: crash-consistent',
    });
    passId = taken.passId!;
    if (taken.note) notes.push(taken.note);
    emit({ type: 'snapshot', time: taken.time, consistency: taken.consistency, note: taken.note, freezeWindowMs: taken.freezeWindowMs, pass: passId });
    const [exp] = await snap.exportUnix([disk.target]);
    if (deps.snapshotTaken && ctx.running) {
      deps.snapshotTaken();
      leftQueue = true;
    }
    deps.signal?.throwIfAborted();
    src = await NbdEndpoint.open(exp!.uri, { timeoutMs: deps.nbd.timeoutMs, connections: deps.nbd.connections, signal: deps.signal });
    const opened = await opening.catch((err: unknown) => {
      targetRefused = true;
      throw err;
    });

    const { record, problem } = await deps.records.read(domain, consumer);
    // The last sync to this target by any disk: a target that holds another disk's copy is never synced onto incrementally.
    const latest = await deps.records.lastOnTarget(key);
    const otherDisk = latest && (latest.domain !== domain || latest.consumer !== consumer) && (!record || latest.syncedAt > record.syncedAt)
      ? `the target holds a copy of disk ${latest.disk} of domain ${latest.domain} (synced ${latest.syncedAt}), not of this disk` : undefined;
    const now: TargetIdentity | undefined = target.kind === 'file' ? before : { kind: 'nbd', uri: displayUri(target.uri), size: opened.endpoint.size };
    const pass = ctx.log.getPass(passId);
    const changes = ctx.log.passChanges(passId).find((c) => c.target === disk.target);
    if (!changes) throw new VirtcbtError('the change log has no changes for the disk', where);
    const seed = req.full ? '--full was asked for'
      : (problem ? `${problem}: the record is not trusted` : undefined)
        ?? otherDisk
        ?? identityChange(record?.identity, now)
        ?? (logContinuity(record?.logId, pass.logId) !== 'same' ? 'the target was synced under another change log of the domain (tracking was disabled and re-enabled since)' : undefined)
        ?? (changes.full ? changes.reason ?? 'the change log has no history for this target' : undefined)
        ?? (pass.since === null || record!.generation < pass.since ? 'the target is older than the change log\'s record of its last sync' : undefined);
    // A seed of this very target interrupted before (and the target as it left it): resumed, not
    // started over, when the change log still knows what changed since that seed's instant.
    let resume: { progress: SeedProgress; since: Extent[] } | undefined;
    if (seed !== undefined && !req.full) {
      const progress = await deps.records.readSeed(domain, consumer);
      const pinned = ctx.log.listConsumers(domain).find((c) => c.name === seedPinName(consumer))?.last;
      if (progress && progress.key === key && progress.logId === pass.logId && progress.doneBelow <= disk.sizeBytes && pinned === progress.generation
        && identityChange(progress.identity, now) === undefined) {
        const since = ctx.log.passChangesSincePin(passId, seedPinName(consumer)).find((c) => c.target === disk.target);
        if (since && !since.full) resume = { progress, since: since.extents };
      }
    }

    let usedMap: UsedMap;
    if (agent instanceof AgentMapFreezer) {
      if (!agent.last) throw new VirtcbtError('the guest agent froze nothing: no used map of the snapshot\'s instant', { domain, disk: disk.target, hint: 'Check the guest agent, or use the image map' });
      if (agent.last.note) notes.push(agent.last.note);
      usedMap = usedMapFromCapture(agent.last, disk, agent.last.hostMs);
    } else {
      usedMap = await usedMapFromImage(src, { label: `domain ${domain}, disk ${disk.target}` });
    }
    deps.signal?.throwIfAborted();
    const modified: Extent[] = changes.extents.map((e) => (Array.isArray(e) ? { offset: e[0], length: e[1] } : e as unknown as Extent));
    const plan: SyncPlan = resume ? {
      // Every used block above where the seed got to, and below it those changed since its instant.
      ...planSync({
        sizeBytes: disk.sizeBytes, used: usedMap, discard: req.discard ?? false,
        modified: merge([...resume.since, { offset: resume.progress.doneBelow, length: disk.sizeBytes - resume.progress.doneBelow }]),
      }),
      seed: true,
      reason: `${seed}; the seed interrupted at ${resume.progress.interruptedAt} is resumed: every used block from byte ${resume.progress.doneBelow} on, and below it those changed since`,
    } : planSync({
      sizeBytes: disk.sizeBytes, modified, used: usedMap, seed, discard: req.discard ?? false,
      previousUsed: record?.used ? fromPairs(record.used) : undefined,
    });
    const { used, ...mapSummary } = usedMap;
    if (resume) notes.push(plan.reason!);
    else if (plan.seed) notes.push(`${plan.reason}: the target is seeded with every used block`);
    else if (record?.interruptedAt) notes.push(`the last sync to this target (${record.interruptedAt}) was interrupted after it began writing: this one copies everything since the last complete sync (${record.syncedAt})`);
    emit({
      type: 'plan', seed: plan.seed, reason: plan.reason, modifiedBytes: plan.modifiedBytes, modifiedUsedBytes: plan.modifiedUsedBytes,
      skippedFreeBytes: plan.skippedFreeBytes, copyBytes: totalBytes(plan.copy), discardBytes: totalBytes(plan.discard), usedMap: mapSummary,
    });

    await deps.fault?.('copy');
    if (!plan.seed && target.kind === 'file' && record) resumable = { record, opened };
    if (plan.seed) {
      seeding = {
        opened, key, logId: pass.logId, identity: now,
        generation: resume?.progress.generation ?? pass.generation, doneBelow: resume?.progress.doneBelow ?? 0,
      };
      // The change log keeps what changes after the seed's instant from now on: a seed cut off
      // at any point (a kill included) can be resumed, with what changed since copied again.
      if (!resume) {
        await deps.records.removeSeed(domain, consumer);
        ctx.log.pinHistory(domain, seedPinName(consumer), seeding.generation);
      }
    }
    const writes = plan.copy.length > 0 || plan.discard.length > 0;
    if (writes && (plan.seed || resumable)) {
      // Before the first write: what a killed virtcbtd leaves is recorded by the next (interrupted.ts).
      marker = {
        format: 'virtcbt-sync-writing/1', domain, consumer, key, writer: WRITER,
        path: target.kind === 'file' ? target.path : undefined,
        identity: target.kind === 'file' ? await fileIdentity(target.path) : now!,
        kind: plan.seed ? 'seed' : 'incremental', recordIdentity: plan.seed ? undefined : record?.identity,
        logId: pass.logId, generation: seeding?.generation ?? pass.generation, doneBelow: seeding?.doneBelow ?? 0,
        startedAt: new Date().toISOString(),
      };
      await deps.records.writeWriting(marker);
    }
    const total = totalBytes(plan.copy);
    const meter = new ProgressMeter(total);
    const dst = deps.fault ? faultAfterWrites(opened.endpoint, (written) => deps.fault!('copying', written)) : opened.endpoint;
    const checkpoints = seeding && marker && deps.seedCheckpointBytes
      ? new SeedCheckpoints(opened.endpoint, deps.records, marker, deps.seedCheckpointBytes) : undefined;
    const progress = await copyExtents(src, dst, dataExtents(plan.copy), {
      requestSize: deps.nbd.requestSize, inflight: deps.nbd.inflight, signal: deps.signal,
      onProgress: (p: Readonly<CopyProgress>) => {
        if (seeding) seeding.doneBelow = Math.max(seeding.doneBelow, p.doneBelow);
        checkpoints?.progress(p);
        const ev = meter.update(p.done, p.written);
        if (ev) emit({ type: 'progress', ...ev });
      },
    }).finally(() => checkpoints?.stop());
    emit({ type: 'progress', ...meter.final(progress.done, progress.written) });
    for (const d of plan.discard) {
      deps.signal?.throwIfAborted();
      await opened.endpoint.discard(d.offset, d.length);
    }
    // The snapshot is read: it goes (in the domain's queue) while the target is flushed and closed.
    await src.close();
    src = undefined;
    const released = release(snap);
    await opened.endpoint.flush();
    targetClosed = true;
    await opened.close();

    // The target is durable: record what it is now, then move the consumer (a kill in between
    // copies the same changes again next time, never fewer).
    const after: TargetIdentity = target.kind === 'file' ? await fileIdentity(target.path) : now!;
    await deps.records.write({
      format: 'virtcbt-sync/1', domain, disk: disk.target, consumer, target: shown, key, identity: after,
      logId: pass.logId, generation: pass.generation, syncedAt: new Date().toISOString(),
    }, used);
    await deps.records.removeWriting(domain, consumer);
    await deps.records.removeSeed(domain, consumer);
    if (ctx.log.listConsumers(domain).some((c) => c.name === seedPinName(consumer))) ctx.log.removeConsumer(domain, seedPinName(consumer));
    ctx.log.commitPass(passId);
    committed = true;
    await released;
    if (source === undefined) notes.push('the disk has no image file in the domain definition');
    return {
      domain, disk: disk.target, target: shown, consumer, seed: plan.seed, reason: plan.reason, time: taken.time,
      consistency: taken.consistency, freezeWindowMs: taken.freezeWindowMs,
      modifiedBytes: plan.modifiedBytes, modifiedUsedBytes: plan.modifiedUsedBytes, skippedFreeBytes: plan.skippedFreeBytes,
      copiedBytes: progress.done, writtenBytes: progress.written, discardedBytes: totalBytes(plan.discard), usedBytes: plan.usedBytes,
      usedMap: mapSummary, elapsedMs: Math.round(performance.now() - t0), notes,
    };
  } catch (err) {
    // Before the pass is dropped, so that no fold prunes the history the next sync resumes from.
    if (seeding && !committed && !targetClosed) {
      targetClosed = true;
      await keepSeedProgress(target.kind === 'file' ? target.path : undefined, { domain, consumer, log: ctx.log, ...seeding }, deps.records, notes);
    }
    if (seeding && !committed && !(await deps.records.readSeed(domain, consumer))) {
      // No progress kept (nothing written, or a target that did not close): nothing to resume, nothing to pin.
      try {
        ctx.log.removeConsumer(domain, seedPinName(consumer));
      } catch { /* no pin */ }
    }
    if (passId !== undefined && !committed) {
      try {
        if (ctx.log.getPass(passId).state === 'open') ctx.log.abortPass(passId);
      } catch { /* reported by the log's next call */ }
    }
    if (resumable && !committed && target.kind === 'file') {
      targetClosed = true;
      await keepRecordAfterFailure(target.path, resumable, deps.records, notes);
    }
    // This process recorded what it could: its marker is not for the next virtcbtd.
    if (marker && !committed) await deps.records.removeWriting(domain, consumer).catch(() => undefined);
    // A target that could not be opened is bad input: the consumer this sync made goes too.
    if (targetRefused && madeConsumer && !committed) {
      try {
        ctx.log.removeConsumer(domain, consumer);
      } catch { /* reported by the log's next call */ }
    }
    if (err instanceof VirtcbtError) throw err;
    throw new VirtcbtError(`sync of disk ${disk.target} to ${shown} failed: ${errorMessage(err)}`, {
      ...where, cause: err, hint: 'The target\'s consumer did not move: the next sync copies everything since its last good one',
    });
  } finally {
    await src?.close().catch(() => undefined);
    if (!targetClosed) await opening?.then((o) => o.close(), () => undefined).catch(() => undefined);
    if (snap) await release(snap);
    await freezeMarker?.dropIfUnused().catch(() => undefined);
    await agent?.close().catch(() => undefined);
  }
}

/**
 * An incremental sync that failed after it began writing (cancelled, a domain start taking the
 * images back, a read error) leaves its target as the last good copy plus some of the blocks
 * modified since, nothing else: every block it wrote is one the next sync copies again, because
 * the consumer did not move. So the target is still this consumer's copy, only its modification
 * time is not the recorded one, and the next sync would seed it in full ("written since the last
 * sync"). Once the target is closed cleanly, its new identity goes into the record, which keeps
 * the last good sync's generation and used map. A target that does not close cleanly keeps the
 * old record (a full seed next time, as for any target changed behind virtcbt's back).
 */
async function keepRecordAfterFailure(path: string, r: { record: SyncRecord; opened: { close(): Promise<void> } }, records: SyncRecords, notes: string[]): Promise<void> {
  try {
    await r.opened.close();
    const identity = await fileIdentity(path);
    await records.write({ ...r.record, identity, interruptedAt: new Date().toISOString() }, r.record.used ? fromPairs(r.record.used) : undefined);
  } catch (err) {
    notes.push(`the interrupted target was not recorded (the next sync seeds it): ${errorMessage(err)}`);
  }
}

interface SeedState {
  opened: { close(): Promise<void> };
  key: string;
  logId: string;
  /** The target's identity before this sync (an NBD target's stays the same). */
  identity: TargetIdentity | undefined;
  /** The generation the seeded blocks are of: this sync's, or the resumed seed's. */
  generation: number;
  /** Every block to seed below this offset is on the target (at `generation` or later). */
  doneBelow: number;
}

/**
 * A seed that failed after it began writing leaves the target as a copy of the used blocks below
 * some offset, of the seed's instant or later. Once the target is closed cleanly, that offset and
 * instant are kept beside the record (SeedProgress), and the change log is asked to keep what
 * changes after that instant (a pin, listed as consumer CONSUMER.seed): the next sync resumes there, copying below it
 * only what changed since, instead of seeding every used block again (a large disk whose on-stop
 * seed is cut short by each start would otherwise never be seeded). Nothing is kept when the target
 * does not close cleanly, or nothing was done.
 */
async function keepSeedProgress(path: string | undefined, s: SeedState & { domain: string; consumer: string; log: ChangeLog }, records: SyncRecords, notes: string[]): Promise<void> {
  try {
    await s.opened.close();
    const identity = path !== undefined ? await fileIdentity(path) : s.identity;
    if (!identity || s.doneBelow === 0) return;
    // The change log keeps what changed after the seed's instant only while something asks for it.
    s.log.pinHistory(s.domain, seedPinName(s.consumer), s.generation);
    await records.writeSeed({
      format: 'virtcbt-sync-seed/1', domain: s.domain, consumer: s.consumer, key: s.key, identity, logId: s.logId,
      generation: s.generation, doneBelow: s.doneBelow, interruptedAt: new Date().toISOString(),
    });
  } catch (err) {
    notes.push(`the interrupted seed's progress was not kept (the next sync seeds it anew): ${errorMessage(err)}`);
  }
}

/** Test-only: the fault hook after each write that reached the target (a sync interrupted mid-copy). */
function faultAfterWrites(inner: Endpoint, fault: (written: number) => void | Promise<void>): Endpoint {
  let written = 0;
  return withWrite(inner, async (buf, offset) => {
    await inner.write(buf, offset);
    written += buf.length;
    await fault(written);
  });
}

/**
 * What `path` is to the disk whose image is `source`: the image itself, or a file it reads — a
 * backing file (an external snapshot's base, a template) or a qcow2 external data file. The chain
 * is followed from the qcow2 headers themselves (libvirt's XML of a stopped domain does not list
 * it), at most MAX_CHAIN deep; names that are not files are skipped.
 */
async function chainRole(target: Stats, source: string): Promise<string | undefined> {
  const same = async (p: string) => {
    const s = await stat(p).catch(() => undefined);
    return s !== undefined && s.dev === target.dev && s.ino === target.ino;
  };
  if (await same(source)) return 'image';
  let image = source;
  for (let depth = 0; depth < MAX_CHAIN; depth++) {
    const header = await readQcow2Header(image).catch(() => undefined);
    if (!header) return undefined;
    const fileName = (name: string | null | undefined) =>
      (name && !/^[a-z0-9+.-]+:/i.test(name) ? (isAbsolute(name) ? name : join(dirname(image), name)) : undefined);
    const dataFile = fileName(header.dataFileName);
    if (dataFile && await same(dataFile)) return `external data file of ${image}`;
    const backing = fileName(header.backing);
    if (!backing) return undefined;
    if (await same(backing)) return `backing file of ${image}`;
    image = backing;
  }
  return undefined;
}

/** The target must not be one of the domain's own images nor a file in their chains: a sync onto it would destroy the disk. */
async function refuseSourceAsTarget(path: string, info: DomainXmlInfo, where: { domain: string; disk: string }): Promise<void> {
  const t = await stat(path).catch(() => undefined);
  if (!t) return;
  for (const d of info.disks) {
    if (!d.source) continue;
    const role = await chainRole(t, d.source);
    if (role === 'image') {
      throw new UsageError(`sync target ${path} is the image of disk ${d.target} of the domain itself`, { ...where, hint: 'Name another file (a copy on other storage)' });
    }
    if (role) {
      throw new UsageError(`sync target ${path} is the ${role}, in disk ${d.target}'s chain: a sync onto it would change what disk ${d.target} reads`, {
        ...where, hint: 'Name another file (a copy on other storage)',
      });
    }
  }
}

/**
 * An existing file that another libvirt domain uses as a disk (or in a disk's chain) is that
 * domain's data: it is not overwritten unless it is this disk's copy as virtcbt left it (a standby
 * domain defined on the replica). Asked only when the target is not that copy.
 */
async function refuseOtherDomainsDisk(path: string, others: OtherDomain[], where: { domain: string; disk: string }): Promise<void> {
  const t = await stat(path).catch(() => undefined);
  if (!t) return;
  for (const o of others) {
    for (const d of o.disks) {
      if (!d.source) continue;
      const role = await chainRole(t, d.source);
      if (!role) continue;
      throw new UsageError(`sync target ${path} is ${role === 'image' ? 'the image' : `the ${role}, in the chain`} of disk ${d.target} of domain ${o.domain}: a sync would overwrite that domain's disk`, {
        ...where,
        hint: `Name another file. If it is meant to become this disk's copy, detach it from ${o.domain} first (virsh detach-disk ${o.domain} ${d.target} --config) or remove the file; virtcbt then seeds it`,
      });
    }
  }
}

/**
 * An existing image smaller than the disk is refused before it is opened for writing (qemu-nbd
 * opening a qcow2 read-write may touch its header): raw by its length, qcow2 by its virtual size.
 */
async function refuseSmallImage(path: string, disk: TrackedDisk, where: { domain: string; disk: string }): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (!st?.isFile()) return; // missing: created; anything else: refused by name when opened
  const header = await readQcow2Header(path).catch(() => undefined);
  const size = header ? header.size : st.size;
  if (size < disk.sizeBytes) {
    throw new UsageError(`sync target ${path} holds ${size} bytes (${header ? 'qcow2 virtual size' : 'raw file size'}), less than disk ${disk.target}'s ${disk.sizeBytes} bytes`, {
      ...where, hint: `Give a target of at least ${disk.sizeBytes} bytes (qemu-img resize), or a missing file path: virtcbt creates it`,
    });
  }
}

async function openTarget(target: ReturnType<typeof parseTarget>, disk: TrackedDisk, deps: SyncDeps, req: SyncRequest, where: { domain: string; disk: string }): Promise<{ endpoint: Endpoint; close(): Promise<void> }> {
  if (target.kind === 'file') {
    const img = await openImageEndpoint(target.path, {
      runDir: deps.runDir, writable: true, format: target.format ?? req.format, create: { size: disk.sizeBytes, mode: 0o600 },
      disk: disk.target, signal: deps.signal, timeoutMs: deps.nbd.timeoutMs,
    }).catch((err: unknown) => {
      // QEMU's image lock: another VM, qemu-nbd or qemu-storage-daemon has the file open.
      if (/Failed to get .*lock|Is another process using the image/i.test(errorMessage(err))) {
        throw new UsageError(`sync target ${target.path} is in use: another process (a VM, qemu-nbd or qemu-storage-daemon) has it open and QEMU's image lock refuses a writer (${errorMessage(err)})`, {
          ...where, cause: err, hint: 'Stop what has the image open (virsh domblklist, fuser), or name another target',
        });
      }
      throw err;
    });
    return { endpoint: img.endpoint, close: () => img.close() };
  }
  let uri = target.uri;
  if (deps.tlsCertificates && uri.startsWith('nbds') && !/[?&]tls-certificates=/.test(uri)) {
    uri += `${uri.includes('?') ? '&' : '?'}tls-certificates=${encodeURIComponent(deps.tlsCertificates)}`;
  }
  const ep = await NbdEndpoint.open(uri, { timeoutMs: deps.nbd.timeoutMs, connections: deps.nbd.connections, signal: deps.signal });
  return { endpoint: ep, close: () => ep.close() };
}
