// The reconciler: rotates each disk's persistent dirty bitmap, reads the frozen one over NBD and
// folds it into the change log, then removes it. Every step is recorded first, so that after a
// crash between any two steps `recover` finds out what happened and loses nothing; anything it
// cannot prove resolves to a raised floor ("everything changed").
import type { ChangeLog } from '../changelog/index.js';
import { totalBytes, type Extent } from '../extent/index.js';
import {
  actions,
  blockDirtyBitmapAdd,
  blockDirtyBitmapRemove,
  queryNamedBlockNodes,
  QmpCommandError,
  transaction,
  type BlockDirtyInfo,
  type QmpExecutor,
} from '../qmp/index.js';
import { VirtcbtError } from '../util/errors.js';
import { addReadOnlyExport, ensureNbdServer, nbdUnixUri, removeExport } from '../snapshot/nbd-server.js';

/** virtcbt's bitmaps are named `virtcbt-N`; anything else on the disk belongs to someone else. */
export const BITMAP_PREFIX = 'virtcbt-';

export function bitmapName(seq: number): string {
  return `${BITMAP_PREFIX}${seq}`;
}

export function bitmapSeq(name: string): number | undefined {
  const m = /^virtcbt-(\d+)$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Passed to foldFrozen instead of a URI for a bitmap QEMU counts no dirty byte in. */
const NOTHING_RECORDED = Symbol('nothing recorded');

/** A disk as the reconciler sees it in one QEMU process (the VM's, or a storage daemon's). */
export interface TrackedDisk {
  target: string;
  /** The node the bitmap must sit on: the disk's active layer (format node). */
  node: string;
  sizeBytes: number;
  /** The image file of that node: another file here later means the disk moved off its bitmaps. */
  layer: string;
  /** QEMU's bitmaps on that node, as query-block reports them. */
  bitmaps: BlockDirtyInfo[];
}

/** Reads the dirty extents of a disabled bitmap exported at `uri`. */
export type DirtyExtentReader = (uri: string, bitmap: string, sizeBytes: number) => Promise<Extent[]>;

export interface ReconcilerDeps {
  log: ChangeLog;
  qmp: QmpExecutor;
  domain: string;
  /** Private unix socket of this QEMU's NBD server. */
  nbdSocket: string;
  readDirty: DirtyExtentReader;
  granularity: number;
  /** Fault injection for crash tests: called with a step name before the step runs. */
  beforeStep?: (step: ReconcileStep, target: string) => void | Promise<void>;
}

/** Points between which a crash must lose nothing (fault-injection hooks for tests). */
export type ReconcileStep = 'rotate' | 'record' | 'export' | 'fold' | 'remove';
export const RECONCILE_STEPS: readonly ReconcileStep[] = ['rotate', 'record', 'export', 'fold', 'remove'];

export interface DiskFoldResult {
  target: string;
  bitmap?: string;
  dirtyBytes: number;
  floorRaised?: string;
}

export interface RotateOptions {
  /** Begin a consumer's pass in the same step: the generation moves on with the rotation. */
  pass?: { consumer: string };
  /**
   * Wraps the QMP transaction alone (not the recovery before it nor the folds after it), e.g.
   * to freeze the guest's filesystems just around it. It must call `run` once and rethrow its
   * failure, and must not fail once `run` succeeded (the rotation is then done in QEMU); if it
   * fails without calling `run`, nothing happened in QEMU.
   */
  aroundTransaction?: (run: () => Promise<void>) => Promise<void>;
  /**
   * Leave the folded bitmaps in QEMU (state 'folded' in the log) for `removeFolded` or the next
   * recovery: removing a persistent bitmap makes QEMU flush the image, which costs as long as
   * the guest's unwritten data takes to reach the disk (measured: 725 ms after a 384 MiB write).
   */
  keepFolded?: boolean;
  /**
   * Exports the frozen bitmaps through the caller's own exports (a backup's fleecing exports,
   * which it needs anyway) instead of one export each just for the fold: gets each disk's frozen
   * bitmap and returns, per target, an NBD URI offering `qemu:dirty-bitmap:BITMAP`.
   */
  exportFrozen?: (frozen: FrozenBitmap[]) => Promise<Map<string, string>>;
}

/** A disk's bitmap that stopped recording at a rotation and waits to be folded. */
export interface FrozenBitmap {
  target: string;
  node: string;
  bitmap: string;
}

export interface RotateResult {
  passId?: number;
  generation?: number;
  disks: DiskFoldResult[];
}

export class Reconciler {
  constructor(private readonly d: ReconcilerDeps) {}

  private get log() { return this.d.log; }
  private get qmp() { return this.d.qmp; }
  private get domain() { return this.d.domain; }

  /**
   * Brings the change log and QEMU into agreement for one disk, after a crash or a restart:
   * finishes or forgets half-done rotations, folds frozen bitmaps, removes folded ones, and makes
   * sure exactly one healthy virtcbt bitmap records on the active layer (raising the floor when
   * the one it had is gone, inconsistent, moved, or the disk changed size).
   */
  async recover(disk: TrackedDisk): Promise<DiskFoldResult> {
    const { log, domain } = this;
    const result: DiskFoldResult = { target: disk.target, dirtyBytes: 0 };
    const raise = (reason: string) => {
      log.raiseFloor(domain, disk.target, reason);
      result.floorRaised = result.floorRaised ? `${result.floorRaised}; ${reason}` : reason;
    };
    const before = log.listDisks(domain).find((k) => k.target === disk.target);
    log.upsertDisk(domain, disk.target, { blockSize: before?.blockSize ?? this.d.granularity, sizeBytes: disk.sizeBytes });
    if (before && before.sizeBytes !== disk.sizeBytes) {
      result.floorRaised = `disk size changed from ${before.sizeBytes} to ${disk.sizeBytes} bytes`;
    }
    const inQemu = new Map(disk.bitmaps.filter((b) => b.name && bitmapSeq(b.name) !== undefined).map((b) => [b.name!, b]));
    let records = log.bitmaps(domain, disk.target);

    // A new active layer (external snapshot, block commit or copy). libvirt copies recording bitmaps
    // into a snapshot's overlay by name, *empty*: a same-named bitmap there proves nothing about
    // the writes before the snapshot, so everything on the old layer is void.
    const layer = log.listDisks(domain).find((k) => k.target === disk.target)?.layer;
    if (layer && layer !== disk.layer) {
      raise(`the disk's active layer moved from ${layer} to ${disk.layer} (external snapshot, block commit or block copy)`);
      for (const name of inQemu.keys()) await this.removeBitmap(disk, name);
      inQemu.clear();
      for (const r of records) log.forgetBitmap(domain, disk.target, r.name);
      records = [];
    }
    if (layer !== disk.layer) log.setDiskLayer(domain, disk.target, disk.layer);

    // A rotation recorded but maybe not done: the new bitmap in QEMU proves the transaction ran.
    for (const r of records.filter((b) => b.state === 'creating')) {
      if (inQemu.has(r.name)) {
        const prev = records.filter((b) => b.state === 'active');
        if (prev.length === 1) log.markRotated(domain, [{ target: disk.target, active: r.name, frozen: prev[0].name }]);
        else log.setBitmapState(domain, disk.target, r.name, 'active');
      } else {
        log.forgetBitmap(domain, disk.target, r.name);
      }
    }
    records = log.bitmaps(domain, disk.target);

    for (const r of records.filter((b) => b.state === 'frozen')) {
      const q = inQemu.get(r.name);
      if (!q || q.inconsistent) {
        raise(`bitmap ${r.name} was ${q ? 'inconsistent' : 'lost'} before it was folded`);
        if (q) await this.removeBitmap(disk, r.name);
        log.forgetBitmap(domain, disk.target, r.name);
      } else {
        result.dirtyBytes += await this.foldFrozen(disk, r.name);
      }
    }
    for (const r of log.bitmaps(domain, disk.target).filter((b) => b.state === 'folded')) {
      // A folded bitmap another job's snapshot still exports stays until that job removes it.
      if (inQemu.has(r.name) && !(await this.removeBitmap(disk, r.name, { unlessBusy: true }))) continue;
      log.forgetBitmap(domain, disk.target, r.name);
    }

    const active = log.bitmaps(domain, disk.target).filter((b) => b.state === 'active');
    const healthy = active.length === 1 ? this.healthProblem(inQemu.get(active[0].name), active[0].name) : `${active.length} active bitmaps recorded`;
    if (healthy !== undefined) {
      // One reason per recovery: a floor raised above already covers the bitmap it voided.
      if (!result.floorRaised) raise(active.length === 0 ? 'no bitmap was tracking the disk' : healthy);
      for (const a of active) {
        if (inQemu.has(a.name)) await this.removeBitmap(disk, a.name);
        log.forgetBitmap(domain, disk.target, a.name);
      }
      await this.createActive(disk);
    }
    // virtcbt bitmaps QEMU has and the log does not know (from a log that was reset): drop them.
    const known = new Set(log.bitmaps(domain, disk.target).map((b) => b.name));
    for (const name of inQemu.keys()) if (!known.has(name)) await this.removeBitmap(disk, name, { unlessBusy: true });
    return result;
  }

  /**
   * True when `recover` has nothing to do for the disk: one healthy active bitmap, in the log and
   * in QEMU, on the layer and size the log knows, and no other virtcbt bitmap. Reads no more than
   * the log and `disk` (no QMP), so a caller can ask before deciding how to schedule a rotation.
   */
  settled(disk: TrackedDisk): boolean {
    const known = this.log.listDisks(this.domain).find((k) => k.target === disk.target);
    if (!known || known.sizeBytes !== disk.sizeBytes || known.layer !== disk.layer) return false;
    // Folded bitmaps another job still holds (see removeFolded) do not unsettle the disk.
    const records = this.log.bitmaps(this.domain, disk.target).filter((b) => b.state !== 'folded');
    if (records.length !== 1 || records[0].state !== 'active') return false;
    const folded = new Set(this.log.bitmaps(this.domain, disk.target).filter((b) => b.state === 'folded').map((b) => b.name));
    const ours = disk.bitmaps.filter((b) => b.name && bitmapSeq(b.name) !== undefined && !folded.has(b.name));
    return ours.length === 1 && ours[0].name === records[0].name && this.healthProblem(ours[0], records[0].name) === undefined;
  }

  /** Why a bitmap cannot be trusted to have recorded every write, or undefined when it can. */
  private healthProblem(q: BlockDirtyInfo | undefined, name: string): string | undefined {
    if (!q) return `bitmap ${name} is no longer on the disk's active layer (lost, or moved by a snapshot, commit or copy)`;
    if (q.inconsistent) return `bitmap ${name} is inconsistent (QEMU stopped without saving it)`;
    if (!q.recording) return `bitmap ${name} is not recording`;
    if (!q.persistent) return `bitmap ${name} is not persistent`;
    return undefined;
  }

  /** One past the highest virtcbt bitmap number the log or QEMU knows for the disk. */
  private nextName(disk: TrackedDisk): string {
    const names = [...this.log.bitmaps(this.domain, disk.target).map((b) => b.name), ...disk.bitmaps.map((b) => b.name ?? '')];
    return bitmapName(Math.max(0, ...names.map((n) => bitmapSeq(n) ?? 0)) + 1);
  }

  private async createActive(disk: TrackedDisk): Promise<void> {
    const name = this.nextName(disk);
    const gen = this.log.currentGeneration(this.domain);
    this.log.recordBitmap(this.domain, disk.target, name, gen, 'creating');
    await blockDirtyBitmapAdd(this.qmp, { node: disk.node, name, persistent: true, granularity: this.blockSize(disk) });
    this.log.setBitmapState(this.domain, disk.target, name, 'active');
  }

  private blockSize(disk: TrackedDisk): number {
    return this.log.listDisks(this.domain).find((k) => k.target === disk.target)?.blockSize ?? this.d.granularity;
  }

  /**
   * Rotates every disk's bitmap in one QMP transaction (optionally beginning a pass, so that the
   * pass's generation and the rotation are the same instant), then folds the frozen bitmaps.
   * `extra` actions (e.g. fleecing's blockdev-backup) join the same transaction.
   */
  async rotateAndFold(disks: TrackedDisk[], opts: RotateOptions & { extra?: Parameters<typeof transaction>[1] } = {}): Promise<RotateResult> {
    const { log, domain } = this;
    const results: DiskFoldResult[] = [];
    for (const disk of disks) results.push(await this.recover(disk));
    const plan = disks.map((disk) => {
      const old = log.bitmaps(domain, disk.target).find((b) => b.state === 'active');
      if (!old) throw new VirtcbtError('no active bitmap after recovery', { domain, disk: disk.target });
      return { disk, old: old.name, next: this.nextName(disk) };
    });
    let passId: number | undefined;
    let generation: number | undefined;
    if (opts.pass) {
      const p = log.beginPass(domain, opts.pass.consumer, { newBitmaps: plan.map((p) => ({ target: p.disk.target, name: p.next })) });
      passId = p.id;
      generation = p.generation;
    } else {
      const gen = log.currentGeneration(domain);
      for (const p of plan) log.recordBitmap(domain, p.disk.target, p.next, gen, 'creating');
    }
    for (const p of plan) await this.d.beforeStep?.('rotate', p.disk.target);
    try {
      const run = () => transaction(this.qmp, [
        ...plan.map((p) => actions.bitmapAdd({ node: p.disk.node, name: p.next, persistent: true, granularity: this.blockSize(p.disk) })),
        ...plan.map((p) => actions.bitmapDisable({ node: p.disk.node, name: p.old })),
        ...(opts.extra ?? []),
      ]);
      await (opts.aroundTransaction ? opts.aroundTransaction(run) : run());
    } catch (err) {
      // Nothing happened in QEMU: forget the plan, and the pass with it.
      for (const p of plan) log.forgetBitmap(domain, p.disk.target, p.next);
      if (passId !== undefined) log.abortPass(passId);
      throw new VirtcbtError(`rotating the dirty bitmaps failed: ${(err as Error).message}`, {
        domain,
        hint: 'Run `virtcbt status` for the disks\' state; the change log is unchanged',
        cause: err,
      });
    }
    for (const p of plan) await this.d.beforeStep?.('record', p.disk.target);
    log.markRotated(domain, plan.map((p) => ({ target: p.disk.target, active: p.next, frozen: p.old })));
    // A disabled bitmap's count is final: one that recorded nothing is folded without an export or a read.
    const quiet = await this.recordedNothing(plan.map((p) => ({ node: p.disk.node, bitmap: p.old })));
    const toRead = plan.filter((_, i) => !quiet[i]);
    let uris: Map<string, string> | undefined;
    if (opts.exportFrozen && toRead.length > 0) {
      for (const p of toRead) await this.d.beforeStep?.('export', p.disk.target);
      // A failure leaves the bitmaps 'frozen' in the log: the next recovery folds them.
      uris = await opts.exportFrozen(toRead.map((p) => ({ target: p.disk.target, node: p.disk.node, bitmap: p.old })));
    }
    // The disks side by side: each has its own export, and the NBD server stays up until the job ends.
    const folds = await Promise.allSettled(plan.map((p, i) => this.foldFrozen(p.disk, p.old, opts.keepFolded,
      quiet[i] ? NOTHING_RECORDED : uris?.get(p.disk.target))));
    for (const [i, f] of folds.entries()) {
      if (f.status === 'rejected') throw f.reason;
      results[i].bitmap = plan[i].old;
      results[i].dirtyBytes += f.value;
    }
    return { passId, generation, disks: results };
  }

  /**
   * Removes bitmaps a `keepFolded` rotation left in QEMU. One that is busy (exported by another
   * job's snapshot, whose copy runs beside this one) stays for that job's own removeFolded.
   */
  async removeFolded(disks: TrackedDisk[]): Promise<void> {
    for (const disk of disks) {
      for (const r of this.log.bitmaps(this.domain, disk.target).filter((b) => b.state === 'folded')) {
        if (await this.removeBitmap(disk, r.name, { unlessBusy: true })) this.log.forgetBitmap(this.domain, disk.target, r.name);
      }
    }
  }

  /**
   * Per disabled bitmap, whether it recorded nothing (one query for all: QEMU counts a bitmap's
   * dirty bytes, and a disabled bitmap's count no longer changes).
   */
  private async recordedNothing(frozen: { node: string; bitmap: string }[]): Promise<boolean[]> {
    // Only a shortcut: if QEMU cannot say, every bitmap is read as before.
    const nodes = await queryNamedBlockNodes(this.qmp).catch(() => []);
    return frozen.map((f) => {
      const b = nodes.find((n) => n['node-name'] === f.node)?.['dirty-bitmaps']?.find((x) => x.name === f.bitmap);
      return !!b && b.count === 0 && !b.recording && !b.inconsistent;
    });
  }

  /**
   * Export → read → fold → remove for one frozen bitmap. Each step is safe to repeat. With `uri`
   * the bitmap is read through an export the caller made (see RotateOptions.exportFrozen);
   * NOTHING_RECORDED folds it without reading (QEMU counted no dirty byte in it).
   */
  private async foldFrozen(disk: TrackedDisk, name: string, keep = false, uri?: string | typeof NOTHING_RECORDED): Promise<number> {
    const { log, domain } = this;
    let extents: Extent[];
    if (uri === NOTHING_RECORDED) {
      extents = [];
    } else if (uri) {
      extents = await this.d.readDirty(uri, name, disk.sizeBytes);
    } else {
      const id = `virtcbt-fold-${disk.target}`;
      await this.d.beforeStep?.('export', disk.target);
      await ensureNbdServer(this.qmp, this.d.nbdSocket);
      await addReadOnlyExport(this.qmp, { id, node: disk.node, name: id, bitmaps: [name] });
      try {
        extents = await this.d.readDirty(nbdUnixUri(this.d.nbdSocket, id), name, disk.sizeBytes);
      } finally {
        await removeExport(this.qmp, id);
      }
    }
    await this.d.beforeStep?.('fold', disk.target);
    log.fold(domain, disk.target, name, extents);
    if (keep) return totalBytes(extents);
    await this.d.beforeStep?.('remove', disk.target);
    await this.removeBitmap(disk, name);
    log.forgetBitmap(domain, disk.target, name);
    return totalBytes(extents);
  }

  /** For `disable`: removes every virtcbt bitmap from QEMU and the log. */
  async removeAll(disks: TrackedDisk[]): Promise<void> {
    for (const disk of disks) {
      for (const b of disk.bitmaps) {
        if (b.name && bitmapSeq(b.name) !== undefined) await this.removeBitmap(disk, b.name);
      }
    }
  }

  /** Removes a bitmap (gone already counts as removed); with `unlessBusy`, false when an export or job holds it. */
  private async removeBitmap(disk: TrackedDisk, name: string, o: { unlessBusy?: boolean } = {}): Promise<boolean> {
    try {
      await blockDirtyBitmapRemove(this.qmp, { node: disk.node, name });
    } catch (err) {
      if (err instanceof QmpCommandError && /not found|Dirty bitmap .* not found/i.test(err.desc)) return true;
      if (o.unlessBusy && err instanceof QmpCommandError && /in use/i.test(err.desc)) return false;
      throw err;
    }
    return true;
  }
}
