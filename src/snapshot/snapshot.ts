// A point-in-time view of some or all disks of a domain, as one handle: backups, pass exports,
// syncs and scans all take theirs here. Running domain: overlays attach while the guest freezes,
// then one transaction rotates the bitmaps (and may begin a consumer's pass) and starts fleecing,
// and the guest thaws (crash-consistent without an agent, and said so). Stopped domain: the images
// themselves, through the qemu-storage-daemon the job already has on them (held read-only by the
// domain's job for as long as the snapshot lives). The handle exports disks on QEMU's private
// unix NBD server, and for another host through a TLS front end (remote-export.ts). It is in the
// registry (registry.ts) from before its first node exists until after its last one is gone.
import { transaction, type QmpExecutor } from '../qmp/index.js';
import type { GuestAgent } from '../guest/index.js';
import type { Reconciler, RotateResult, TrackedDisk } from '../reconciler/index.js';
import type { BitmapRef } from '../qmp/index.js';
import { VirtcbtError, errorMessage } from '../util/errors.js';
import { Fleece, fleeceNodeName, fleeceTags, teardownTag } from './fleece.js';
import { rotateFrozen, type FreezeMarker, type FreezeOutcome } from './freeze.js';
import { addReadOnlyExport, ensureNbdServer, nbdUnixUri, removeExport } from './nbd-server.js';
import { SnapshotRegistry, type SnapshotRecord } from './registry.js';
import { startRemoteExport, type RemoteExport, type RemoteExportEnd } from './remote-export.js';
import type { Logger } from '../util/log.js';

/** What a snapshot needs of the domain (virtcbtd's DomainJobContext has all of it). */
export interface SnapshotContext {
  domain: string;
  running: boolean;
  qmp: QmpExecutor;
  nbdSocket: string;
  disks: TrackedDisk[];
  reconciler: Reconciler;
}

/** What the daemon provides every snapshot. */
export interface SnapshotHost {
  registry: SnapshotRegistry;
  /** Directory for fleecing overlays (QEMU's user must be able to open files there). */
  fleeceDir: string;
  fleeceOwner?: { uid: number; gid: number };
}

export interface OpenOptions {
  /** The job holding the snapshot (`virtcbt jobs`), or `pass-N`. */
  job: string;
  /** Only these disks (default: all the context's). */
  targets?: string[];
  /** Tag naming the snapshot's nodes (default: random). */
  tag?: string;
  pass?: number;
}

export interface TakeOptions {
  /** Begin this consumer's pass in the snapshot's transaction (its changes end at this instant). */
  consumer?: string;
  /** Rotate the bitmaps in the transaction (default true; always with a consumer). */
  rotate?: boolean;
  /** The agent to freeze through, known to answer; without it the snapshot is crash-consistent. */
  agent?: GuestAgent;
  /** Why there is no agent (said in the outcome). */
  noAgentReason?: string;
  freezeTimeoutMs: number;
  /** Records the freeze for a virtcbtd killed while the guest is frozen (see freeze.ts). */
  marker?: FreezeMarker;
  /** Send the freeze before the transaction is prepared (see FreezeOptions.early). */
  early?: boolean;
  /** Fault injection: with the guest frozen, after the transaction. */
  whileFrozen?: () => void | Promise<void>;
  /** Waited for just before the transaction runs (e.g. a marker that must be durable first). */
  beforeTransaction?: () => Promise<unknown>;
  /** Leave the folded bitmaps in QEMU for Reconciler.removeFolded (removal flushes the image). */
  keepFolded?: boolean;
  /**
   * The fold reads the frozen bitmaps through this snapshot's own exports (which the caller needs
   * anyway) rather than one export each: the disks whose bitmaps recorded something are exported
   * during the take, each offering its frozen bitmap as a meta context.
   */
  foldThroughExports?: boolean;
  /** The job's cancel: honoured up to the transaction (a freeze already sent is always thawed). */
  signal?: AbortSignal;
}

