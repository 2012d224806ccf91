// The backup job: a snapshot of the domain (src/snapshot: freeze, one transaction that rotates the
// bitmaps, begins the consumer's pass and starts fleecing, thaw) taken in the domain's queue; the
// copy of the consumer's changes from the snapshot's exports into the repository beside folds and
// other jobs; flush and fsync; the manifest; only then the commit of the pass. Anything that fails
// (or a kill, or a cancel) before the commit leaves the consumer where it was and no manifest
// naming the partial files, which the next run removes.
import { join } from 'node:path';
import { logContinuity, type ChangeLog, type DiskChanges } from '../changelog/index.js';
import { NbdEndpoint, copyExtents, dataExtents, flushingEndpoint, isNoSpace, wholeDisk, type CopyExtent, type CopyProgress } from '../copy/index.js';
import { align, totalBytes } from '../extent/index.js';
import { GuestAgent, LibvirtTransport } from '../guest/index.js';
import type { DomainXmlInfo } from '../libvirt/index.js';
import { CONTEXT_BASE_ALLOCATION } from '../nbd/index.js';
import { queryBlockExports, type QmpExecutor } from '../qmp/index.js';
import { Snapshot, cleanupDeadSnapshots, presetMarker, type FreezeMarker, type FreezeOutcome, type SnapshotHost } from '../snapshot/index.js';
import type { Reconciler, TrackedDisk } from '../reconciler/index.js';
import { Qcow2Writer, createQcow2 } from '../qcow2/index.js';
import {
  ExtentDigest, Repository, chainDamage, fsyncDir, imageName, newDigestInfo, pointId, writeManifest,
  type BackupDisk, type Manifest,
} from '../repo/index.js';
import { NotFoundError, UsageError, VirtcbtError, errorMessage } from '../util/errors.js';
import type { BackupRequest, BackupResult, DiskPlan, DiskResult, Emit, StepTiming } from './events.js';
import { ProgressMeter } from '../copy/progress.js';

/** What the job needs of the domain: virtcbtd's DomainJobContext has all of it. */
export interface BackupContext {
  domain: string;
  running: boolean;
  qmp: QmpExecutor;
  nbdSocket: string;
  disks: TrackedDisk[];
  reconciler: Reconciler;
  info: DomainXmlInfo;
  log: ChangeLog;
}

/** Points where a crash test kills the daemon (VIRTCBT_FAULT_BACKUP_STEP). */
export type BackupStep = 'prepared' | 'frozen' | 'rotated' | 'copy' | 'copied' | 'manifest';
export const BACKUP_STEPS: readonly BackupStep[] = ['prepared', 'frozen', 'rotated', 'copy', 'copied', 'manifest'];

export interface BackupDeps {
  /** Where snapshots are registered and their overlays made. */
  snapshots: SnapshotHost;
  /** The job id the snapshot is held by (`virtcbt jobs`). */
  job?: string;
  /**
   * Called once the snapshot is taken and exported: the caller may let go of the domain's queue
   * (folds and other jobs run beside the copy). From then on the snapshot is released through `inQueue`.
   */
  snapshotTaken?: () => void;
  /** Runs `fn` in the domain's queue again (the release of the snapshot after `snapshotTaken`). */
  inQueue?: <T>(fn: () => Promise<T>) => Promise<T>;
  /** Private directory for qemu-nbd sockets. */
  runDir: string;
  libvirtUri: string;
  nbd: { requestSize: number; inflight: number; connections: number; timeoutMs: number };
  agentTimeoutMs: number;
  freezeTimeoutMs: number;
  /** The domain XML saved in the manifest (needed only then: fetched alongside the backup). */
  domainXml: string | Promise<string>;
  /**
   * Takes the release of the snapshot (fleecing teardown, exports) to run once the result is out;
   * without it the backup releases before it answers.
   */
  deferRelease?: (release: () => Promise<void>) => void;
  /** performance.now() when the request arrived: the wait for the domain's queue and context is reported as step 'context'. */
  requestedAt?: number;
  /** Snapshot tags still in use by open pass exports of an older virtcbt (kept by the clean-up). */
  keepTags?: () => Promise<Set<string>>;
  /** The agent to freeze through (default: libvirt's, when the domain has the channel). */
  agent?: GuestAgent | null;
  fault?: (step: BackupStep) => void | Promise<void>;
  /** Records that the guest is frozen (see rotateFrozen): a daemon killed while frozen thaws it at start. */
  freezeMarker?: FreezeMarker;
  /**
   * The job's cancellation (virtcbt jobs cancel, SIGTERM): checked between steps and by the copy;
   * a cancelled backup fails through the usual path (pass aborted, snapshot and partial files gone).
   */
  signal?: AbortSignal;
}

