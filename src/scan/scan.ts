// The scan job on the hypervisor (patent US8789049): a snapshot of the running domain without
// pausing it, its disks exported to the scanner host over NBD with TLS (only the scanner's
// identity gets in), the job handed to the scanner, progress streamed back, the verdict awaited;
// then the action on detection, and the snapshot torn down (also on failure or timeout). The
// scanner is a change-log consumer: an incremental scan sends the extents changed since its last
// completed scan, and the consumer moves only once the verdict is in.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { writeFileAtomically } from '../util/atomic-file.js';
import type { ChangeLog } from '../changelog/index.js';
import { logContinuity } from '../changelog/index.js';
import { coarsen, fromPairs, intersect, merge, toPairs, type Extent } from '../extent/index.js';
import type { GuestAgent } from '../guest/index.js';
import type { DomainXmlInfo } from '../libvirt/index.js';
import type { QmpExecutor } from '../qmp/index.js';
import type { Reconciler, TrackedDisk } from '../reconciler/index.js';
import { Snapshot, presetMarker, type FreezeMarker, type SnapshotHost, type TakeResult } from '../snapshot/index.js';
import { deadlineSignal } from '../util/abort.js';
import type { Logger } from '../util/log.js';
import { NotRegularFileError, readRegularFile } from '../util/regular-file.js';
import { UsageError, VirtcbtError, errorMessage } from '../util/errors.js';
import { ScannerUnreachableError, postScan, probeScanner, type ScannerConfig } from './client.js';
import { scanConsumerName, scanRecordDir } from './names.js';
import type { ScanJob, ScanResult as ProtocolResult } from './protocol.js';

export interface ScanContext {
  domain: string;
  running: boolean;
  qmp: QmpExecutor;
  nbdSocket: string;
  disks: TrackedDisk[];
  reconciler: Reconciler;
  info: DomainXmlInfo;
  log: ChangeLog;
}

export interface ScanRequest {
  /** A configured scanner's name (default: the first that answers, in the configured order). */
  scanner?: string;
  /** Every file, not only those whose blocks changed since this scanner's last completed scan. */
  full?: boolean;
  noFreeze?: boolean;
}

/** What a scanner reports: the scanner host's protocol (src/scan/protocol.ts). */
export type ScanVerdict = ProtocolResult;

export interface ScanResult {
  domain: string;
  scanner: string;
  consumer: string;
  full: boolean;
  reason?: string;
  time: string;
  consistency: 'filesystem' | 'crash';
  freezeWindowMs: number | null;
  verdict: ScanVerdict;
  /** What was done about it (the quarantine's record), when something was found. */
  action?: unknown;
  elapsedMs: number;
  notes: string[];
}

export type ScanEvent =
  | { type: 'start'; domain: string; scanner: string; consumer: string; full: boolean; reason?: string }
  | { type: 'snapshot'; time: string; consistency: 'filesystem' | 'crash'; freezeWindowMs: number | null; pass: number }
  | { type: 'scanner'; event: Record<string, unknown> }
  | ({ type: 'result' } & ScanResult);

export interface ScanDeps {
  snapshots: SnapshotHost;
  job?: string;
  snapshotTaken?: () => void;
  inQueue?: <T>(fn: () => Promise<T>) => Promise<T>;
  signal?: AbortSignal;
  runDir: string;
  stateDir: string;
  agent: GuestAgent | null;
  freezeTimeoutMs: number;
  agentTimeoutMs: number;
  freezeMarker?: FreezeMarker;
  /** snapshot.remote settings (remoteExportSettings). */
  remote: { bind: { host: string; port: number }; tlsDir: string; deadlineMs: number };
  scanners: ScannerConfig[];
  /** A full scan at least this often (0: only when asked or when the change log has no history). */
  fullEveryMs: number;
  /** The scan as a whole (scanner's work included) ends with an error after this long. */
  timeoutMs: number;
  /** The action on detection (quarantine); its record goes into the result. */
  onDetection?: (verdict: ScanVerdict, scanner: string) => Promise<unknown>;
  log?: Logger;
}

/** How far the guest's clock may be off when it cannot be asked (no agent): those files are read again. */
const NO_AGENT_CLOCK_MARGIN_S = 300;

/**
 * What virtcbtd keeps per domain and scanner: when the last full scan completed, under which change
 * log; and, for the next incremental scan, what the last one could not read and when it began.
 */
