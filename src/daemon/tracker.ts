// The daemon's domain manager: which domains are tracked, the QMP session of each running one,
// and the operations the control API offers (enable, reconcile, changes, passes). Every
// operation on a domain runs in that domain's serial queue.
import { chown, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { explainChangeLogError, type ChangeLog } from '../changelog/index.js';
import type { VirtcbtConfig } from '../config/index.js';
import {
  addQmpSocket,
  DomainNotFoundError,
  isLibvirtUnreachable,
  Libvirt,
  removeQmpSocket,
  trackableDisks,
  VirshMonitor,
  type DomainXmlInfo,
} from '../libvirt/index.js';
import { QmpClient, type QmpExecutor } from '../qmp/index.js';
import { releaseNbdServer } from '../snapshot/index.js';
import { allocatedExtents, libvirtDisks, storageDaemonDisks, Reconciler, type DirtyExtentReader, type ReconcileStep, type TrackedDisk } from '../reconciler/index.js';
import { pollUntil } from '../util/abort.js';
import { UsageError, VirtcbtError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type {
  ChangesReply,
  DomainStatusReply,
  EnableReply,
  EnableRequest,
  LibvirtStatus,
  PassReply,
  ReconcileReply,
} from './api-types.js';
import type { HookEvent } from './spool.js';
import { diskChangesReply } from './changes-reply.js';
import { DomainQueues } from './queue.js';
import { withStorageDaemon } from '../qsd/index.js';

/**
 * Where the pid of a qemu-storage-daemon holding a stopped domain's images is kept while a job
 * (fold, backup, sync) runs on them: beside the hook's marker files, so that the hook, when the
 * domain is about to start, ends that daemon instead of letting the start fail on the image lock.
 */
export function holderFile(enabledDir: string, domain: string): string {
  return join(enabledDir, '.holders', domain);
}

interface Session {
  domain: string;
  /** Our dedicated QMP connection, or libvirt's monitor through virsh until the next restart. */
  qmp: QmpExecutor;
  client?: QmpClient;
  info: DomainXmlInfo;
  nbdSocket: string;
}

/** What a job (backup, sync, scan) gets to work on one domain, inside that domain's queue. */
export interface DomainJobContext {
  domain: string;
  running: boolean;
  /** QMP of the running VM, or of a qemu-storage-daemon on the stopped domain's images. */
  qmp: QmpExecutor;
  /** Our own QMP connection when there is one (events, e.g. BLOCK_JOB_*); undefined through virsh or none. */
  client?: QmpClient;
  /** Socket QEMU's NBD server listens on for this domain (QEMU may create it). */
  nbdSocket: string;
  disks: TrackedDisk[];
  reconciler: Reconciler;
  /** The persistent (stopped) or live (running) domain XML, parsed. */
  info: DomainXmlInfo;
  log: ChangeLog;
}

export interface TrackerOptions {
  readDirty: DirtyExtentReader;
  beforeStep?: (step: ReconcileStep, domain: string, target: string) => void | Promise<void>;
}

export class Tracker {
  private sessions = new Map<string, Session>();
  private lastError = new Map<string, string>();
  private lastFold = new Map<string, string>();
  readonly queues = new DomainQueues();
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly cfg: VirtcbtConfig,
    private readonly log: ChangeLog,
    private readonly libvirt: Libvirt,
    private readonly logger: Logger,
    private readonly opts: TrackerOptions,
  ) {}

  // ---- life cycle ----------------------------------------------------------------------------

  /** Recovers every tracked domain: connects to the running ones and reconciles them. */
  async start(): Promise<void> {
    await mkdir(this.cfg.daemon.enabledDir, { recursive: true });
    await mkdir(this.cfg.runDir, { recursive: true });
    for (const d of this.log.listDomains()) {
      void this.queues.run(d.name, async () => {
        try {
          await this.writeMarker(d.name);
          if (await this.libvirt.isActive(d.name)) await this.connectAndReconcile(d.name);
        } catch (err) {
          this.fail(d.name, 'recovery', err);
        }
      });
    }
    this.timer = setInterval(() => this.periodic(), this.cfg.reconcile.intervalSeconds * 1000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.queues.idle();
    for (const s of this.sessions.values()) await s.client?.close();
    this.sessions.clear();
  }

  private periodic(): void {
    for (const name of this.sessions.keys()) {
      void this.queues.run(name, () => this.reconcileNow(name)).catch((err) => this.fail(name, 'periodic reconcile', err));
    }
  }

  /**
   * libvirt answers again after an outage (libvirtd restarted): domains whose recovery failed
   * meanwhile are connected now, without waiting for a hook event or the next periodic fold.
   * Sessions on our own QMP sockets never noticed: QEMU kept running and so did the socket.
   */
  onLibvirtReconnected(): void {
    for (const d of this.log.listDomains()) {
      if (this.sessions.has(d.name)) continue;
      void this.queues.run(d.name, async () => {
        if (!this.sessions.has(d.name) && await this.libvirt.isActive(d.name)) await this.connectAndReconcile(d.name);
      }).catch((err) => this.fail(d.name, 'reconnect after libvirt came back', err));
    }
  }

  private fail(domain: string, what: string, err: unknown): void {
    const msg = errorMessage(explainChangeLogError(err, this.log.path));
    this.lastError.set(domain, `${what}: ${msg}`);
    this.logger.error(`${what} failed`, { domain, error: msg });
  }

  // ---- hook events ---------------------------------------------------------------------------

  async onHookEvent(ev: HookEvent): Promise<void> {
    if (!this.isTracked(ev.domain)) return;
    this.logger.info('hook event', { domain: ev.domain, op: ev.op, sub: ev.sub });
    await this.queues.run(ev.domain, async () => {
      switch (ev.op) {
        case 'started':
        case 'reconnect':
          // A start replayed from the spool after the domain stopped: nothing to connect to (waiting
          // out the QMP deadline would hold the daemon's start for 30 s). A domain that is gone
          // fails the event (the spool moves it aside); libvirt unreachable: try as before. A
          // reconnect (libvirtd restarted) is for a running domain and may come while libvirt is down.
          if (ev.op === 'started' && !(await this.libvirt.isActive(ev.domain).catch((err: unknown) => { if (err instanceof DomainNotFoundError) throw err; return true; }))) {
            this.logger.info('hook event for a domain no longer running: nothing to connect to', { domain: ev.domain, op: ev.op });
            break;
          }
          await this.connectAndReconcile(ev.domain);
          break;
        case 'migrate':
          // Arriving from another host: this host's log knows nothing of the writes made there.
          for (const d of this.log.listDisks(ev.domain)) this.log.raiseFloor(ev.domain, d.target, 'domain migrated in from another host');
          break;
        case 'stopped':
        case 'release':
          await this.closeSession(ev.domain);
          break;
        default:
          break;
      }
    });
  }

  // ---- sessions ------------------------------------------------------------------------------

  qmpSocketPath(uuid: string): string {
    return join(this.cfg.qmpSocketDir, `${uuid}.qmp`);
  }

  private nbdSocketPath(uuid: string): string {
    // QEMU (as libvirt-qemu) binds this socket: it must live where that user may create files.
    return join(this.cfg.qmpSocketDir, `${uuid}.nbd`);
  }

  private async openSession(domain: string): Promise<Session> {
    const existing = this.sessions.get(domain);
    if (existing && (!existing.client || existing.client.isOpen)) return existing;
    const info = await this.libvirt.info(domain);
    const path = this.qmpSocketPath(info.uuid);
    let session: Session;
    if (info.qmpSockets.includes(path)) {
      const client = await pollUntil(
        () => QmpClient.connect(path, { domain, timeoutMs: this.cfg.qmp.timeoutMs, commandTimeoutMs: this.cfg.qmp.timeoutMs }).catch(() => undefined),
        `connecting to ${path}`,
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      void client.closed.then((reason) => {
        if (this.sessions.get(domain)?.client === client) this.sessions.delete(domain);
        if (reason) this.logger.info('QMP connection closed', { domain, reason: reason.message });
      });
      session = { domain, qmp: client, client, info, nbdSocket: this.nbdSocketPath(info.uuid) };
    } else {
      // Enabled while running: QEMU has no virtcbt socket until it restarts; use libvirt's monitor.
      session = { domain, qmp: new VirshMonitor(this.libvirt.uri, domain), info, nbdSocket: this.nbdSocketPath(info.uuid) };
    }
    this.sessions.set(domain, session);
    return session;
  }

  private async closeSession(domain: string): Promise<void> {
    const s = this.sessions.get(domain);
    this.sessions.delete(domain);
    await s?.client?.close();
  }

  private async connectAndReconcile(domain: string): Promise<ReconcileReply> {
    await this.openSession(domain);
    return this.reconcileNow(domain);
  }

  // ---- reconcile -----------------------------------------------------------------------------

  private reconciler(domain: string, qmp: QmpExecutor, nbdSocket: string): Reconciler {
    return new Reconciler({
      log: this.log,
      qmp,
      domain,
      nbdSocket,
      readDirty: this.opts.readDirty,
      granularity: this.cfg.reconcile.granularity,
      beforeStep: this.opts.beforeStep ? (step, target) => this.opts.beforeStep!(step, domain, target) : undefined,
    });
  }

  /**
   * Runs `fn` with a reconciler and the tracked disks: through the live session when the domain
   * runs, else through a qemu-storage-daemon on its images.
   */
  private async withDisks<T>(domain: string, fn: (r: Reconciler, disks: TrackedDisk[]) => Promise<T>): Promise<T> {
    return this.withContext(domain, (c) => fn(c.reconciler, c.disks));
  }

  /**
   * Runs `fn` with everything a job needs on the domain: through the live session when the domain
   * runs, else through a qemu-storage-daemon on its images (which quits cleanly afterwards).
   */
  private async withContext<T>(domain: string, fn: (c: DomainJobContext) => Promise<T>): Promise<T> {
    const targets = this.log.listDisks(domain).map((d) => d.target);
    if (await this.libvirt.isActive(domain)) {
      const s = await this.openSession(domain);
      try {
        const disks = await libvirtDisks(s.qmp, s.info, targets);
        return await fn({
          domain, running: true, qmp: s.qmp, client: s.client, nbdSocket: s.nbdSocket, disks,
          reconciler: this.reconciler(domain, s.qmp, s.nbdSocket), info: s.info, log: this.log,
        });
      } finally {
        // QEMU's one NBD server goes back once the job's exports are gone (see nbd-server.ts).
        await releaseNbdServer(s.qmp).catch((err: unknown) =>
          this.logger.warn('could not stop QEMU\'s NBD server after the job', { domain, error: errorMessage(err) }));
      }
    }
    const info = await this.libvirt.info(domain, { inactive: true });
    const images = targets.map((target) => {
      const d = info.disks.find((k) => k.target === target);
      if (!d?.source) throw new VirtcbtError(`disk ${target} has no image file`, { domain, disk: target });
      return { target, image: d.source };
    });
    return withStorageDaemon(this.cfg.runDir, domain, images, async (s) => fn({
      domain, running: false, qmp: s.qmp, client: s.qmp, nbdSocket: s.nbdSocket,
      disks: await storageDaemonDisks(s.qmp, s.nodes), reconciler: this.reconciler(domain, s.qmp, s.nbdSocket), info, log: this.log,
    }), {
      holderFile: holderFile(this.cfg.daemon.enabledDir, domain),
      onCrash: (err) => this.logger.warn('qemu-storage-daemon crashed during the job; running it once more on a fresh one', { domain, error: err.message }),
    });
  }

  /**
   * Runs a job (backup, sync, scan) on a tracked domain in its serial queue, so that it never
   * overlaps a fold or another job on the same domain.
   */
  withDomainJob<T>(domain: string, fn: (c: DomainJobContext) => Promise<T>): Promise<T> {
    this.requireTracked(domain);
    return this.queues.run(domain, () => this.withContext(domain, fn));
  }

  private async reconcileNow(domain: string): Promise<ReconcileReply> {
    const t0 = Date.now();
    const r = await this.withDisks(domain, (rec, disks) => rec.rotateAndFold(disks));
    this.lastFold.set(domain, new Date().toISOString());
    this.lastError.delete(domain);
    for (const d of r.disks) {
      if (d.floorRaised) this.logger.warn('floor raised: next pass is full for every consumer', { domain, disk: d.target, reason: d.floorRaised });
    }
    return { domain, disks: r.disks, elapsedMs: Date.now() - t0 };
  }

  /** Brings log and QEMU into agreement without rotating (enable, connect). */
  private async recoverNow(domain: string): Promise<void> {
    await this.withDisks(domain, async (rec, disks) => {
      for (const d of disks) {
        const r = await rec.recover(d);
        if (r.floorRaised) this.logger.info('floor raised', { domain, disk: d.target, reason: r.floorRaised });
      }
    });
  }

  reconcile(domain: string): Promise<ReconcileReply> {
    this.requireTracked(domain);
    return this.queues.run(domain, () => this.reconcileNow(domain));
  }

  // ---- consumers, changes, passes ------------------------------------------------------------

  private isTracked(domain: string): boolean {
    return this.log.listDomains().some((d) => d.name === domain);
  }

  private requireTracked(domain: string): void {
    if (!this.isTracked(domain)) {
      throw new DomainNotFoundError(`domain ${domain} is not tracked by virtcbt`, { domain, hint: `Run \`virtcbt enable ${domain}\` first` });
    }
  }

  private consumer(domain: string, name: string) {
    const c = this.log.listConsumers(domain).find((k) => k.name === name);
    if (!c) {
      throw new DomainNotFoundError(`domain ${domain} has no consumer '${name}'`, {
        domain, hint: `Add it with \`virtcbt consumer add ${domain} ${name}\` (its first pass is full)`,
      });
    }
    return c;
  }

  addConsumer(domain: string, name: string) {
    this.requireTracked(domain);
    return this.queues.run(domain, async () => this.log.addConsumer(domain, name));
  }

  removeConsumer(domain: string, name: string) {
    this.requireTracked(domain);
    return this.queues.run(domain, async () => this.log.removeConsumer(domain, name));
  }

  listConsumers(domain: string) {
    this.requireTracked(domain);
    return { consumers: this.log.listConsumers(domain) };
  }

  private toReply(domain: string, consumer: string, disks: ReturnType<ChangeLog['changes']>, since: number | null, upTo: number, logId: string): ChangesReply {
    return { domain, logId, consumer, since, upTo, disks: disks.map(diskChangesReply) };
  }

  /** Full passes list only allocated extents: what the backing chain leaves unallocated reads as zeros. */
  private async narrowFull(c: DomainJobContext, disks: ReturnType<ChangeLog['changes']>): Promise<ReturnType<ChangeLog['changes']>> {
    return Promise.all(disks.map(async (d) => {
      const disk = c.disks.find((k) => k.target === d.target);
      if (!d.full || !disk) return d;
      const alloc = await allocatedExtents(c.qmp, c.nbdSocket, disk, { timeoutMs: this.cfg.nbd.timeoutMs });
      return { ...d, extents: alloc };
    }));
  }

  changes(domain: string, consumer: string): Promise<ChangesReply> {
    this.requireTracked(domain);
    return this.queues.run(domain, async () => {
      const c = this.consumer(domain, consumer);
      return this.withContext(domain, async (ctx) => {
        await ctx.reconciler.rotateAndFold(ctx.disks);
        this.lastFold.set(domain, new Date().toISOString());
        const upTo = this.log.currentGeneration(domain);
        return this.toReply(domain, consumer, await this.narrowFull(ctx, this.log.changes(domain, consumer)), c.last, upTo, this.log.logId(domain));
      });
    });
  }

  beginPass(domain: string, consumer: string): Promise<PassReply> {
    this.requireTracked(domain);
    return this.queues.run(domain, async () => {
      const c = this.consumer(domain, consumer);
      return this.withContext(domain, async (ctx) => {
        const r = await ctx.reconciler.rotateAndFold(ctx.disks, { pass: { consumer } });
        this.lastFold.set(domain, new Date().toISOString());
        const disks = await this.narrowFull(ctx, this.log.passChanges(r.passId!));
        return { ...this.toReply(domain, consumer, disks, c.last, r.generation!, this.log.getPass(r.passId!).logId), pass: r.passId!, generation: r.generation! };
      });
    });
  }

  commitPass(domain: string, id: number, consumer?: string) {
    this.requireTracked(domain);
    return this.queues.run(domain, async () => {
      this.requirePassOf(domain, id, consumer);
      this.log.commitPass(id);
      return { pass: id, committed: true };
    });
  }

  abortPass(domain: string, id: number, consumer?: string) {
    this.requireTracked(domain);
    return this.queues.run(domain, async () => {
      this.requirePassOf(domain, id, consumer);
      this.log.abortPass(id);
      return { pass: id, aborted: true };
    });
  }

  /** Pass ids are global: one of another domain or consumer (a typo, a stale id) must not move that consumer. */
  private requirePassOf(domain: string, id: number, consumer?: string): void {
    const p = this.log.getPass(id);
    if (p.domain === domain && (consumer === undefined || p.consumer === consumer)) return;
    throw new UsageError(`pass ${id} is a pass of consumer ${p.consumer} of ${p.domain}, not of ${consumer === undefined ? '' : `consumer ${consumer} of `}${domain}: nothing was changed`, {
      domain, hint: `Use the pass id \`virtcbt pass begin ${domain}${consumer === undefined ? '' : ` --consumer ${consumer}`}\` printed`,
    });
  }

  // ---- status --------------------------------------------------------------------------------

  async status(domain: string): Promise<DomainStatusReply> {
    this.requireTracked(domain);
    const st = this.log.status(domain);
    let state = 'unknown';
    let libvirtError: string | undefined;
    try {
      state = await this.libvirt.state(domain);
    } catch (err) {
      state = `unknown (${errorMessage(err)})`;
      if (isLibvirtUnreachable(err)) libvirtError = errorMessage(err);
    }
    const s = this.sessions.get(domain);
    return {
      domain,
      state,
      libvirtError,
      connected: Boolean(s?.client && s.client.isOpen),
      pendingRestart: s ? !s.client : undefined,
      logId: st.logId,
      generation: st.generation,
      lastFoldAt: this.lastFold.get(domain) ?? st.lastFoldAt ?? null,
      lastError: this.lastError.get(domain) ?? null,
      disks: st.disks.map((d) => ({
        target: d.target,
        blockSize: d.blockSize,
        sizeBytes: d.sizeBytes,
        floor: d.floor,
        floorReason: d.floorReason ?? null,
        activeBitmap: st.bitmaps.find((b) => b.target === d.target && b.state === 'active')?.name ?? null,
        bitmaps: st.bitmaps.filter((b) => b.target === d.target).map((b) => ({ name: b.name, state: b.state, generation: b.generation })),
      })),
      consumers: st.consumers,
      openPasses: st.openPasses,
    };
  }

  /** Whether libvirt answers now (a broken connection is reopened first): `status` fails when not. */
  async libvirtStatus(): Promise<LibvirtStatus> {
    try {
      await this.libvirt.check();
      return { uri: this.libvirt.uri, reachable: true };
    } catch (err) {
      return { uri: this.libvirt.uri, reachable: false, error: errorMessage(err) };
    }
  }

  async statusAll(): Promise<DomainStatusReply[]> {
    return Promise.all(this.log.listDomains().map((d) => this.status(d.name)));
  }

  // ---- enable / disable ----------------------------------------------------------------------

  private async writeMarker(domain: string): Promise<void> {
    await writeFile(join(this.cfg.daemon.enabledDir, domain), `${this.cfg.daemon.spoolDir}\n`);
  }

  enable(domain: string, req: EnableRequest): Promise<EnableReply> {
    return this.queues.run(domain, () => this.enableNow(domain, req));
  }

  private async enableNow(domain: string, req: EnableRequest): Promise<EnableReply> {
    const info = await this.libvirt.info(domain, { inactive: true });
    if (!(await this.libvirt.isPersistent(domain))) {
      throw new UsageError('transient domains cannot be tracked: virtcbt adds its QMP socket to the persistent definition', {
        domain, hint: 'Define the domain persistently (virsh define) and enable it again',
      });
    }
    const exclude = new Set(req.exclude ?? []);
    const all = trackableDisks(info);
    for (const x of exclude) {
      if (!all.some((d) => d.target === x)) throw new UsageError(`--exclude ${x}: the domain has no such disk (it has ${all.map((d) => d.target).join(', ') || 'none'})`, { domain });
    }
    const disks = all.filter((d) => !exclude.has(d.target));
    const notQcow2 = disks.filter((d) => d.format !== 'qcow2');
    if (notQcow2.length > 0) {
      throw new UsageError(
        `${notQcow2.map((d) => `${d.target} is ${d.format ?? 'of unknown format'}`).join(', ')}: persistent dirty bitmaps need qcow2 disks`,
        { domain, disk: notQcow2[0].target, hint: `Convert with \`qemu-img convert -O qcow2\`, or leave ${notQcow2.length > 1 ? 'them' : 'it'} out with ${notQcow2.map((d) => `--exclude ${d.target}`).join(' ')}` },
      );
    }
    if (disks.length === 0) {
      throw new UsageError('the domain has no writable qcow2 disk to track', { domain, hint: 'virtcbt tracks qcow2 disks; convert a raw disk with `qemu-img convert -O qcow2`' });
    }
    if (!info.hasAgentChannel && !req.noAgent) {
      throw new UsageError('the domain has no qemu-guest-agent channel: backups could not freeze its filesystems', {
        domain,
        hint: "Add <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel> and install qemu-guest-agent in the guest, or pass --no-agent",
      });
    }
    const running = await this.libvirt.isActive(domain);
    const sizes = await Promise.all(disks.map((d) => this.diskSize(domain, d.target)));
    const notes: string[] = [];

    // Offline: create the bitmaps in the images now (nothing else may have them open).
    const qmpPath = this.qmpSocketPath(info.uuid);
    await mkdir(this.cfg.qmpSocketDir, { recursive: true, mode: 0o750 });
    await this.chownToQemu(this.cfg.qmpSocketDir);
    const xml = await this.libvirt.xml(domain, { inactive: true });
    const newXml = addQmpSocket(xml, qmpPath);
    if (newXml !== xml) await this.libvirt.define(newXml, domain);

    this.log.ensureDomain(domain);
    disks.forEach((d, i) => this.log.upsertDisk(domain, d.target, { blockSize: this.cfg.reconcile.granularity, sizeBytes: sizes[i] }));
    await this.writeMarker(domain);
    if (running) {
      notes.push('the domain is running: virtcbt uses libvirt\'s monitor until the next restart, then its own QMP socket (libvirt logs "tainted: custom-monitor" meanwhile)');
      await this.openSession(domain);
    }
    await this.recoverNow(domain);
    notes.push(`libvirt will log the domain as "tainted: custom-argv" because of virtcbt's QMP socket ${qmpPath}`);
    return { domain, disks: disks.map((d, i) => ({ target: d.target, source: d.source, sizeBytes: sizes[i] })), qmpSocket: qmpPath, running, notes };
  }

  private async diskSize(domain: string, target: string): Promise<number> {
    const out = await execa('virsh', ['-c', this.libvirt.uri, 'domblkinfo', domain, target], { reject: false });
    const m = /^Capacity:\s+(\d+)/m.exec(out.stdout);
    if (!m) throw new VirtcbtError(`cannot read the size of disk ${target}: ${out.stderr.trim() || 'virsh domblkinfo failed'}`, { domain, disk: target });
    return Number(m[1]);
  }

  private async chownToQemu(dir: string): Promise<void> {
    const r = await execa('id', ['-u', 'libvirt-qemu'], { reject: false });
    if (r.exitCode === 0) await chown(dir, Number(r.stdout), 0).catch(() => undefined);
  }

  disable(domain: string): Promise<{ notes: string[] }> {
    this.requireTracked(domain);
    return this.queues.run(domain, async () => {
      const notes: string[] = [];
      try {
        await this.withDisks(domain, (rec, disks) => rec.removeAll(disks));
      } catch (err) {
        notes.push(`could not remove virtcbt's bitmaps: ${errorMessage(err)} (they are harmless; remove with qemu-img bitmap --remove)`);
      }
      await this.closeSession(domain);
      try {
        const info = await this.libvirt.info(domain, { inactive: true });
        const xml = await this.libvirt.xml(domain, { inactive: true });
        const out = removeQmpSocket(xml, this.qmpSocketPath(info.uuid));
        if (out !== xml) await this.libvirt.define(out, domain);
        if (await this.libvirt.isActive(domain)) notes.push('the QMP socket goes away at the next restart');
      } catch (err) {
        if (!(err instanceof DomainNotFoundError)) throw err;
      }
      this.log.removeDomain(domain);
      await rm(join(this.cfg.daemon.enabledDir, domain), { force: true });
      return { notes };
    });
  }
}