/**
 * Flush the repository image every this many bytes written (see flushingEndpoint). Measured with
 * bench/backup-copy-path.ts (256 MiB into the qcow2 writer): 32 MiB 0.87-1.0 s with a final flush
 * of 65-95 ms, 64 MiB 0.92-1.2 s (115-145 ms), one flush at the end 1.2-1.5 s (390-500 ms).
 */
const FLUSH_EVERY = 32 * 1024 * 1024;
/**
 * Smallest request of the copy into the repository. Per byte, 256 KiB requests cost this process
 * about 20% more CPU than 1 MiB ones (more requests, digest pieces and pwrites) and the NBD
 * server no less (bench/backup-copy-path.ts, qemu-nbd as the source).
 */
const MIN_REQUEST = 1024 * 1024;
/** Bytes of requests in flight per disk (buffers held by the copy): 32 × 1 MiB was as fast as 64. */
const MAX_INFLIGHT_BYTES = 32 * 1024 * 1024;
/** Cluster size of the repository images; an incremental's extents are widened to whole clusters. */
const CLUSTER = 65536;

export async function runBackup(ctx: BackupContext, req: BackupRequest, deps: BackupDeps, emit: Emit): Promise<BackupResult> {
  const { domain } = ctx;
  const t0 = performance.now();
  const steps: StepTiming[] = [];
  if (deps.requestedAt !== undefined) steps.push({ step: 'context', ms: Math.round((t0 - deps.requestedAt) * 10) / 10, at: Date.now() });
  let mark = t0;
  const step = (name: string) => {
    const now = performance.now();
    steps.push({ step: name, ms: Math.round((now - mark) * 10) / 10, at: Date.now() });
    mark = now;
  };
  if (!ctx.log.listConsumers(domain).some((c) => c.name === req.consumer)) {
    throw new NotFoundError(`domain ${domain} has no consumer '${req.consumer}'`, {
      domain, hint: `Add it with \`virtcbt consumer add ${domain} ${req.consumer}\` (its first backup is full)`,
    });
  }
  const repo = await Repository.open(req.repo, { create: true });
  const chainDir = repo.chainDir(domain, req.consumer);
  const lock = await repo.lock(domain, req.consumer, `backup of ${domain} for ${req.consumer}`);
  const notes: string[] = [];
  let snap: Snapshot | undefined;
  let leftQueue = false;
  const writers: Qcow2Writer[] = [];
  const endpoints: NbdEndpoint[] = [];
  let passId: number | undefined;
  let committed = false;
  let manifestWritten = false;
  let files: string[] = [];
  let closeAgent: GuestAgent | undefined;
  let released = false;
  let markerUpdated: Promise<void> | undefined;
  let premade: PremadeImages | undefined;
  let dropFreezeMarker: (() => Promise<void>) | undefined;
  // Once the queue was let go (see snapshotTaken), QEMU work on the domain goes through it again.
  const inQueue = <T>(fn: () => Promise<T>): Promise<T> => (leftQueue && deps.inQueue ? deps.inQueue(fn) : fn());
  try {
    const agent = deps.agent === null || !ctx.running || req.noFreeze ? undefined
      : deps.agent ?? (ctx.info.hasAgentChannel ? new GuestAgent(new LibvirtTransport(domain, { uri: deps.libvirtUri, commandTimeoutMs: deps.agentTimeoutMs })) : undefined);
    closeAgent = agent;
    let noAgentReason = !ctx.running ? 'the domain is stopped: its disks are consistent as they are'
      : req.noFreeze ? 'not frozen (--no-freeze): crash-consistent'
        : ctx.info.hasAgentChannel ? 'no guest agent' : 'the domain has no guest-agent channel: crash-consistent';
    // Whether the agent answers (else no freeze: a hung agent must not be asked to freeze) is
    // asked now; the answer is needed only at the freeze, after the preparation below.
    const pinged = agent ? agent.ping({ timeoutMs: Math.min(5_000, deps.agentTimeoutMs) }).then(() => true, (err: unknown) => {
      noAgentReason = `the guest agent did not answer (${errorMessage(err)}): crash-consistent`;
      return false;
    }) : Promise.resolve(false);
    // The freeze marker is written now, beside the ping, rather than when the freeze is sent: by
    // then the repository's fsyncs may keep its file system busy.
    const freezeMarker = agent && deps.freezeMarker ? presetMarker(deps.freezeMarker) : undefined;
    dropFreezeMarker = freezeMarker?.dropIfUnused;
    // A killed earlier run: its pass never moves the consumer, its files go. Its marker stays
    // until this run's replaces it, so a kill in between still finds that pass next time.
    step('lock');
    // QEMU's leftovers and the repository's files are independent: cleaned up together.
    const staleFleeces = (async () => cleanupDeadSnapshots(ctx.qmp, deps.snapshots, domain, (await deps.keepTags?.()) ?? new Set()))();
    staleFleeces.catch(() => undefined);
    const left = await repo.cleanupLeftovers(domain, req.consumer, { keepMarker: true });
    let recovered: BackupResult['recovered'];
    if (left.interrupted) {
      const ip = left.interrupted;
      // Passes a third-party tool holds open with exports are not the killed backup's.
      const held = new Set((await queryBlockExports(ctx.qmp)).map((e) => /^virtcbt-pass-(\d+)-/.exec(e.id)?.[1]).filter(Boolean).map(Number));
      // A marker from before a disable and enable names passes of a change log that is gone: none here is its.
      const stale = ctx.log.openPasses(domain).filter((o) => o.consumer === req.consumer && !held.has(o.id) &&
        (ip.logId === undefined || ip.logId === o.logId) &&
        (o.id === ip.pass || (ip.pass === null && o.generation >= ip.generation)));
      for (const o of stale) ctx.log.abortPass(o.id);
      recovered = { id: ip.id, pass: stale[0]?.id ?? ip.pass, passAborted: stale.length > 0, removed: left.removed };
      notes.push(`cleaned up the interrupted backup ${ip.id}${stale.length ? ` (aborted its pass ${stale.map((o) => o.id).join(', ')})` : ''}`);
    }
    await staleFleeces;
    // The chain as the clean-up read it (each manifest read once per backup).
    const { chain, nextSeq: seq } = left;
    const parent = chain[chain.length - 1];
    // The change log this backup's generations belong to: a chain recorded under another is not continued.
    const logId = ctx.log.logId(domain);
    // Whether the parent's chain is whole, read while the agent answers its ping (an lstat per image, a header
    // only when the file changed): a consumer must not move onto a point that cannot be restored.
    const damage = parent && !req.full && logContinuity(parent.logId, logId) === 'same'
      ? chainDamage(chainDir, chain, parent, {
        more: () => repo.chain(domain, req.consumer, { includePruning: true }), journal: () => repo.pruneJournal(domain, req.consumer).catch(() => undefined),
      })
      : Promise.resolve(new Map<string, string>());
    damage.catch(() => undefined);
    const id = pointId(req.consumer, seq);
    emit({ type: 'start', domain, consumer: req.consumer, id, running: ctx.running, disks: ctx.disks.map((d) => ({ target: d.target, sizeBytes: d.sizeBytes })) });
    // Recorded before anything happens in QEMU or the log, so a kill at any later point is found.
    const marker = { id, pass: null as number | null, generation: ctx.log.currentGeneration(domain), logId, files: [] as string[], pids: [] as number[], pid: process.pid, startedAt: new Date().toISOString() };
    step('prepare');
    // Written while the agent answers its ping; the freeze and the rotation wait for it.
    const markerWritten = repo.writeInProgress(domain, req.consumer, marker);
    markerWritten.catch(() => undefined);
    markerUpdated = markerWritten;

    // The snapshot's overlays are attached while the agent is pinged and the guest freezes: only
    // the transaction waits for them (the freeze call, in which the guest syncs, takes longer).
    snap = Snapshot.open(ctx, deps.snapshots, { job: deps.job ?? `backup ${id}` });
    const agentOk = await pinged;
    // Before the freeze: the repository may be slow storage (NFS), and the guest must not wait
    // frozen for its fsync. The marker was written while the agent answered the ping.
    await markerWritten;
    const facts: ChainFacts = { domain, uuid: ctx.info.uuid, logId, damage: await damage };
    step('ping');
    // Not frozen once cancelled.
    deps.signal?.throwIfAborted();
    if (deps.fault) await deps.fault('prepared');

    // The images of disks expected to continue the chain are made while the guest freezes: for a
    // disk with no changes that empty overlay is all the copy writes, and its fsync (with the
    // chain directory's) is then off the critical path. A disk the plan copies rewrites its image.
    premade = premakeImages(ctx, req, parent, chainDir, id, facts);
    deps.signal?.throwIfAborted();
    const taken = await snap.take({
      consumer: req.consumer,
      agent: agentOk ? agent : undefined, noAgentReason, freezeTimeoutMs: deps.freezeTimeoutMs, marker: freezeMarker?.marker,
      whileFrozen: deps.fault ? () => deps.fault!('frozen') : undefined,
      // The freeze call overlaps the rest of the preparation, unless the rotation has a
      // recovery to do first (folding or removing leftover bitmaps can take long).
      early: ctx.disks.every((d) => ctx.reconciler.settled(d)),
      // The folded bitmaps are removed after the result is out (see JobRunner.backup): their removal flushes the VM's image.
      keepFolded: true,
      // The snapshot's exports also carry the frozen bitmaps: the fold reads them there. (Only disks
      // whose bitmap recorded something: the others are exported below if the plan copies them.)
      foldThroughExports: true,
      signal: deps.signal,
    });
    const { time, consistency } = taken;
    const freeze: Pick<FreezeOutcome, 'note' | 'freezeWindowMs' | 'freezeCallMs'> = taken;
    passId = taken.passId!;
    const generation = taken.generation!;
    marker.pass = passId;
    if (freeze.note) notes.push(freeze.note);
    emit({ type: 'snapshot', time, consistency, note: freeze.note, freezeWindowMs: freeze.freezeWindowMs, generation, pass: passId });
    step('snapshot');
    await deps.fault?.('rotated');
    deps.signal?.throwIfAborted();

    const pass = ctx.log.getPass(passId);
    const changes = ctx.log.passChanges(passId);

    // Which disks continue the chain: the parent must hold the disk at a point no older than the
    // consumer's last pass, or the changes since then would not bring it up to date.
    const plans: DiskPlan[] = ctx.disks.map((disk) => {
      const ch = changes.find((c) => c.target === disk.target);
      if (!ch) throw new VirtcbtError(`the change log has no changes for disk ${disk.target}`, { domain, disk: disk.target });
      const file = imageName(id, disk.target);
      const pd = parent?.disks.find((d) => d.target === disk.target);
      const why = fullReason(req, ch, parent, pd, pass.since, disk, { ...facts, logId: pass.logId });
      return {
        target: disk.target, sizeBytes: disk.sizeBytes, full: why !== undefined, reason: why, file,
        changedBytes: totalBytes(ch.extents), backing: why === undefined ? pd!.file : null,
      };
    });
    emit({ type: 'plan', disks: plans });
    // Said once for the whole backup (each disk's reason says it too).
    const broken = parent && plans.some((p) => p.full) ? identityBreak(parent, facts.domain, pass.logId) : undefined;
    if (broken !== undefined) notes.push(`${broken}: full backup`);
    else if (!req.full) for (const p of plans) if (p.full && facts.damage.has(p.target)) notes.push(`the chain under ${parent!.id} is damaged (${facts.damage.get(p.target)}): full backup`);
    files = plans.map((p) => p.file);
    marker.files = files;
    // The pass and files, for the record: the durable marker above already lets a later run find
    // this one (its pass by generation; any image no manifest names goes), so no fsync here and
    // the copy need not wait for it.
    markerUpdated = markerWritten.then(() => repo.writeInProgress(domain, req.consumer, marker, { durable: false }));
    markerUpdated.catch(() => undefined);
    // Disks the plan copies from whose bitmap had nothing to fold have no export yet (their changes
    // are from earlier passes, or they are copied whole): exported now, the others kept.
    const copied = plans.filter((p) => p.full || p.changedBytes > 0).map((p) => p.target);
    const sources = await snap.exportUnix(copied);
    step('plan');
    // The snapshot stands: the copy runs beside folds and other jobs of the domain. (A stopped
    // domain's job keeps the queue: its storage daemon holds the images.)
    if (deps.snapshotTaken && ctx.running) {
      deps.snapshotTaken();
      leftQueue = true;
    }
    deps.signal?.throwIfAborted();

    const results = await Promise.all(plans.map(async (plan): Promise<{ plan: DiskPlan; res: DiskResult; extents: [number, number][] }> => {
      const started = performance.now();
      const ch = changes.find((c) => c.target === plan.target)!;
      const digest = new ExtentDigest();
      const path = join(chainDir, plan.file);
      const image = { size: plan.sizeBytes, clusterSize: CLUSTER, backing: plan.backing ? { name: plan.backing } : undefined };
      // Its image may be made already (and is rewritten below if it is not the one the plan needs).
      const ready = await premade!.settled(plan);
      if (!plan.full && plan.changedBytes === 0) {
        // Nothing changed on this disk: an empty overlay reads as its parent.
        if (!ready) await createQcow2(path, { ...image, replace: true });
        const res: DiskResult = {
          target: plan.target, full: false, file: plan.file, backing: plan.backing, bytes: 0, written: 0, extents: 0,
          sha256: await digest.finish(), elapsedMs: Math.round(performance.now() - started),
        };
        emit({ type: 'disk-done', disk: res });
        return { plan, res, extents: [] };
      }
      // Written by virtcbt itself: data appended, tables behind it at finish() (see src/qcow2).
      const target = await Qcow2Writer.create(path, { ...image, replace: true });
      writers.push(target);
      const src = await NbdEndpoint.open(sources.find((s) => s.target === plan.target)!.uri, {
        metaContexts: [CONTEXT_BASE_ALLOCATION], timeoutMs: deps.nbd.timeoutMs, connections: deps.nbd.connections, signal: deps.signal,
      });
      endpoints.push(src);
      // An overlay's clusters must be written whole (a part left out would read the parent).
      const changed = plan.full ? [] : align(ch.extents, CLUSTER, plan.sizeBytes);
      const extents: AsyncIterable<CopyExtent> | CopyExtent[] = plan.full ? wholeDisk(src) : dataExtents(changed);
      const total = plan.full ? plan.sizeBytes : totalBytes(changed);
      const meter = new ProgressMeter(total);
      const flushing = flushingEndpoint(target, FLUSH_EVERY);
      const requestSize = Math.max(MIN_REQUEST, deps.nbd.requestSize);
      let faulted = false;
      const progress = await copyExtents(src, digest.wrap(flushing.endpoint), digest.track(extents), {
        requestSize,
        inflight: Math.max(1, Math.min(deps.nbd.inflight, Math.floor(MAX_INFLIGHT_BYTES / requestSize))),
        signal: deps.signal,
        onProgress: (p: Readonly<CopyProgress>) => {
          const ev = meter.update(p.done, p.written);
          if (ev) emit({ type: 'progress', disk: plan.target, ...ev });
          if (!faulted && deps.fault && p.done * 2 >= total) {
            faulted = true;
            void deps.fault('copy');
          }
        },
      }).catch(async (err) => {
        await digest.abandon();
        throw err;
      });
      const sha256 = await digest.finish();
      emit({ type: 'progress', disk: plan.target, ...meter.final(progress.done, progress.written) });
      const flushStart = performance.now();
      await flushing.settle();
      await src.close();
      await target.finish();
      const res: DiskResult = {
        target: plan.target, full: plan.full, reason: plan.reason, file: plan.file, backing: plan.backing,
        bytes: digest.bytes, written: progress.written, extents: digest.extents.length, sha256,
        elapsedMs: Math.round(performance.now() - started), flushMs: Math.round(performance.now() - flushStart),
      };
      emit({ type: 'disk-done', disk: res });
      return { plan, res, extents: digest.extents };
    }));
    step('copy');
    // The last point a cancel is honoured: from the manifest on, the backup completes.
    deps.signal?.throwIfAborted();
    // The snapshot is no longer needed: copy-before-write leaves the guest's I/O path as soon as
    // the result is out (the daemon runs it then), or now.
    const taking = snap;
    const release = () => taking.release();
    if (deps.deferRelease) deps.deferRelease(release);
    else await inQueue(release);
    released = true;
    if (!deps.deferRelease) step('release');
    await deps.fault?.('copied');

    await markerUpdated;
    // The images' names are durable before the manifest naming them is (its own write and fsync run meanwhile).
    const imagesNamed = premade!.namesDurable(plans.map((p) => p.target));
    imagesNamed.catch(() => undefined);
    const disks: BackupDisk[] = results.map(({ plan, res, extents }) => ({
      target: plan.target, sizeBytes: plan.sizeBytes, file: plan.file, backing: plan.backing, full: plan.full, reason: plan.reason,
      extents, bytes: res.bytes, written: res.written, sha256: res.sha256,
    }));
    const kind = disks.every((d) => d.full) ? 'full' : 'incremental';
    const manifest: Manifest = {
      format: 'virtcbt-backup/1', id, domain, uuid: ctx.info.uuid, consumer: req.consumer, seq, time,
      completedAt: new Date().toISOString(), logId: pass.logId, generation, since: pass.since, pass: passId,
      parent: disks.some((d) => d.backing) ? parent!.id : null, kind, running: ctx.running, consistency,
      consistencyNote: ctx.running ? freeze.note : 'the domain was stopped', freezeWindowMs: freeze.freezeWindowMs,
      digest: newDigestInfo(), disks, domainXml: await deps.domainXml,
    };
    await writeManifest(chainDir, manifest, { beforeRename: imagesNamed });
    manifestWritten = true;
    step('manifest');
    await deps.fault?.('manifest');
    ctx.log.commitPass(passId);
    committed = true;
    await repo.clearInProgress(domain, req.consumer);
    step('commit');
    return {
      domain, consumer: req.consumer, id, kind, parent: manifest.parent, repo: repo.root, chainDir,
      manifest: join(chainDir, `${id}.json`), time, logId: pass.logId, generation, since: pass.since, pass: passId, running: ctx.running,
      consistency, consistencyNote: manifest.consistencyNote, freezeWindowMs: freeze.freezeWindowMs, freezeCallMs: freeze.freezeCallMs,
      disks: results.map((r) => r.res), bytes: disks.reduce((s, d) => s + d.bytes, 0), written: disks.reduce((s, d) => s + d.written, 0),
      elapsedMs: Math.round(performance.now() - t0), steps, recovered, notes,
    };
  } catch (err) {
    for (const w of writers) await w.close().catch(() => undefined);
    if (passId !== undefined && !committed) {
      try {
        if (ctx.log.getPass(passId).state === 'open') ctx.log.abortPass(passId);
      } catch { /* the log reports its own problems on the next call */ }
    }
    if (!manifestWritten) {
      // The marker's writes (and images made early) must not land after the clean-up has removed them.
      await markerUpdated?.catch(() => undefined);
      await premade?.named.catch(() => undefined);
      await repo.cleanupLeftovers(domain, req.consumer).catch(() => undefined);
    }
    throw describeFailure(err, domain, req, repo.root);
  } finally {
    for (const e of endpoints) await e.close().catch(() => undefined);
    if (!released && snap) {
      const taking = snap;
      await inQueue(() => taking.release()).catch((err) => notes.push(errorMessage(err)));
    }
    await dropFreezeMarker?.().catch(() => undefined);
    await closeAgent?.close().catch(() => undefined);
    await lock.release();
  }
}