export interface ScanRecord {
  format: 'virtcbt-scan/1';
  lastFullAt?: string;
  /** When the last completed scan (the consumer moved) ended, and what it found (for `virtcbt scan status`). */
  lastScanAt?: string;
  last?: LastScan;
  logId?: string;
  /**
   * When the last completed scan's freeze began, on the guest's clock (Unix seconds): the next
   * incremental scan sends it as changedSince, and the scanner compares the guest's ctime with it.
   * Read through the agent just before the freeze (guest-get-time; a TCG guest's clock was seen
   * 2 s behind the host's); without an agent, the host's time less NO_AGENT_CLOCK_MARGIN_S.
   */
  changedSince?: number;
  /**
   * Regions of the disks the last completed scan could not read (its verdict's not scanned: a
   * damaged or unknown filesystem, XFS, swap, ...). The next incremental scan takes each as changed
   * in whole. The consumer moved past their changes; without this, a filesystem unreadable for one
   * scan (a guest fsck pending, or a guest that broke its superblock on purpose, wrote, and put it
   * back) would have the files written meanwhile never scanned by an incremental scan.
   */
  unscanned?: UnscannedRegion[];
  /**
   * Per disk, the changed byte ranges the last completed scan found no file owning (its verdict's
   * `unowned`): the next incremental scan sends them again with its changes. A file whose metadata
   * reached the disk only after that scan (a crash-consistent snapshot taken before the guest's
   * journal was written back), or whose extent tree was pointed at them later with an old ctime,
   * owns blocks that will not change again: without this it would never be read incrementally.
   */
  unowned?: { disk: string; extents: [number, number][] }[];
  /** Set by readRecord: the file is there but not one virtcbtd wrote (the next scan is full). */
  unreadable?: true;
}

interface UnscannedRegion {
  disk: string;
  offset: number;
  length: number;
  kind: string;
}

