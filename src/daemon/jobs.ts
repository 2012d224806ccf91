// virtcbtd's jobs on a domain beyond tracking: backups (streamed progress) and passes exported
// to third-party tools, both reading the same point-in-time view (fleecing on a running VM, the
// images themselves through qemu-storage-daemon on a stopped one).
import { execa } from 'execa';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runBackup, type BackupEvent, type BackupRequest, type BackupResult, type BackupStep } from '../backup/index.js';
import type { ChangeLog, DiskChanges } from '../changelog/index.js';
import { fromPairs } from '../extent/index.js';
import type { VirtcbtConfig } from '../config/index.js';
import { AgentCommandError, GuestAgent, LibvirtTransport, VirshShellTransport, type AgentCallOptions, type AgentTransport } from '../guest/index.js';
import type { Libvirt } from '../libvirt/index.js';
import { queryBlockExports, type QmpExecutor } from '../qmp/index.js';
import { releaseNbdServer } from '../snapshot/index.js';
import type { QsdImage } from '../qsd/index.js';
import {
  Snapshot, SnapshotRegistry, type RemoteExport, addReadOnlyExport, holdStorageDaemon, killStaleRemoteExport, remoteExportSettings, startRemoteExport, sweepStaleRemoteExports, buildExtentBitmap, cleanupDeadSnapshots, ensureNbdServer, nbdUnixUri, teardownTag, type SnapshotHost,
} from '../snapshot/index.js';
import { NotFoundError, UsageError, VirtcbtError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { collectGarbage } from '../util/memory.js';
import type { PassReply } from './api-types.js';
import { diskChangesReply } from './changes-reply.js';
import { FreezeMarkers } from './freeze-marker.js';
import { JobRegistry, type Job } from './job-registry.js';
import { KeyedTurns } from './turns.js';
import { runScan, scanStatus, type ScanEvent, type ScanRequest, type ScanResult, type ScanStatus, type ScanVerdict } from '../scan/index.js';
import { QuarantineActionError, actionFor, depsFromConfig, quarantine } from '../scan/quarantine.js';
import { NbdEndpoint } from '../copy/index.js';
import { SyncRecords, runSync, sweepInterruptedSyncs, syncStatus, type SyncTargetStatus, type SyncEvent, type SyncRequest, type SyncResult } from '../sync/index.js';
import { AgentMapFreezer, usedMapFromCapture, usedMapFromImage, type UsedMap } from '../usedmap/index.js';
import type { DomainJobContext, Tracker } from './tracker.js';

/** Export ids (and names) of pass exports: `virtcbt-pass-P-TARGET`; the pass id finds them again after a restart. */
const PASS_EXPORT = /^virtcbt-pass-(\d+)-/;

export function passExportName(pass: number, target: string): string {
  return `virtcbt-pass-${pass}-${target}`;
}

export function passBitmapName(pass: number): string {
  return `virtcbt-pass-${pass}`;
}

interface HeldExport {
  domain: string;
  /** Running domain: the snapshot the pass's exports read. */
  snap?: Snapshot;
  /** Stopped domain: the read-only storage daemon serving the export. */
  release?: () => Promise<void>;
}

export interface JobRunnerOptions {
  /** Test-only fault injection: called before each backup step. */
  backupFault?: (step: BackupStep, consumer: string) => void | Promise<void>;
  /** Where the jobs are listed and cancelled (default: a registry of this runner's own). */
  registry?: JobRegistry;
  /** Test-only fault injection: called before a sync's copy. */
  syncFault?: (step: 'copy' | 'copying', written?: number) => void | Promise<void>;
}

/** An agent shell unused this long is closed (a scheduled job's domains reuse it; an idle daemon keeps none). */
const SHELL_IDLE_MS = 60_000;
/** A backup that copied at least this much leaves enough garbage to collect at once (util/memory.ts). */
const GC_AFTER_BYTES = 64 * 1024 * 1024;

export class JobRunner {
  private held = new Map<number, HeldExport>();
  private readonly turns = new KeyedTurns();
  private readonly freezeMarkers: FreezeMarkers;
  private shells = new Map<string, { t: VirshShellTransport; idle?: NodeJS.Timeout }>();
  private owner?: Promise<{ uid: number; gid: number } | undefined>;
  readonly registry: JobRegistry;

  constructor(
    private readonly tracker: Tracker,
    private readonly cfg: VirtcbtConfig,
    private readonly log: ChangeLog,
    private readonly libvirt: Libvirt,
    private readonly logger: Logger,
    private readonly opts: JobRunnerOptions = {},
  ) {
    this.freezeMarkers = new FreezeMarkers(cfg.stateDir);
    this.registry = opts.registry ?? new JobRegistry();
    this.snapshots = new SnapshotRegistry(join(cfg.stateDir, 'snapshots'));
    this.syncRecords = new SyncRecords(join(cfg.stateDir, 'sync'));
  }

  /** What virtcbtd keeps of sync targets (STATE/sync): records, seeds, writing markers, owed on-stop rounds. */
  private readonly syncRecords: SyncRecords;

  /** The live snapshots (state directory), apart from the jobs that hold them. */
  readonly snapshots: SnapshotRegistry;

  private async snapshotHost(running: boolean): Promise<SnapshotHost> {
    return { registry: this.snapshots, fleeceDir: this.fleeceDir, fleeceOwner: running ? await this.qemuOwner() : undefined };
  }

  get fleeceDir(): string {
    return this.cfg.fleece.dir || join(this.cfg.qmpSocketDir, 'fleece');
  }

  /** uid and gid QEMU runs as under libvirt (files it must open are given to it). */
  private qemuOwner(): Promise<{ uid: number; gid: number } | undefined> {
    this.owner ??= (async () => {
      const u = await execa('id', ['-u', 'libvirt-qemu'], { reject: false });
      if (u.exitCode !== 0) return undefined;
      const g = await execa('getent', ['group', 'libvirt-qemu'], { reject: false });
      const gid = g.exitCode === 0 ? Number(g.stdout.split(':')[2]) : Number((await execa('id', ['-g', 'libvirt-qemu'])).stdout);
      return { uid: Number(u.stdout), gid };
    })();
    return this.owner;
  }

  /**
   * The agent for the freeze, through a virsh shell, so that ping, freeze and thaw cost
   * milliseconds, not process starts. The shell is kept per domain between jobs (its start took
   * 20-30 ms of every backup) until it has been idle for SHELL_IDLE_MS, a call fails other than
   * by the agent's own answer, or virtcbtd stops.
   */
  private agentFor(ctx: DomainJobContext): GuestAgent | undefined {
    if (!ctx.running || !ctx.info.hasAgentChannel) return undefined;
    const { domain } = ctx;
    let e = this.shells.get(domain);
    if (!e) {
      e = { t: new VirshShellTransport(domain, { uri: this.cfg.libvirt.uri, commandTimeoutMs: this.cfg.agent.timeoutMs }) };
      this.shells.set(domain, e);
    }
    clearTimeout(e.idle);
    const entry = e;
    entry.t.warmUp();
    const drop = () => {
      clearTimeout(entry.idle);
      if (this.shells.get(domain) === entry) this.shells.delete(domain);
      void entry.t.close();
    };
    const transport: AgentTransport = {
      description: entry.t.description,
      domain,
      execute: <T>(command: string, args?: Record<string, unknown>, opts?: AgentCallOptions) => entry.t.execute<T>(command, args, opts).catch((err: unknown): never => {
        if (!(err instanceof AgentCommandError)) drop();
        throw err;
      }),
      close: async () => {
        if (this.shells.get(domain) !== entry) return;
        clearTimeout(entry.idle);
        entry.idle = setTimeout(drop, SHELL_IDLE_MS);
        entry.idle.unref();
      },
    };
    return new GuestAgent(transport);
  }

  /** Thaws guests a killed virtcbtd left frozen (its freeze marker is still there). */
  private async thawLeftFrozen(): Promise<void> {
    const dir = this.freezeMarkers.dir;
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      const domain = decodeURIComponent(f);
      try {
        if (await this.libvirt.isActive(domain)) {
          const agent = new GuestAgent(new LibvirtTransport(domain, { uri: this.cfg.libvirt.uri, commandTimeoutMs: this.cfg.agent.timeoutMs }));
          const n = await agent.thaw();
          this.logger.warn('thawed a guest an earlier virtcbtd left frozen', { domain, filesystems: n });
        }
        await rm(join(dir, f), { force: true });
      } catch (err) {
        this.logger.error('could not thaw a guest an earlier virtcbtd left frozen', { domain, error: (err as Error).message, hint: `virsh domfsthaw ${domain}` });
      }
    }
  }

  /**
   * Fleecing tags of pass exports whose pass is still open, beyond the registry's live snapshots
   * (exports an older virtcbt made before it had a registry): a clean-up keeps them.
   */
  private async liveTags(qmp: QmpExecutor, domain: string): Promise<Set<string>> {
    const open = new Set(this.log.openPasses(domain).map((p) => p.id));
    const tags = new Set<string>();
    for (const e of await queryBlockExports(qmp)) {
      const m = PASS_EXPORT.exec(e.id);
      const t = /^vcbt-fl-([a-z0-9]+)-/.exec(e['node-name']);
      if (m && t && open.has(Number(m[1]))) tags.add(t[1]!);
    }
    return tags;
  }

  // ---- backups -------------------------------------------------------------------------------

  /**
   * Runs a backup in the domain's queue. `emit` gets the progress events and, once the backup is
   * durable and committed, the result; housekeeping that follows (releasing the snapshot, removing
   * the folded bitmaps, which makes QEMU flush the image) still runs in the queue but after the
   * result.
   */
  backup(domain: string, req: BackupRequest, emit: (ev: BackupEvent) => void): Promise<BackupResult> {
    if (!req.repo || !req.repo.startsWith('/')) throw new UsageError('the repository must be an absolute path', { domain });
    const requestedAt = performance.now();
    return this.registry.run('backup', domain, { consumer: req.consumer }, (job) => this.turns.run(`${domain}\0${req.consumer}`, () => {
      const report = jobProgress(job, emit);
      // The backup holds the domain's queue while it takes its snapshot and while it releases it;
      // the copy runs beside folds and other jobs (a stopped domain's backup keeps the queue: its
      // storage daemon holds the images).
      let run!: Promise<{ r: BackupResult; finish?: () => Promise<void> }>;
      const held = this.tracker.withDomainJob(domain, (ctx) => {
        job.started();
        let letGo!: () => void;
        const taken = new Promise<void>((r) => { letGo = r; });
        run = this.runBackupJob(ctx, req, report, { signal: job.signal, job: job.id, requestedAt, snapshotTaken: letGo });
        // Still in the queue when it ends first (stopped domain): its housekeeping runs here.
        return Promise.race([taken, run.then((out) => out.finish?.(), () => undefined)]);
      });
      return (async () => {
        await held;
        const out = await run;
        return out.r;
      })();
    }, {
      // Two backups of one consumer would write one chain: the later one waits for the earlier.
      signal: job.signal, waiting: () => job.progress({ step: `waiting for the running backup of ${req.consumer}` }),
    }));
  }

  private async runBackupJob(
    ctx: DomainJobContext, req: BackupRequest, emit: (ev: BackupEvent) => void,
    o: { signal?: AbortSignal; job?: string; requestedAt: number; snapshotTaken: () => void },
  ): Promise<{ r: BackupResult; finish?: () => Promise<void> }> {
    const { domain } = ctx;
    const inQueue = this.queueAgain(domain, ctx.qmp);
    const t0 = Date.now();
    this.logger.info('backup started', { domain, consumer: req.consumer, repo: req.repo, full: req.full });
    let release: (() => Promise<void>) | undefined;
    let left = false;
    // Needed only for the manifest: fetched while the backup runs.
    const domainXml = this.libvirt.xml(domain, { inactive: !ctx.running });
    domainXml.catch(() => undefined);
    const again = <T>(fn: () => Promise<T>) => (left ? inQueue(fn) : fn());
    let r: BackupResult;
    try {
      r = await runBackup(ctx, req, {
        snapshots: await this.snapshotHost(ctx.running),
        job: o.job,
        snapshotTaken: () => { left = true; o.snapshotTaken(); },
        inQueue,
        signal: o.signal,
        runDir: this.cfg.runDir,
        libvirtUri: this.cfg.libvirt.uri,
        nbd: this.cfg.nbd,
        agentTimeoutMs: this.cfg.agent.timeoutMs,
        freezeTimeoutMs: this.cfg.agent.freezeTimeoutMs,
        domainXml,
        deferRelease: (fn) => { release = fn; },
        requestedAt: o.requestedAt,
        keepTags: () => this.liveTags(ctx.qmp, domain),
        agent: this.agentFor(ctx) ?? null,
        fault: this.opts.backupFault ? (step) => this.opts.backupFault!(step, req.consumer) : undefined,
        freezeMarker: this.freezeMarkers.for(domain),
      }, emit);
    } catch (err) {
      this.logger.error('backup failed', { domain, consumer: req.consumer, error: (err as Error).message });
      await again(async () => {
        await release?.().catch(() => undefined);
        await ctx.reconciler.removeFolded(ctx.disks).catch(() => undefined);
      });
      throw err;
    }
    this.logger.info('backup done', { domain, consumer: req.consumer, id: r.id, kind: r.kind, bytes: r.bytes, ms: Date.now() - t0 });
    const finish = async (queue: typeof again) => {
      await this.housekeeping(ctx, release, emit, r, queue);
      // The copy's buffers are garbage now; an idle daemon would keep them until its next big job.
      if (r.bytes >= GC_AFTER_BYTES) collectGarbage();
    };
    if (!left) return { r, finish: () => finish((fn) => fn()) };
    await finish(inQueue);
    return { r };
  }

  /**
   * Runs work in the domain's queue again once a job has let go of it (releasing its snapshot after
   * the copy): the session stays, and QEMU's NBD server goes back once the last export is gone, as
   * after any job.
   */
  private queueAgain(domain: string, qmp: QmpExecutor): <T>(fn: () => Promise<T>) => Promise<T> {
    return (fn) => this.tracker.queues.run(domain, async () => {
      try {
        return await fn();
      } finally {
        await releaseNbdServer(qmp).catch(() => undefined);
      }
    });
  }

  /**
   * After a backup is durable and committed: the result out, then the snapshot released (copy-
   * before-write is in the guest's I/O path until it goes) and the folded bitmaps removed (which
   * makes QEMU flush the image). Only a running VM's flush is worth answering before.
   */
  private async housekeeping(
    ctx: DomainJobContext, release: (() => Promise<void>) | undefined, emit: (ev: BackupEvent) => void, r: BackupResult,
    inQueue: (fn: () => Promise<void>) => Promise<void>,
  ): Promise<void> {
    const { domain } = ctx;
    const work = async () => {
      await release?.().catch((err) =>
        this.logger.warn('releasing the backup snapshot failed; the next backup removes what is left', { domain, error: (err as Error).message }));
      await ctx.reconciler.removeFolded(ctx.disks).catch((err) =>
        this.logger.warn('removing folded bitmaps failed; the next fold retries', { domain, error: (err as Error).message }));
    };
    if (!ctx.running) await work();
    emit({ type: 'result', ...r });
    if (ctx.running) await inQueue(work);
  }

  /**
   * The backup as a stream of events for the control API: progress first, the result last. For a
   * running domain the stream ends at the result (the housekeeping after it is virtcbtd's
   * business); for a stopped one only when the job is over, so that when the command returns the
   * storage daemon has let go of the images and the domain can start.
   */
  backupStream(domain: string, req: BackupRequest): AsyncIterable<Record<string, unknown>> {
    return eventStream<BackupEvent>((emit) => this.backup(domain, req, emit), (ev) => ev.type === 'result' && ev.running);
  }

  // ---- disk-copy syncs -------------------------------------------------------------------------

  /**
   * Syncs one disk to a target (see src/sync): a job like a backup, holding the domain's queue only
   * while it takes and releases its snapshot; syncs to one target take turns.
   */
  sync(domain: string, req: SyncRequest, emit: (ev: SyncEvent) => void, o: { signal?: AbortSignal } = {}): Promise<SyncResult> {
    return this.registry.run('sync', domain, { consumer: `${req.disk} → ${req.to}` }, (job) => this.turns.run(`${domain}\0sync\0${req.disk}\0${req.to}`, () => {
      const signal = o.signal ? AbortSignal.any([job.signal, o.signal]) : job.signal;
      const report = (ev: SyncEvent) => {
        if (ev.type === 'start') emit({ ...ev, job: job.id } as SyncEvent);
        else emit(ev);
        if (ev.type === 'snapshot') job.progress({ step: 'used map' });
        else if (ev.type === 'plan') job.progress({ step: 'copy', done: 0, total: ev.copyBytes });
        else if (ev.type === 'progress') job.progress({ step: 'copy', done: ev.done, total: ev.total });
      };
      let run!: Promise<SyncResult>;
      const held = this.tracker.withDomainJob(domain, (ctx) => {
        job.started();
        job.progress({ step: 'snapshot' });
        let letGo!: () => void;
        const taken = new Promise<void>((r) => { letGo = r; });
        const inQueue = this.queueAgain(domain, ctx.qmp);
        run = (async () => runSync(ctx, req, {
          snapshots: await this.snapshotHost(ctx.running), job: job.id, snapshotTaken: letGo, inQueue, signal,
          runDir: this.cfg.runDir, records: this.syncRecords,
          agent: this.agentFor(ctx) ?? null, freezeTimeoutMs: this.cfg.agent.freezeTimeoutMs, agentTimeoutMs: this.cfg.agent.timeoutMs,
          freezeMarker: this.freezeMarkers.for(domain), nbd: this.cfg.nbd, tlsCertificates: this.cfg.sync.tlsCertificates,
          seedCheckpointBytes: this.cfg.sync.seedCheckpointMiB * 1024 * 1024,
          domainXml: () => this.libvirt.xml(domain), fault: this.opts.syncFault,
          otherDomains: async () => Promise.all((await this.libvirt.listAll()).filter((n) => n !== domain).map(async (n) => ({
            domain: n, disks: (await this.libvirt.info(n).catch(() => undefined))?.disks ?? [],
          }))),
        }, report))();
        return Promise.race([taken, run.then(() => undefined, () => undefined)]);
      });
      return (async () => {
        await held;
        const r = await run;
        this.logger.info('sync done', { domain, disk: r.disk, target: r.target, seed: r.seed, copied: r.copiedBytes, ms: r.elapsedMs });
        emit({ type: 'result', ...r });
        return r;
      })().catch((err) => {
        this.logger.error('sync failed', { domain, disk: req.disk, target: req.to, error: (err as Error).message });
        throw err;
      });
    }, { signal: job.signal, waiting: () => job.progress({ step: 'waiting for the running sync to this target' }) }));
  }

  /**
   * The domain's session ended: each of its sync.onStop targets is synced from the images, one
   * after the other, in the background. A start of the domain meanwhile ends the sync's storage
   * daemon (the hook does, through its holder file): the sync fails, its consumer stays, and the
   * next sync covers it. Until the round ends, it is noted as owed (SyncRecords.markOnStopOwed):
   * a virtcbtd killed meanwhile has its successor run it again (resumeOnStopSyncs). Resolves once
   * that is noted, before the syncs run.
   */
  async syncOnStop(domain: string): Promise<void> {
    const targets = this.cfg.sync.onStop.filter((t) => t.domain === domain);
    if (targets.length === 0) return;
    await this.syncRecords.markOnStopOwed(domain).catch((err: unknown) => {
      // The syncs run all the same; only a virtcbtd killed during them would not run them again.
      this.logger.warn('could not note the on-stop syncs as owed', { domain, error: (err as Error).message });
    });
    const round = (async () => {
      for (const t of targets) {
        if (await this.libvirt.isActive(domain).catch(() => true)) {
          this.logger.info('on-stop sync skipped: the domain is running again (the next sync covers it)', { domain, disk: t.disk, target: t.to });
          return;
        }
        try {
          const r = await this.sync(domain, { disk: t.disk, to: t.to, format: t.format, discard: t.discard ?? false }, () => undefined);
          this.logger.info('on-stop sync done', { domain, disk: t.disk, target: r.target, seed: r.seed, reason: r.reason, copied: r.copiedBytes, used: r.usedBytes });
        } catch (err) {
          const started = await this.libvirt.isActive(domain).catch(() => false);
          this.logger.warn(started ? 'on-stop sync yielded to the domain\'s start; the next sync covers it' : 'on-stop sync failed; the next sync covers it',
            { domain, disk: t.disk, target: t.to, error: (err as Error).message });
          if (started) return;
        }
      }
    })();
    // Another round (a second release event) may have begun since: only the last one clears the note.
    this.onStopRounds.set(domain, round);
    void round.finally(async () => {
      if (this.onStopRounds.get(domain) !== round) return;
      this.onStopRounds.delete(domain);
      await this.syncRecords.clearOnStopOwed(domain).catch(() => undefined);
    });
  }

  private readonly onStopRounds = new Map<string, Promise<void>>();

  /** Per tracked domain (or one) and configured scanner: the last completed scan, the next full one, what changed since. */
  scanStatus(domain?: string): Promise<ScanStatus[]> {
    return scanStatus(this.cfg.stateDir, this.log, this.cfg.scan.scanners, this.cfg.scan.fullEveryHours * 3_600_000, domain);
  }

  /** Every sync target known (records, and the config's on-stop and scheduled syncs), of one domain or all. */
  syncStatus(domain?: string): Promise<SyncTargetStatus[]> {
    const configured = [
      ...this.cfg.sync.onStop.map((t) => ({ domain: t.domain, disk: t.disk, to: t.to, as: 'on stop' })),
      ...this.cfg.sync.jobs.map((j) => ({ domain: j.domain, disk: j.disk, to: j.to, as: `job ${j.name} (${j.calendar})` })),
    ];
    return syncStatus(this.syncRecords, this.log, configured, domain);
  }

  /**
   * At daemon start, once the hook's spool was replayed: the on-stop syncs an earlier virtcbtd
   * owed when it died (killed mid-sync, say) run again for domains still stopped; for a domain
   * running again they are dropped (its next stop brings them back).
   */
  async resumeOnStopSyncs(): Promise<void> {
    const configured = new Set(this.cfg.sync.onStop.map((t) => t.domain));
    for (const domain of await this.syncRecords.onStopOwed()) {
      if (this.onStopRounds.has(domain)) continue;
      // The config no longer syncs it on stop, or it runs again (its next stop brings them back).
      if (!configured.has(domain) || await this.libvirt.isActive(domain).catch(() => true)) {
        await this.syncRecords.clearOnStopOwed(domain).catch(() => undefined);
        continue;
      }
      this.logger.info('on-stop syncs an earlier virtcbtd did not finish run again', { domain });
      await this.syncOnStop(domain).catch((err: unknown) => this.logger.warn('on-stop syncs could not be resumed', { domain, error: (err as Error).message }));
    }
  }

  syncStream(domain: string, req: SyncRequest): AsyncIterable<Record<string, unknown>> {
    return eventStream<SyncEvent>((emit) => this.sync(domain, req, emit));
  }

  /**
   * The used-block map of one disk at an instant, as a sync would use it: a snapshot without a
   * consumer (no rotation), the map read from it (or from the guest during the freeze), released.
   */
  usedMap(domain: string, disk: string, via: 'image' | 'agent' = 'image'): Promise<UsedMap & { disk: string; consistency: string; freezeWindowMs: number | null; image?: UsedMap; agree?: boolean }> {
    return this.tracker.withDomainJob(domain, async (ctx) => {
      const d = ctx.disks.find((k) => k.target === disk);
      if (!d) throw new UsageError(`domain ${domain} has no tracked disk ${disk}`, { domain, hint: `Tracked disks: ${ctx.disks.map((k) => k.target).join(', ') || 'none'}` });
      const base = this.agentFor(ctx);
      if (via === 'agent' && !base) throw new UsageError('the guest agent\'s used map needs the running domain\'s guest agent', { domain, disk, hint: 'Use the image map (the default)' });
      const agent = via === 'agent' ? new AgentMapFreezer(base!, { domainXml: await this.libvirt.xml(domain) }) : base;
      const snap = Snapshot.open(ctx, await this.snapshotHost(ctx.running), { job: `usedmap ${domain} ${disk}`, targets: [disk] });
      let src: NbdEndpoint | undefined;
      try {
        const taken = await snap.take({
          rotate: false, agent, freezeTimeoutMs: this.cfg.agent.freezeTimeoutMs, marker: this.freezeMarkers.for(domain),
          noAgentReason: ctx.running ? 'no usable guest agent: crash-consistent' : 'the domain is stopped',
        }).finally(() => agent?.close());
        // The image's map of the same instant, always (with the agent's: both, and whether they agree).
        const [e] = await snap.exportUnix([disk]);
        src = await NbdEndpoint.open(e!.uri, { timeoutMs: this.cfg.nbd.timeoutMs });
        const image = await usedMapFromImage(src, { label: `domain ${domain}, disk ${disk}` });
        const out = { disk, consistency: taken.consistency, freezeWindowMs: taken.freezeWindowMs };
        if (!(agent instanceof AgentMapFreezer)) return { ...image, ...out };
        if (!agent.last) throw new VirtcbtError('the guest agent froze nothing: no used map', { domain, disk });
        const map = usedMapFromCapture(agent.last, d, agent.last.hostMs);
        const agree = JSON.stringify(map.used) === JSON.stringify(image.used);
        return { ...map, ...out, image, agree };
      } finally {
        await src?.close().catch(() => undefined);
        await snap.release();
      }
    });
  }

  // ---- offloaded scans --------------------------------------------------------------------------

  /**
   * Scans a running domain on a scanner host (see src/scan): snapshot, exports for the scanner's
   * identity only, the job handed over, the verdict awaited, the action on detection, the snapshot
   * torn down. A job like a backup; scans of one domain take turns.
   */
  scan(domain: string, req: ScanRequest, emit: (ev: ScanEvent) => void): Promise<ScanResult> {
    const remote = remoteExportSettings(this.cfg);
    return this.registry.run('scan', domain, { consumer: req.scanner }, (job) => this.turns.run(`${domain}\0scan`, () => {
      let run!: Promise<ScanResult>;
      const held = this.tracker.withDomainJob(domain, (ctx) => {
        job.started();
        job.progress({ step: 'snapshot' });
        let letGo!: () => void;
        const taken = new Promise<void>((r) => { letGo = r; });
        const inQueue = this.queueAgain(domain, ctx.qmp);
        run = (async () => runScan(ctx, req, {
          snapshots: await this.snapshotHost(ctx.running), job: job.id, snapshotTaken: () => { job.progress({ step: 'scanning' }); letGo(); }, inQueue, signal: job.signal,
          runDir: this.cfg.runDir, stateDir: this.cfg.stateDir, agent: this.agentFor(ctx) ?? null,
          freezeTimeoutMs: this.cfg.agent.freezeTimeoutMs, agentTimeoutMs: this.cfg.agent.timeoutMs, freezeMarker: this.freezeMarkers.for(domain),
          remote, scanners: this.cfg.scan.scanners, fullEveryMs: this.cfg.scan.fullEveryHours * 3_600_000, timeoutMs: this.cfg.scan.timeoutSeconds * 1000,
          onDetection: (verdict, scanner) => this.onDetection(domain, verdict, scanner), log: this.logger,
        }, (ev) => emit(ev.type === 'start' ? { ...ev, job: job.id } as ScanEvent : ev)))();
        return Promise.race([taken, run.then(() => undefined, () => undefined)]);
      });
      return (async () => {
        await held;
        const r = await run;
        this.logger.info('scan done', { domain, scanner: r.scanner, full: r.full, infected: r.verdict.infected?.length ?? 0, ms: r.elapsedMs });
        emit({ type: 'result', ...r });
        return r;
      })().catch((err) => {
        this.logger.error('scan failed', { domain, error: (err as Error).message });
        throw err;
      });
    }, { signal: job.signal, waiting: () => job.progress({ step: 'waiting for the running scan of the domain' }) }));
  }

  scanStream(domain: string, req: ScanRequest): AsyncIterable<Record<string, unknown>> {
    return eventStream<ScanEvent>((emit) => this.scan(domain, req, emit));
  }

  /**
   * What a scan does on detection: the quarantine (scan.quarantine, scan.domains) acts and records
   * the verdict; a failed action is reported in the result, the verdict stays recorded.
   */
  private async onDetection(domain: string, verdict: ScanVerdict, scanner: string): Promise<unknown> {
    this.logger.warn('malware found', { domain, scanner, infected: verdict.infected.map((f) => `${f.disk}:${f.path} (${f.signature})`) });
    const v = { scanner, at: new Date().toISOString(), infected: verdict.infected.map((f) => ({ path: f.path, signature: f.signature, disk: f.disk, size: f.size, sha256: f.sha256 })) };
    try {
      return await quarantine(domain, v, actionFor(this.cfg, domain), depsFromConfig(this.cfg, this.libvirt, this.logger));
    } catch (err) {
      if (err instanceof QuarantineActionError) return { error: (err as Error).message };
      throw err;
    }
  }

  // ---- passes with exports ---------------------------------------------------------------------

  private reply(domain: string, consumer: string, changes: DiskChanges[], since: number | null, pass: number, generation: number): PassReply {
    const disks = changes.map(diskChangesReply);
    return { domain, logId: this.log.getPass(pass).logId, consumer, since, upTo: generation, disks, pass, generation };
  }

  /**
   * Begins a pass and exports, per disk, the same point-in-time view a backup reads: read-only,
   * on a unix socket, with the pass's changes as the dirty bitmap `virtcbt-pass-P`. Kept until
   * the pass is committed or aborted.
   */
  beginPassExport(domain: string, consumer: string, o: { exportTo?: string[] } = {}): Promise<PassReply> {
    // Settings checked before anything happens: a pass exported to another host needs snapshot.remote.
    const remote = o.exportTo?.length ? { identities: o.exportTo, settings: remoteExportSettings(this.cfg) } : undefined;
    if (!this.log.listConsumers(domain).some((c) => c.name === consumer)) {
      throw new NotFoundError(`domain ${domain} has no consumer '${consumer}'`, {
        domain, hint: `Add it with \`virtcbt consumer add ${domain} ${consumer}\``,
      });
    }
    return this.registry.run('pass-export', domain, { consumer }, (job) => this.passExport(job, domain, consumer, remote));
  }

  private passExport(job: Job, domain: string, consumer: string, remote?: { identities: string[]; settings: ReturnType<typeof remoteExportSettings> }): Promise<PassReply> {
    // An export for another host that reaches its deadline ends the pass: nobody reads its snapshot any more.
    const onEnd = (pass: number) => (how: string) => {
      if (how !== 'deadline' && how !== 'exited') return;
      this.logger.warn(`the export for another host of pass ${pass} ended (${how}): the pass is aborted`, { domain, pass });
      void this.endPass(domain, pass, 'abort').catch((err) => this.logger.warn('aborting the pass failed', { domain, pass, error: (err as Error).message }));
    };
    let stopped: { images: QsdImage[]; reply: PassReply } | undefined;
    const taken = this.tracker.withDomainJob(domain, async (ctx): Promise<PassReply | undefined> => {
      job.started();
      job.progress({ step: 'snapshot' });
      const since = this.log.listConsumers(domain).find((c) => c.name === consumer)!.last;
      if (!ctx.running) {
        const rot = await ctx.reconciler.rotateAndFold(ctx.disks, { pass: { consumer } });
        const images = ctx.disks.map((d) => {
          const src = ctx.info.disks.find((k) => k.target === d.target)?.source;
          if (!src) throw new VirtcbtError(`disk ${d.target} has no image file`, { domain, disk: d.target });
          return { target: d.target, image: src, readOnly: true };
        });
        stopped = { images, reply: this.reply(domain, consumer, this.log.passChanges(rot.passId!), since, rot.passId!, rot.generation!) };
        return undefined;
      }
      await cleanupDeadSnapshots(ctx.qmp, await this.snapshotHost(true), domain, await this.liveTags(ctx.qmp, domain));
      // Held until the pass is committed or aborted (by its pass id, also across a restart of virtcbtd).
      const snap = Snapshot.open(ctx, await this.snapshotHost(true), { job: 'pass' });
      let passId: number | undefined;
      const agent = this.agentFor(ctx);
      try {
        const taken = await snap.take({
          consumer, agent, freezeTimeoutMs: this.cfg.agent.freezeTimeoutMs,
          noAgentReason: 'the domain has no guest-agent channel: crash-consistent', marker: this.freezeMarkers.for(domain),
        }).finally(() => agent?.close());
        const rot = taken;
        const freeze = taken;
        passId = taken.passId!;
        await snap.setHolder(`pass-${passId}`, passId);
        job.signal.throwIfAborted();
        job.progress({ step: 'export' });
        const changes = this.log.passChanges(passId);
        const refs = new Map<string, { node: string; name: string }>();
        for (const ch of changes) {
          const disk = ctx.disks.find((d) => d.target === ch.target)!;
          refs.set(ch.target, await buildExtentBitmap(ctx.qmp, ctx.nbdSocket, {
            tag: snap.tag, target: ch.target, name: passBitmapName(passId), sizeBytes: disk.sizeBytes, granularity: ch.blockSize, extents: ch.extents,
          }));
        }
        const exported = await snap.exportUnix(snap.disks.map((d) => d.target), { name: (t) => passExportName(passId!, t), bitmaps: (t) => (refs.has(t) ? [refs.get(t)!] : []) });
        this.held.set(passId, { domain, snap });
        const reply = this.reply(domain, consumer, changes, since, passId, rot.generation!);
        reply.exports = exported.map((e) => ({ target: e.target, uri: e.uri, bitmap: passBitmapName(passId!) }));
        if (remote) {
          for (const e of reply.exports) {
            const r = await snap.exportRemote(e.target, { ...remote, runDir: this.cfg.runDir, log: this.logger, onEnd: onEnd(passId) });
            e.remoteUri = r.uri;
          }
        }
        return Object.assign(reply, { consistency: freeze.consistency, freezeWindowMs: freeze.freezeWindowMs, note: freeze.note });
      } catch (err) {
        await snap.release().catch(() => undefined);
        if (passId !== undefined && this.log.getPass(passId).state === 'open') this.log.abortPass(passId);
        throw err;
      }
    });
    return taken.then(async (r) => {
      if (r) return r;
      // Stopped: serve the images read-only from a storage daemon of their own until commit or abort.
      const { images, reply } = stopped!;
      const pass = reply.pass;
      try {
        job.signal.throwIfAborted();
        job.progress({ step: 'export' });
        const { s, release } = await holdStorageDaemon(this.cfg.runDir, domain, images);
        const fronts: RemoteExport[] = [];
        let letGo = false;
        try {
          await ensureNbdServer(s.qmp, s.nbdSocket);
          reply.exports = [];
          for (const d of reply.disks) {
            const node = s.nodes.find((n) => n.target === d.target)!.node;
            const ref = await buildExtentBitmap(s.qmp, s.nbdSocket, {
              tag: 'p', target: d.target, name: passBitmapName(pass), sizeBytes: d.sizeBytes, granularity: d.blockSize, extents: fromPairs(d.extents),
            });
            const name = passExportName(pass, d.target);
            await addReadOnlyExport(s.qmp, { id: name, node, name, bitmaps: [ref] });
            reply.exports.push({ target: d.target, uri: nbdUnixUri(s.nbdSocket, name), bitmap: passBitmapName(pass) });
          }
          if (remote) {
            for (const e of reply.exports) {
              const r = await startRemoteExport({
                source: { socket: s.nbdSocket, exportName: passExportName(pass, e.target) }, tlsDir: remote.settings.tlsDir, identities: remote.identities,
                bind: remote.settings.bind, deadlineMs: remote.settings.deadlineMs, runDir: this.cfg.runDir, domain, disk: e.target, log: this.logger,
              });
              fronts.push(r);
              void r.closed.then((how) => { if (!letGo) onEnd(pass)(how); });
              e.remoteUri = r.uri;
            }
          }
        } catch (err) {
          for (const f of fronts) await f.close().catch(() => undefined);
          await release();
          throw err;
        }
        this.held.set(pass, {
          domain, release: async () => {
            letGo = true;
            for (const f of fronts) await f.close().catch(() => undefined);
            await release();
          },
        });
        return Object.assign(reply, { consistency: 'filesystem', note: 'the domain is stopped: its images are served read-only (it cannot start) until the pass is committed or aborted' });
      } catch (err) {
        if (this.log.getPass(pass).state === 'open') this.log.abortPass(pass);
        throw err;
      }
    });
  }

  /** Commit or abort, then tear down the pass's exports (whichever kind, also after a daemon restart). */
  async endPass(domain: string, id: number, how: 'commit' | 'abort', consumer?: string): Promise<Record<string, unknown>> {
    const r = how === 'commit' ? await this.tracker.commitPass(domain, id, consumer) : await this.tracker.abortPass(domain, id, consumer);
    await this.releasePass(domain, id).catch((err) => this.logger.warn('removing pass exports failed', { domain, pass: id, error: (err as Error).message }));
    return r;
  }

  private async releasePass(domain: string, id: number): Promise<void> {
    const h = this.held.get(id);
    this.held.delete(id);
    if (h?.release) return h.release();
    if (!(await this.libvirt.isActive(domain).catch(() => false))) return;
    await this.tracker.withDomainJob(domain, async (ctx) => {
      if (!ctx.running) return;
      if (h?.snap) return h.snap.release();
      // Held by a virtcbtd that was restarted since: its registry record, or (an older virtcbt's) its exports, name the tag.
      const tags = new Set((await this.snapshots.list()).records.filter((r) => r.domain === domain && r.pass === id).map((r) => r.tag));
      for (const e of await queryBlockExports(ctx.qmp)) {
        const m = PASS_EXPORT.exec(e.id);
        const t = /^vcbt-fl-([a-z0-9]+)-/.exec(e['node-name']);
        if (m && Number(m[1]) === id && t) tags.add(t[1]!);
      }
      for (const tag of tags) {
        await teardownTag(ctx.qmp, this.fleeceDir, domain, tag);
        await this.snapshots.remove(domain, tag);
      }
    });
  }

  /**
   * At daemon start: what the snapshots of a killed virtcbtd left is removed at once, not at the
   * next backup (a copy-before-write filter stays in the guest's write path and its overlay
   * grows): its front ends are killed, and in each running domain every snapshot no open pass
   * holds is torn down, in the domain's queue after the tracker's recovery. Snapshots of passes
   * still open are taken over: a third-party tool may be reading them.
   */
  async start(): Promise<void> {
    // First, before anything else runs: a guest frozen by a killed daemon must not wait.
    await this.thawLeftFrozen();
    const { records, junk } = await this.snapshots.list().catch(() => ({ records: [], junk: [] as string[] }));
    if (junk.length > 0) this.logger.warn('ignoring files in the snapshot registry that are not snapshot records', { dir: this.snapshots.dir, files: junk });
    // Front ends for other hosts die with their virtcbtd (parent-death signal); any left are ended here.
    await sweepStaleRemoteExports(this.cfg.runDir).catch(() => undefined);
    // Syncs a killed virtcbtd was writing: recorded so that the next sync continues, not reseeds.
    await sweepInterruptedSyncs(this.syncRecords, this.log, (msg, fields) => this.logger.warn(msg, fields)).catch((err: unknown) => {
      this.logger.warn('interrupted syncs could not be swept (each is recorded at its target\'s next sync)', { error: (err as Error).message });
    });
    for (const rec of records.filter((r) => r.pid !== process.pid)) {
      for (const pid of rec.frontEnds) await killStaleRemoteExport(pid, this.cfg.runDir).catch(() => undefined);
      const open = rec.pass !== undefined && this.log.openPasses(rec.domain).some((p) => p.id === rec.pass);
      // A pass exported to another host lost its front end with the old virtcbtd: nobody can read
      // it any more, so it is aborted and its snapshot goes like any other dead job's.
      if (open && rec.frontEnds.length > 0) {
        this.log.abortPass(rec.pass!);
        this.logger.warn('aborted a pass whose exports for another host ended with the earlier virtcbtd', { domain: rec.domain, pass: rec.pass });
      } else if (open) {
        await this.snapshots.adopt(rec).catch(() => undefined);
      }
    }
    for (const d of this.log.listDomains()) {
      void (async () => {
        const mine = records.filter((r) => r.domain === d.name && r.pid !== process.pid);
        if (!(await this.libvirt.isActive(d.name).catch(() => false))) {
          // Nothing of a fleecing survives its QEMU; a stopped domain's records are only records now.
          for (const r of mine) if (!(r.pass !== undefined && r.frontEnds.length === 0 && this.log.openPasses(d.name).some((p) => p.id === r.pass))) await this.snapshots.remove(d.name, r.tag);
          return;
        }
        await this.tracker.withDomainJob(d.name, async (ctx) => {
          if (!ctx.running) return;
          const removed = await cleanupDeadSnapshots(ctx.qmp, await this.snapshotHost(true), d.name, await this.liveTags(ctx.qmp, d.name));
          for (const r of mine) if (!(await this.snapshots.heldTags(d.name)).has(r.tag)) await this.snapshots.remove(d.name, r.tag);
          if (removed.length > 0) this.logger.info('removed snapshots left by an earlier daemon', { domain: d.name, tags: removed });
        });
      })().catch((err) => this.logger.warn('cleaning up old snapshots failed', { domain: d.name, error: (err as Error).message }));
    }
  }

  /** Releases every held storage daemon and agent shell (daemon shutdown). */
  async stop(): Promise<void> {
    for (const [domain, e] of this.shells) {
      this.shells.delete(domain);
      clearTimeout(e.idle);
      await e.t.close().catch(() => undefined);
    }
    for (const [id, h] of this.held) {
      this.held.delete(id);
      // A running domain's pass export stays (a tool may be reading it): the next virtcbtd takes it over.
      await h.release?.().catch(() => undefined);
    }
  }
}