/** Empty overlays made before the plan, for the disks expected to continue the chain. */
interface PremadeImages {
  /** Resolves when every image and the chain directory's entry for it are durable. */
  named: Promise<void>;
  /**
   * Waits for the disk's early image (if any) and tells whether it is the one `plan` needs as it
   * is: an overlay on the same parent image. A failure to make it is thrown only then.
   */
  settled(plan: DiskPlan): Promise<boolean>;
  /**
   * Makes the names of the disks' images durable: done already when every one was made early
   * (a copy rewrites the same file), else one fsync of the chain directory.
   */
  namesDurable(targets: string[]): Promise<void>;
}

/**
 * Starts making, for each disk whose parent image and size say it continues the chain, the empty
 * overlay the plan will most likely want (whether the disk changed is known only after the
 * rotation). An image the plan does not want is rewritten by the copy; one left by a failure goes
 * with the repository's clean-up of files no manifest names.
 */
function premakeImages(ctx: BackupContext, req: BackupRequest, parent: Manifest | undefined, chainDir: string, id: string, facts: ChainFacts): PremadeImages {
  const made = new Map<string, { backing: string; done: Promise<void> }>();
  for (const disk of ctx.disks) {
    const pd = parent?.disks.find((d) => d.target === disk.target);
    if (req.full || !pd || chainBreak(parent, pd, disk, facts) !== undefined) continue;
    const done = createQcow2(join(chainDir, imageName(id, disk.target)), { size: disk.sizeBytes, clusterSize: CLUSTER, backing: { name: pd.file } });
    done.catch(() => undefined);
    made.set(disk.target, { backing: pd.file, done });
  }
  const named = Promise.all([...made.values()].map((m) => m.done)).then(() => (made.size > 0 ? fsyncDir(chainDir) : undefined));
  named.catch(() => undefined);
  const fits = (plan: DiskPlan) => !plan.full && made.get(plan.target)?.backing === plan.backing;
  return {
    named,
    settled: async (plan) => {
      const m = made.get(plan.target);
      if (!m) return false;
      if (fits(plan)) {
        await m.done;
        return true;
      }
      await m.done.catch(() => undefined);
      return false;
    },
    namesDurable: async (targets) => {
      if (made.size > 0 && targets.every((t) => made.has(t)) && await named.then(() => true, () => false)) return;
      await fsyncDir(chainDir);
    },
  };
}