export async function runScan(ctx: ScanContext, req: ScanRequest, deps: ScanDeps, emit: (ev: ScanEvent) => void): Promise<ScanResult> {
  const t0 = performance.now();
  const { domain } = ctx;
  if (!ctx.running) {
    throw new UsageError(`domain ${domain} is not running: a scan reads a running domain's snapshot`, { domain, hint: 'Start the domain, or scan its images with another tool' });
  }
  const candidates = req.scanner ? deps.scanners.filter((s) => s.name === req.scanner) : deps.scanners;
  if (candidates.length === 0) {
    throw new UsageError(req.scanner ? `no scanner '${req.scanner}' in the config (scan.scanners has ${deps.scanners.map((s) => s.name).join(', ') || 'none'})` : 'no scanner is configured (scan.scanners)', {
      domain, hint: 'Add the scanner host to scan.scanners: {name, url, identity, tlsDir}',
    });
  }
  const notes: string[] = [];
  const records = scanRecordDir(deps.stateDir, domain);
  let snap: Snapshot | undefined;
  let leftQueue = false;
  const inQueue = <T>(fn: () => Promise<T>): Promise<T> => (leftQueue && deps.inQueue ? deps.inQueue(fn) : fn());
  let passId: number | undefined;
  let taken: TakeResult | undefined;
  let guestSince: number | undefined;
  let committed = false;
  const signal = deadlineSignal({ signal: deps.signal, timeoutMs: deps.timeoutMs }, `the scan of ${domain} (scan.timeoutSeconds ${deps.timeoutMs / 1000})`)!;
  const agent = deps.agent === null || req.noFreeze ? undefined : deps.agent;
  const freezeMarker = agent && deps.freezeMarker ? presetMarker(deps.freezeMarker) : undefined;
  try {
    // The first scanner that answers, asked before the snapshot: its pass (each scanner has its own history) is the snapshot's.
    const reachable: ScannerConfig[] = [];
    for (const c of candidates) {
      try {
        await probeScanner(c, { signal });
        reachable.push(c);
        break;
      } catch (err) {
        if (!(err instanceof ScannerUnreachableError)) throw err;
        notes.push(errorMessage(err));
        deps.log?.warn('scanner does not answer; trying the next', { domain, scanner: c.name, error: errorMessage(err) });
        if (c === candidates[candidates.length - 1]) throw err;
      }
    }
    // One that stops answering after the snapshot: the rest are tried with the same snapshot (a full scan).
    reachable.push(...candidates.slice(candidates.indexOf(reachable[0]!) + 1));
    let tried = 0;
    for (const scanner of reachable) {
      tried++;
      const consumer = scanConsumerName(scanner.name);
      if (!ctx.log.listConsumers(domain).some((c) => c.name === consumer)) ctx.log.addConsumer(domain, consumer);
      const rec = await readRecord(records, scanner.name);
      const dueFull = deps.fullEveryMs > 0 && (!rec.lastFullAt || Date.now() - Date.parse(rec.lastFullAt) >= deps.fullEveryMs);
      if (!snap) {
        const pinged = agent ? agent.ping({ timeoutMs: Math.min(5_000, deps.agentTimeoutMs) }).then(() => true, (err: unknown) => {
          notes.push(`the guest agent did not answer (${errorMessage(err)}): crash-consistent`);
          return false;
        }) : Promise.resolve(false);
        snap = Snapshot.open(ctx, deps.snapshots, { job: deps.job ?? `scan ${domain}` });
        const agentOk = await pinged;
        signal.throwIfAborted();
        // Before the freeze: every inode change from here on is the next scan's (see changedSince).
        const hostNow = Date.now() / 1000;
        guestSince = (agentOk ? await guestClockNow(agent!) : undefined) ?? hostNow - NO_AGENT_CLOCK_MARGIN_S;
        taken = await snap.take({
          consumer, agent: agentOk ? agent : undefined, freezeTimeoutMs: deps.freezeTimeoutMs, marker: freezeMarker?.marker, signal,
          noAgentReason: req.noFreeze ? 'not frozen (--no-freeze): crash-consistent' : 'no usable guest agent: crash-consistent',
        });
        passId = taken.passId!;
        if (taken.note) notes.push(taken.note);
        emit({ type: 'snapshot', time: taken.time, consistency: taken.consistency, freezeWindowMs: taken.freezeWindowMs, pass: passId });
      }
      const pass = ctx.log.getPass(passId!);
      if (pass.consumer !== consumer) {
        // The snapshot's pass belongs to the scanner that did not answer: a full scan for this one.
        notes.push(`scanner ${reachable[tried - 2]?.name} did not answer: scanned by ${scanner.name} in full`);
      }
      const changes = ctx.log.passChanges(passId!);
      const full = req.full ? '--full was asked for'
        : pass.consumer !== consumer ? 'another scanner\'s pass'
          : dueFull ? 'the configured period between full scans has passed'
            : rec.unreadable ? 'this scanner\'s record was not one virtcbtd wrote'
              : changes.find((c) => c.full)?.reason ?? (logContinuity(rec.logId, pass.logId) === 'other' ? 'the change log was reset since the last full scan' : undefined);
      emit({ type: 'start', domain, scanner: scanner.name, consumer, full: full !== undefined, reason: full });
      const disks: { target: string; uri: string; size: number; extents?: [number, number][] }[] = [];
      const pending = pass.consumer === consumer ? rec.unscanned ?? [] : [];
      if (full === undefined && pending.length > 0) {
        notes.push(`scanned in whole, as the last scan could not read them: ${pending.map((u) => `${u.disk} ${u.kind} at ${u.offset} (${u.length} bytes)`).join(', ')}`);
      }
      const carried = pass.consumer === consumer ? rec.unowned ?? [] : [];
      // Carried ranges are sent only for a disk with changes: a block gains an owner only by a
      // write to its filesystem's metadata (an inode, an extent block, the journal), which is a
      // change. A disk without any keeps them for later, and its scan reads no inode table.
      const kept: typeof carried = [];
      for (const d of ctx.disks) {
        const r = await snap.exportRemote(d.target, { identities: [scanner.identity], settings: deps.remote, runDir: deps.runDir, log: deps.log });
        const ch = changes.find((c) => c.target === d.target);
        const mine = carried.filter((u) => u.disk === d.target);
        if (!ch?.extents.length) kept.push(...mine);
        const again = intersect(merge([
          ...pending.filter((u) => u.disk === d.target),
          ...(ch?.extents.length ? mine.flatMap((u) => fromPairs(u.extents)) : []),
        ]), [{ offset: 0, length: d.sizeBytes }]);
        disks.push({ target: d.target, uri: r.uri, size: d.sizeBytes, extents: full !== undefined || !ch ? undefined : toPairs(merge([...ch.extents, ...again])) });
      }
      if (!leftQueue && deps.snapshotTaken) {
        deps.snapshotTaken();
        leftQueue = true;
      }
      let verdict: ScanVerdict;
      let unownedNow: { disk: string; extents: [number, number][] }[];
      try {
        const since = full === undefined && pass.consumer === consumer ? rec.changedSince : undefined;
        // The scanner's owner indexes are labelled with the change-log state they describe: this
        // snapshot's generation, and (incremental) the consumer's last one, which these changes
        // start from. An index left by a scan whose verdict did not move the consumer, or by a
        // concurrent one, is then never brought forward by changes that do not start at its state.
        const base = full === undefined && pass.consumer === consumer && pass.since !== null ? indexState(pass.logId, pass.since) : undefined;
        const jobBody: ScanJob = {
          id: randomBytes(8).toString('hex'), domain, disks, ...(since !== undefined ? { changedSince: since } : {}),
          ownerIndex: { next: indexState(pass.logId, pass.generation), ...(base !== undefined ? { base } : {}) },
        };
        // The unowned ranges go to the record, not into the verdict reported and kept with a quarantine.
        const { unowned, ...rest } = await postScan(scanner, '/v1/scans', jobBody, {
          signal, onEvent: (event) => { if (event.type !== 'result') emit({ type: 'scanner', event }); },
        }) as unknown as ScanVerdict;
        verdict = rest;
        // A scanner that does not report them (an older one): what was carried stays carried.
        // After a full scan only what it reports (nothing): it started afresh.
        unownedNow = unowned === undefined ? carried
          : unownedExtents({ unowned: [...(Array.isArray(unowned) ? unowned : []), ...(full === undefined ? kept : [])] }, ctx.disks);
      } catch (err) {
        if (err instanceof ScannerUnreachableError && tried < reachable.length) {
          notes.push(errorMessage(err));
          continue;
        }
        throw err;
      }
      // The verdict is in: the consumer moves (an infected file stays reported by the quarantine
      // until release), unless the scan was cut short: then it stays, and the next scan covers
      // these changes again (what was not looked at is never taken as scanned).
      const action = verdict.infected?.length ? await deps.onDetection?.(verdict, scanner.name) : undefined;
      const cutShort = cutShortBy(verdict);
      if (cutShort) {
        notes.push(`the scan was cut short (${cutShort}): the scanner's consumer did not move, so the next scan covers these changes again`);
      } else if (pass.consumer === consumer) {
        // The record (what this scan could not read) is durable before the consumer moves past
        // those regions' changes: a crash between the two scans them again, never loses them.
        await writeRecord(records, scanner.name, {
          format: 'virtcbt-scan/1', lastFullAt: full !== undefined ? new Date().toISOString() : rec.lastFullAt,
          lastScanAt: new Date().toISOString(), last: lastScanOf(verdict, full !== undefined),
          logId: full !== undefined ? pass.logId : rec.logId, unscanned: unscannedRegions(verdict, ctx.disks), changedSince: guestSince,
          unowned: unownedNow,
        });
        ctx.log.commitPass(passId!);
        committed = true;
      }
      return {
        domain, scanner: scanner.name, consumer, full: full !== undefined, reason: full, time: taken!.time,
        consistency: taken!.consistency, freezeWindowMs: taken!.freezeWindowMs,
        verdict, action, elapsedMs: Math.round(performance.now() - t0), notes,
      };
    }
    throw new VirtcbtError('no scanner answered', { domain });
  } catch (err) {
    if (err instanceof VirtcbtError) throw err;
    throw new VirtcbtError(`scan of ${domain} failed: ${errorMessage(err)}`, {
      domain, cause: err, hint: 'The scanner\'s consumer did not move: the next scan covers everything since its last completed one',
    });
  } finally {
    // Failed, or cut short: the pass is dropped and the consumer stays where it was.
    if (passId !== undefined && !committed) {
      try {
        if (ctx.log.getPass(passId).state === 'open') ctx.log.abortPass(passId);
      } catch { /* reported by the log's next call */ }
    }
    if (snap) {
      const s = snap;
      await inQueue(() => s.release()).catch((e) => notes.push(errorMessage(e)));
    }
    await freezeMarker?.dropIfUnused().catch(() => undefined);
    await agent?.close().catch(() => undefined);
  }
}