export interface TakeResult {
  /** ISO time of the instant. */
  time: string;
  passId?: number;
  generation?: number;
  consistency: FreezeOutcome['consistency'];
  note?: string;
  freezeWindowMs: number | null;
  freezeCallMs?: number;
  rot: RotateResult;
}

export type { RemoteExport, RemoteExportEnd };

export interface UnixExport {
  target: string;
  exportName: string;
  uri: string;
}

export interface ExportRequest {
  /** Export name per disk (default: the snapshot's node name). */
  name?: (target: string) => string;
  /** Bitmaps to offer as `qemu:dirty-bitmap:NAME` contexts, per disk. */
  bitmaps?: (target: string) => BitmapRef[];
}

export interface RemoteExportRequest {
  /** Client identities let in (exact subject DNs, see remote-export.ts). */
  identities: readonly string[];
  /** From the config's snapshot.remote (remoteExportSettings). */
  settings: { bind: { host: string; port: number }; tlsDir: string; deadlineMs: number };
  /** Where the front end's pid file lives (virtcbtd's run directory). */
  runDir: string;
  log?: Logger;
  /** Called when the export ends by itself (its deadline, its front end exiting), not by release. */
  onEnd?: (how: RemoteExportEnd) => void;
}

export class Snapshot implements AsyncDisposable {
  private readonly fleece?: Fleece;
  private readonly exports = new Map<string, UnixExport>();
  /** Export ids on a stopped domain's storage daemon (the disk nodes exported directly). */
  private readonly direct: string[] = [];
  private readonly closers: (() => Promise<void>)[] = [];
  private readonly ready: Promise<void>;
  private released?: Promise<void>;
  private record?: SnapshotRecord;
  readonly disks: TrackedDisk[];
  taken?: TakeResult;

  private constructor(readonly ctx: SnapshotContext, private readonly host: SnapshotHost, readonly tag: string, opts: OpenOptions) {
    this.disks = opts.targets ? ctx.disks.filter((d) => opts.targets!.includes(d.target)) : ctx.disks;
    if (opts.targets) {
      const unknown = opts.targets.filter((t) => !ctx.disks.some((d) => d.target === t));
      if (unknown.length > 0) throw new VirtcbtError(`the domain has no tracked disk ${unknown.join(', ')}`, { domain: ctx.domain, hint: 'Run `virtcbt status DOMAIN` for its disks' });
    }
    this.fleece = ctx.running
      ? Fleece.plan({ qmp: ctx.qmp, domain: ctx.domain, dir: host.fleeceDir, owner: host.fleeceOwner, tag }, this.disks)
      : undefined;
    // In the registry before anything of it exists in QEMU, so that a kill at any later point is found.
    this.ready = (async () => {
      this.record = await host.registry.add({ tag, domain: ctx.domain, job: opts.job, pass: opts.pass });
      await this.fleece?.attach();
    })();
    this.ready.catch(() => undefined);
  }

  /**
   * Starts a snapshot: records it and (running domain) attaches its overlays, in the background;
   * `take` waits for that only at its transaction, so the caller's own preparation (an agent
   * ping, the repository) overlaps it.
   */
  static open(ctx: SnapshotContext, host: SnapshotHost, opts: OpenOptions): Snapshot {
    return new Snapshot(ctx, host, opts.tag ?? SnapshotRegistry.newTag(), opts);
  }

  get domain(): string {
    return this.ctx.domain;
  }