/** What decides, before the rotation, whether the repository's chain can go on. */
interface ChainFacts {
  domain: string;
  uuid: string;
  /** The identity of the domain's change log. */
  logId: string;
  /** Per disk target, what is wrong with the parent's chain (see chainDamage). */
  damage: ReadonlyMap<string, string>;
}

/** Why a chain recorded under `parent`'s change log cannot go on with generations of change log `logId`. */
function identityBreak(parent: Manifest, domain: string, logId: string): string | undefined {
  switch (logContinuity(parent.logId, logId)) {
    case 'same': return undefined;
    case 'unknown': return `the previous backup ${parent.id} does not say which change log of ${domain} it was taken under (an older virtcbt wrote it)`;
    case 'other': return `the previous backup ${parent.id} was taken under another change log of ${domain} (tracking was disabled and re-enabled since)`;
  }
}

/** Why the repository's chain cannot go on for this disk, as far as it is known before the rotation. */
function chainBreak(parent: Manifest | undefined, pd: BackupDisk | undefined, disk: TrackedDisk, facts: ChainFacts): string | undefined {
  if (!parent || !pd) return 'the repository has no earlier backup of this disk for this consumer';
  if (parent.uuid !== facts.uuid) return `the previous backup ${parent.id} is of another domain with the same name (uuid ${parent.uuid})`;
  const otherLog = identityBreak(parent, facts.domain, facts.logId);
  if (otherLog !== undefined) return otherLog;
  if (pd.sizeBytes !== disk.sizeBytes) return `the disk size changed from ${pd.sizeBytes} to ${disk.sizeBytes} bytes`;
  const damaged = facts.damage.get(disk.target);
  if (damaged !== undefined) return `the chain under ${parent.id} is damaged (${damaged})`;
  return undefined;
}