/** A change-log state as an owner-index token (ScanJob.ownerIndex): the log's identity and a generation. */
function indexState(logId: string, generation: number): string {
  return `${logId.replace(/[^A-Za-z0-9._:-]/g, '_').slice(0, 100)}.${generation}`;
}

/** What `virtcbt scan status` shows of a completed scan. */
export interface LastScan {
  full: boolean;
  filesOpened: number;
  infected: number;
  notScanned: number;
  skipped: number;
  complete: boolean;
}

function lastScanOf(v: ScanVerdict, full: boolean): LastScan {
  return {
    full, filesOpened: v.scanned?.filesOpened ?? 0, infected: v.infected?.length ?? 0, notScanned: v.notScanned?.length ?? 0,
    skipped: v.skipped?.length ?? 0, complete: v.complete === true,
  };
}

function isLastScan(v: unknown): v is LastScan {
  const l = v as Partial<LastScan> | null;
  const n = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0;
  return !!l && typeof l === 'object' && typeof l.full === 'boolean' && typeof l.complete === 'boolean'
    && n(l.filesOpened) && n(l.infected) && n(l.notScanned) && n(l.skipped);
}

/** The record of `scanner` for `domain` (a record not virtcbtd's reads as `unreadable`). */
export async function readScanRecord(stateDir: string, domain: string, scanner: string): Promise<ScanRecord> {
  return readRecord(scanRecordDir(stateDir, domain), scanner);
}