  /**
   * Takes the instant: freeze (when an agent is given), one transaction with the rotation (and the
   * pass) and the start of fleecing, thaw; then the fold of the frozen bitmaps.
   */
  async take(o: TakeOptions): Promise<TakeResult> {
    if (this.taken) throw new VirtcbtError('the snapshot was taken already', { domain: this.domain });
    o.signal?.throwIfAborted();
    const { ctx } = this;
    const rotate = o.rotate !== false || o.consumer !== undefined;
    const inTransaction = (around?: (run: () => Promise<void>) => Promise<void>) => (run: () => Promise<void>) => {
      const go = async () => {
        await this.ready;
        await o.beforeTransaction?.();
        // Not begun once cancelled: rotateFrozen thaws the guest when this throws.
        o.signal?.throwIfAborted();
        await run();
      };
      return around ? around(go) : go();
    };
    const { rot, freeze } = await rotateFrozen(
      (around) => (rotate
        // A pass covers the whole domain: every disk's bitmap rotates, only the snapshot's disks are fleeced.
        ? ctx.reconciler.rotateAndFold(ctx.disks, {
          pass: o.consumer !== undefined ? { consumer: o.consumer } : undefined,
          extra: this.fleece?.actions(),
          keepFolded: o.keepFolded,
          exportFrozen: o.foldThroughExports
            ? async (frozen) => {
              // The others (disks outside the snapshot) are folded through exports of their own.
              const mine = frozen.filter((f) => this.disks.some((d) => d.target === f.target));
              const out = await this.exportUnix(mine.map((f) => f.target), { bitmaps: (t) => mine.filter((f) => f.target === t).map((f) => ({ node: f.node, name: f.bitmap })) });
              return new Map(out.map((e) => [e.target, e.uri]));
            }
            : undefined,
          aroundTransaction: inTransaction(around),
        })
        : inTransaction(around)(async () => { if (this.fleece) await transaction(ctx.qmp, this.fleece.actions()); }).then((): RotateResult => ({ disks: [] }))),
      ctx.running ? o.agent : undefined,
      {
        freezeTimeoutMs: o.freezeTimeoutMs, noAgentReason: o.noAgentReason, marker: o.marker,
        whileFrozen: o.whileFrozen, early: o.early,
      },
    );
    this.taken = {
      time: new Date().toISOString(), passId: rot.passId, generation: rot.generation, rot,
      consistency: ctx.running ? freeze.consistency : 'filesystem',
      note: ctx.running ? freeze.note : undefined,
      freezeWindowMs: freeze.freezeWindowMs, freezeCallMs: freeze.freezeCallMs,
    };
    return this.taken;
  }

  /**
   * Read-only exports of `targets` on QEMU's private unix NBD server (a disk exported already
   * keeps its export). Call after `take`.
   */
  async exportUnix(targets: string[], req: ExportRequest = {}): Promise<UnixExport[]> {
    const missing = targets.filter((t) => !this.exports.has(t));
    if (missing.length > 0) {
      if (this.fleece) {
        for (const e of await this.fleece.export(this.ctx.nbdSocket, { targets: missing, name: req.name, bitmaps: req.bitmaps })) {
          this.exports.set(e.target, { target: e.target, exportName: e.exportName, uri: e.uri });
        }
      } else {
        await ensureNbdServer(this.ctx.qmp, this.ctx.nbdSocket);
        for (const d of this.disks.filter((k) => missing.includes(k.target))) {
          // Named by the tag like a fleecing node: the clean-up of a killed job finds it the same way.
          const id = fleeceNodeName(this.tag, d.target);
          const exportName = req.name?.(d.target) ?? id;
          this.direct.push(id);
          await addReadOnlyExport(this.ctx.qmp, { id, node: d.node, name: exportName, bitmaps: req.bitmaps?.(d.target) });
          this.exports.set(d.target, { target: d.target, exportName, uri: nbdUnixUri(this.ctx.nbdSocket, exportName) });
        }
      }
    }
    return targets.map((t) => {
      const e = this.exports.get(t);
      if (!e) throw new VirtcbtError(`the snapshot has no disk ${t}`, { domain: this.domain, disk: t });
      return e;
    });
  }