/** Why a disk must be copied whole, or undefined when the consumer's changes continue its chain. */
function fullReason(
  req: BackupRequest, ch: DiskChanges | undefined, parent: Manifest | undefined, pd: BackupDisk | undefined,
  since: number | null, disk: TrackedDisk, facts: ChainFacts,
): string | undefined {
  if (req.full) return '--full was asked for';
  if (ch?.full) return ch.reason ?? 'the change log has no history for this consumer';
  const broken = chainBreak(parent, pd, disk, facts);
  if (broken !== undefined) return broken;
  // Generations compare here only because chainBreak found the parent under this very change log.
  if (since === null || parent!.generation < since) {
    return `the newest backup in this repository (${parent!.id}, generation ${parent!.generation}) is older than the consumer's last pass (generation ${since}): it was written elsewhere`;
  }
  return undefined;
}

/** The error a failed backup ends in: what went wrong, that nothing moved, and the exit code of the cause. */
export function describeFailure(err: unknown, domain: string, req: BackupRequest, root: string): unknown {
  const kept = `the previous backups are intact and consumer ${req.consumer} did not move (the next backup covers everything since its last good one)`;
  if (isNoSpace(err)) {
    return new VirtcbtError(`the backup repository ${root} is full: ${errorMessage(err)}`, {
      domain, cause: err, hint: `Free space (e.g. \`virtcbt prune --repo ${root} ${domain} --consumer ${req.consumer} --keep N\`) or use another --repo; ${kept}`,
    });
  }
  if (err instanceof UsageError) return err;
  if (err instanceof VirtcbtError) {
    return new VirtcbtError(`backup failed: ${err.message}`, {
      domain: err.domain ?? domain, disk: err.disk, cause: err, exitCode: err.exitCode, hint: err.hint ? `${err.hint}; ${kept}` : kept,
    });
  }
  return new VirtcbtError(`backup failed: ${errorMessage(err)}`, { domain, cause: err, hint: kept });
}