async function readRecord(dir: string, scanner: string): Promise<ScanRecord> {
  try {
    const v = JSON.parse((await readRegularFile(join(dir, `${scanner}.json`), MAX_RECORD_BYTES)).text) as Partial<ScanRecord>;
    const time = (t: unknown) => t === undefined || (typeof t === 'string' && !Number.isNaN(Date.parse(t)));
    if (v?.format === 'virtcbt-scan/1' && time(v.lastFullAt) && (v.changedSince === undefined || (typeof v.changedSince === 'number' && Number.isFinite(v.changedSince)))
      && (v.logId === undefined || typeof v.logId === 'string') && (v.unscanned === undefined || (Array.isArray(v.unscanned) && v.unscanned.every(isRegion)))
      && (v.unowned === undefined || (Array.isArray(v.unowned) && v.unowned.every(isUnowned)))) {
      // The status fields only inform: one out of shape is left out, the record still counts.
      const lastScanAt = typeof v.lastScanAt === 'string' && !Number.isNaN(Date.parse(v.lastScanAt)) ? v.lastScanAt : undefined;
      return {
        format: v.format, lastFullAt: v.lastFullAt, logId: v.logId, unscanned: v.unscanned, unowned: v.unowned, changedSince: v.changedSince,
        ...(lastScanAt ? { lastScanAt } : {}), ...(isLastScan(v.last) ? { last: v.last } : {}),
      };
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { format: 'virtcbt-scan/1' };
    if (!(err instanceof NotRegularFileError) && !(err instanceof SyntaxError)) throw err;
  }
  // Not one virtcbtd wrote: what the last scan could not read is unknown, so the next scan is full.
  return { format: 'virtcbt-scan/1', unreadable: true };
}

/**
 * Now on the guest's clock (Unix seconds), less the agent's round trip (the answer is at most
 * that old); undefined when the agent does not answer it.
 */
async function guestClockNow(agent: GuestAgent): Promise<number | undefined> {
  try {
    const t0 = Date.now();
    const guest = await agent.time({ timeoutMs: 2_000 });
    if (!Number.isFinite(guest)) return undefined;
    return (guest - (Date.now() - t0)) / 1000;
  } catch {
    return undefined;
  }
}

/** The most unowned extents kept per disk (as the scanner's own bound): more are coarsened, never dropped. */
const MAX_UNOWNED_EXTENTS = 20_000;
/** And for all of a domain's disks together, so that the record stays well under MAX_RECORD_BYTES. */
const MAX_UNOWNED_TOTAL = 200_000;
/** The record holds up to that many extents per disk: its size is bounded well above it. */
const MAX_RECORD_BYTES = 16 * 1024 * 1024;

/** [offset, length] of a byte range: whole numbers, a length above zero. */
const isPair = (p: unknown): p is [number, number] => Array.isArray(p) && p.length === 2 && Number.isSafeInteger(p[0]) && p[0] >= 0 && Number.isSafeInteger(p[1]) && p[1] > 0;

const isPairs = (u: unknown): u is [number, number][] => Array.isArray(u) && u.length <= MAX_UNOWNED_EXTENTS && u.every(isPair);

const isUnowned = (u: unknown): u is { disk: string; extents: [number, number][] } => {
  const r = u as { disk?: unknown; extents?: unknown } | null;
  return typeof r === 'object' && r !== null && typeof r.disk === 'string' && isPairs(r.extents);
};

/**
 * A verdict's unowned ranges, per disk of the job, checked against the disks (the scanner is
 * another host: its answer is input), merged and bounded. Ranges of an unknown disk, or not byte
 * ranges, are left out: what they would have had checked again is only what a full scan reads.
 */
export function unownedExtents(v: { unowned?: unknown }, disks: readonly { target: string; sizeBytes: number }[]): { disk: string; extents: [number, number][] }[] {
  const out: { disk: string; extents: [number, number][] }[] = [];
  const perDisk = Math.max(1, Math.min(MAX_UNOWNED_EXTENTS, Math.floor(MAX_UNOWNED_TOTAL / Math.max(1, disks.length))));
  for (const d of disks) {
    const parts: Extent[] = [];
    for (const u of Array.isArray(v.unowned) ? v.unowned as unknown[] : []) {
      const r = u as { disk?: unknown; extents?: unknown } | null;
      if (!r || r.disk !== d.target || !Array.isArray(r.extents)) continue;
      for (const p of r.extents as unknown[]) {
        if (isPair(p)) parts.push({ offset: p[0], length: p[1] });
      }
    }
    const kept = coarsen(intersect(merge(parts), [{ offset: 0, length: d.sizeBytes }]), perDisk);
    if (kept.length > 0) out.push({ disk: d.target, extents: toPairs(kept) });
  }
  return out;
}

const isRegion = (u: unknown): u is UnscannedRegion => {
  const r = u as Partial<UnscannedRegion> | null;
  return typeof r === 'object' && r !== null && typeof r.disk === 'string' && typeof r.kind === 'string'
    && Number.isSafeInteger(r.offset) && r.offset! >= 0 && Number.isSafeInteger(r.length) && r.length! > 0;
};

/**
 * The regions of a verdict's not scanned that are byte ranges of the job's disks (a partition or
 * a whole disk), checked against them: the scanner is another host, its answer is input.
 */
export function unscannedRegions(v: Pick<ScanVerdict, 'notScanned'>, disks: readonly { target: string; sizeBytes: number }[]): UnscannedRegion[] {
  const out: UnscannedRegion[] = [];
  for (const n of Array.isArray(v.notScanned) ? v.notScanned : []) {
    const d = disks.find((k) => k.target === n?.disk);
    if (!d || !Number.isSafeInteger(n.offset) || !Number.isSafeInteger(n.length) || n.offset! < 0 || n.length! <= 0) continue;
    const [clip] = intersect([{ offset: n.offset!, length: n.length! } satisfies Extent], [{ offset: 0, length: d.sizeBytes }]);
    if (clip) out.push({ disk: d.target, offset: clip.offset, length: clip.length, kind: String(n.kind).slice(0, 64) });
  }
  return out;
}

async function writeRecord(dir: string, scanner: string, rec: ScanRecord): Promise<void> {
  await writeFileAtomically(join(dir, `${scanner}.json`), JSON.stringify(rec));
}

/**
 * Why a verdict did not look at everything it was asked to, or undefined: out of time or at the
 * file-count limit (the files after it were never opened), or a disk whose export could not be
 * read. Files skipped for their size are reported and would be skipped again; filesystems the
 * scanner could not read (damaged, or of a kind it cannot read) are reported, and the record's
 * `unscanned` has the next incremental scan take them in whole: neither holds the consumer back.
 */
export function cutShortBy(v: Partial<Pick<ScanVerdict, 'limitsHit' | 'notScanned'>>): string | undefined {
  const why: string[] = [];
  for (const l of Array.isArray(v.limitsHit) ? v.limitsHit : []) {
    if (l?.limit === 'maxSeconds') why.push(`time limit ${l.value} s`);
    if (l?.limit === 'maxFiles') why.push(`file-count limit ${l.value}`);
  }
  const unread = (Array.isArray(v.notScanned) ? v.notScanned : []).filter((n) => n?.kind === 'disk').map((n) => n.disk);
  if (unread.length) why.push(`export of ${unread.join(', ')} not read`);
  return why.length ? why.join('; ') : undefined;
}