  /**
   * An export of one disk for another host: read-only, NBD over TLS with a client certificate of a
   * named identity, a random export name, bound to the configured address, torn down with the
   * snapshot or at its deadline. A front end (remote-export.ts) serves the private unix export, so
   * QEMU's own NBD server, and the folds and backups on it, never pay for TLS.
   */
  async exportRemote(target: string, req: RemoteExportRequest): Promise<RemoteExport> {
    const [unix] = await this.exportUnix([target]);
    const socket = new URL(unix!.uri).searchParams.get('socket')!;
    let released = false;
    const remote = await startRemoteExport({
      source: { socket, exportName: unix!.exportName }, tlsDir: req.settings.tlsDir, identities: req.identities,
      bind: req.settings.bind, deadlineMs: req.settings.deadlineMs, runDir: req.runDir, domain: this.domain, disk: target, log: req.log,
    });
    // Before the unix export goes: its readers see a closed connection, not I/O errors.
    this.onRelease(async () => {
      released = true;
      await remote.close();
    });
    void remote.closed.then((how) => { if (!released) req.onEnd?.(how); });
    await this.recordProcess(remote.pid);
    return remote;
  }

  /** The node a disk's point-in-time view is read from (for extra exports, e.g. a pass's bitmap). */
  nodeOf(target: string): string {
    if (this.fleece) return this.fleece.nodeOf(target);
    const d = this.disks.find((k) => k.target === target);
    if (!d) throw new VirtcbtError(`the snapshot has no disk ${target}`, { domain: this.domain, disk: target });
    return d.node;
  }

  /** Says who holds the snapshot now (a pass export: its pass, once the transaction began it). */
  async setHolder(job: string, pass?: number): Promise<void> {
    await this.ready;
    this.record = { ...this.record!, job, pass };
    await this.host.registry.write(this.record);
  }

  /** Runs `close` when the snapshot is released (before its nodes go): e.g. a front end reading an export. */
  onRelease(close: () => Promise<void>): void {
    this.closers.push(close);
  }

  /** Records a process that serves the snapshot (killed by a restarted virtcbtd if this one dies). */
  async recordProcess(pid: number): Promise<void> {
    await this.ready.catch(() => undefined);
    if (!this.record) return;
    this.record = { ...this.record, frontEnds: [...this.record.frontEnds, pid] };
    await this.host.registry.write(this.record);
  }

  /**
   * Removes everything the snapshot made (front ends, exports, jobs, nodes, overlay files) and
   * then its record. Safe to call more than once; the first failure is thrown after every step ran.
   */
  release(): Promise<void> {
    this.released ??= (async () => {
      const errors: unknown[] = [];
      await this.ready.catch(() => undefined);
      for (const c of this.closers.splice(0).reverse()) await c().catch((err) => errors.push(err));
      if (this.fleece) await this.fleece.teardown().catch((err) => errors.push(err));
      while (this.direct.length > 0) await removeExport(this.ctx.qmp, this.direct.pop()!).catch((err) => errors.push(err));
      // A record is dropped only once nothing of it is left: else the next clean-up finds it.
      if (errors.length === 0) await this.host.registry.remove(this.domain, this.tag);
      if (errors.length > 0) {
        throw new VirtcbtError(`releasing the snapshot ${this.tag} failed: ${errors.map(errorMessage).join('; ')}`, {
          domain: this.domain, cause: errors[0], hint: 'virtcbtd removes what is left at its next job on the domain or its next start',
        });
      }
    })();
    return this.released;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}

/**
 * Removes what the snapshots of dead jobs left in a domain's QEMU and fleecing directory: every
 * tag there that no live snapshot of this virtcbtd holds (and `keep` does not name). Returns the
 * tags removed.
 */
export async function cleanupDeadSnapshots(qmp: QmpExecutor, host: SnapshotHost, domain: string, keep: ReadonlySet<string> = new Set()): Promise<string[]> {
  const held = await host.registry.heldTags(domain);
  const stale = [...(await fleeceTags(qmp, host.fleeceDir, domain))].filter((t) => !held.has(t) && !keep.has(t));
  for (const t of stale) {
    await teardownTag(qmp, host.fleeceDir, domain, t);
    await host.registry.remove(domain, t);
  }
  return stale;
}