/**
 * `emit`, also telling the job its step and bytes (summed over the disks) from the backup's
 * events; the start event carries the job's id, for `virtcbt jobs cancel`.
 */
function jobProgress(job: Job, emit: (ev: BackupEvent) => void): (ev: BackupEvent) => void {
  const disks = new Map<string, { done: number; total: number }>();
  const report = (step: string) => {
    let done = 0;
    let total = 0;
    for (const d of disks.values()) { done += d.done; total += d.total; }
    job.progress({ step, done, total });
  };
  return (ev) => {
    switch (ev.type) {
      case 'start': job.progress({ step: 'snapshot' }); emit({ ...ev, job: job.id } as BackupEvent); return;
      case 'snapshot': job.progress({ step: 'plan' }); break;
      case 'plan':
        for (const d of ev.disks) disks.set(d.target, { done: 0, total: d.changedBytes });
        report('copy');
        break;
      case 'progress': disks.set(ev.disk, { done: ev.done, total: ev.total }); report('copy'); break;
      case 'disk-done': {
        const d = disks.get(ev.disk.target);
        if (d) d.done = d.total;
        report([...disks.values()].every((x) => x.done >= x.total) ? 'manifest' : 'copy');
        break;
      }
      case 'result': job.progress({ step: 'release' }); break;
    }
    emit(ev);
  };
}

/**
 * Runs `job` and yields what it emits as it happens; a failure ends the stream by throwing. With
 * `last`, the stream ends after the event it picks, while the job may go on.
 */
export async function* eventStream<E extends object>(job: (emit: (ev: E) => void) => Promise<unknown>, last?: (ev: E) => boolean): AsyncGenerator<Record<string, unknown>> {
  const queue: E[] = [];
  let wake: (() => void) | undefined;
  let finished = false;
  let failure: unknown;
  const emit = (ev: E) => {
    queue.push(ev);
    wake?.();
  };
  job(emit).then(
    () => { finished = true; wake?.(); },
    (err) => { failure = err ?? new Error('job failed'); finished = true; wake?.(); },
  );
  for (;;) {
    while (queue.length > 0) {
      const ev = queue.shift()!;
      yield ev as Record<string, unknown>;
      if (last?.(ev)) return;
    }
    if (finished) {
      if (failure !== undefined) throw failure;
      return;
    }
    await new Promise<void>((r) => { wake = r; });
    wake = undefined;
  }
}
