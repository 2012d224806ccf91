// The guest-agent used-block map: a freezer with GuestAgent's withFrozen contract that freezes
// through a script in the guest (see freeze-script.ts) and, while frozen, reads each filesystem's
// GETFSMAP; the maps come out as used byte extents of the disks, of the same instant as whatever
// the caller did while frozen (the snapshot transaction).
import { randomBytes } from 'node:crypto';
import { AgentCommandError, GuestAgent, ThawFailedError, type FrozenOptions } from '../guest/index.js';
import { merge, type Extent } from '../extent/index.js';
import { abortReason, deadlineSignal } from '../util/abort.js';
import { TimeoutError, VirtcbtError, errorMessage } from '../util/errors.js';
import { EXIT_CANNOT, FREEZE_SCRIPT, parseScriptReport, type ScriptReport } from './freeze-script.js';
import { complement, freeExtents, parseFsmap } from './fsmap.js';
import { guestFilesystems, type GuestFilesystem } from './guest-fs.js';

export interface FilesystemMap extends GuestFilesystem {
  /** GETFSMAP read while frozen and placed on the disk. */
  mapped: boolean;
  /**
   * Used byte extents on the disk (partition start added), merged. The whole device when not
   * mapped; empty when its place is unknown (`problem`): agentDiskUsedMap then frees nothing for it.
   */
  used: Extent[];
  /** Free byte extents on the disk (what a sync may skip). Empty when not mapped. */
  free: Extent[];
  /** Why not mapped. */
  reason?: string;
}

export interface FrozenCapture {
  filesystems: FilesystemMap[];
  /** How the freeze was held: the guest's own script, or qemu-ga's freeze (no maps) when the script could not run. */
  via: 'guest-script' | 'agent-freeze';
  note?: string;
  /** Guest-measured: all filesystems frozen → all thawed (10 ms resolution). */
  freezeWindowMs: number | null;
  /** Guest-measured: script start → all frozen (the freeze syncs first). */
  freezeCallMs?: number;
  /** Guest-measured: the GETFSMAP readers, inside the window (overlapping the caller's work). */
  readMs?: number;
  /**
   * Host-measured: the guest seen frozen → its thaw reported (an upper bound: polling included).
   * The guest's own clock stops while the domain is paused, so this one counts a suspend in the window.
   */
  hostWindowMs?: number;
  /** Host-measured: the call → the guest's thaw reported (filesystem discovery included). */
  hostMs: number;
  /** What released the freeze: the host's word, or the guest's own deadline. */
  released?: 'go' | 'deadline';
}

export interface AgentFreezerOptions {
  /** The domain's live XML, to name each filesystem's disk by its libvirt target. */
  domainXml?: string;
  /** Extra time the guest waits for the host's word past the freeze timeout before it thaws on its own. Default 5 s. */
  guestGraceMs?: number;
  /**
   * Filesystems found beforehand (guestFilesystems), so the freeze does not wait for the ~10 agent
   * calls of the look-up. Only for a list taken just before: a filesystem mounted since is not
   * frozen (nor mapped: its disk region stays used).
   */
  filesystems?: GuestFilesystem[];
  /** Called with every capture (also kept as `last`). */
  onCapture?: (c: FrozenCapture) => void;
}

// The host polls the guest's "frozen" file and the script's exit this often at most; each agent
// call through libvirt takes longer than this anyway (a virsh process).
const POLL_MS = 20;

/**
 * A GuestAgent whose withFrozen freezes through the guest script and captures GETFSMAP maps. It
 * shares `agent`'s transport (close either, not both). Usable wherever a GuestAgent freezes
 * (rotateFrozen, Snapshot.take): `last` then holds the capture of the latest freeze.
 */
export class AgentMapFreezer extends GuestAgent {
  last?: FrozenCapture;

  constructor(agent: GuestAgent, private readonly opts: AgentFreezerOptions = {}) {
    super(agent.transport);
  }

  override async withFrozen<T>(fn: (signal: AbortSignal) => Promise<T>, opts: FrozenOptions = {}): Promise<T> {
    return (await this.freezeAndMap(fn, opts)).value;
  }

  /** Freezes, runs `fn`, thaws (always, as withFrozen), and returns `fn`'s value with the maps. */
  async freezeAndMap<T>(fn: (signal: AbortSignal) => Promise<T>, opts: FrozenOptions = {}): Promise<{ value: T; capture: FrozenCapture }> {
    const started = performance.now();
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const who = this.domain ?? this.transport.description;
    const filesystems = this.opts.filesystems ?? (await guestFilesystems(this, { domainXml: this.opts.domainXml }));
    // Deepest mountpoints first, as qemu-ga does (its mount list, reversed).
    const order = [...filesystems].sort((a, b) => depth(b.mountpoint) - depth(a.mountpoint));
    const dir = `/run/virtcbt-freeze-${randomBytes(6).toString('hex')}`;
    const guestDeadlineS = Math.ceil((timeoutMs + (this.opts.guestGraceMs ?? 5_000)) / 1000);

    let pid: number;
    try {
      ({ pid } = await this.transport.execute<{ pid: number }>(
        'guest-exec',
        { path: '/bin/sh', arg: ['-c', FREEZE_SCRIPT, 'virtcbt-freeze', dir, String(guestDeadlineS), ...order.map((f) => f.mountpoint)], 'capture-output': true },
        { signal: opts.signal },
      ));
    } catch (err) {
      if (!(err instanceof AgentCommandError)) throw err;
      return this.viaAgentFreeze(fn, opts, filesystems, started, `guest-exec refused (${err.desc})`);
    }

    // From here the guest may be frozen: every path ends by sending "go" and waiting for the thaw.
    const ctl = new AbortController();
    const timer = setTimeout(
      () => ctl.abort(new TimeoutError(`filesystems of ${who} frozen for ${timeoutMs} ms without the work finishing; thawed them`, {
        domain: this.domain,
        hint: 'raise the freeze timeout or make the frozen step faster (guest writes hang while frozen)',
      })),
      timeoutMs,
    );
    const deadline = opts.signal ? AbortSignal.any([opts.signal, ctl.signal]) : ctl.signal;
    let ok = false;
    let value: T | undefined;
    let failure: unknown;
    let early: { exitcode?: number; stdout: string; stderr: string } | undefined;
    let seenFrozen = 0;
    try {
      early = await this.waitFrozen(pid, dir, deadline);
      if (!early) {
        seenFrozen = performance.now();
        value = await untilAborted(fn(deadline), deadline, `work while the filesystems of ${who} are frozen`);
        ok = true;
      }
    } catch (err) {
      failure = err;
    } finally {
      clearTimeout(timer);
    }

    if (early) {
      // The script ended before freezing everything; it thawed what it had frozen on its way out.
      if (early.exitcode === EXIT_CANNOT) return this.viaAgentFreeze(fn, opts, filesystems, started, early.stderr.trim());
      throw new VirtcbtError(`the guest could not freeze its filesystems: ${early.stderr.trim() || `exit ${early.exitcode}`}`, {
        domain: this.domain,
        hint: 'check the guest\'s mounts (a filesystem that cannot be frozen), or retry',
      });
    }

    // Release: the "go" file (tmpfs, not frozen), then the script's report once it has thawed.
    let goError: unknown;
    await this.writeFile(`${dir}/go`, '', { timeoutMs: opts.thawTimeoutMs ?? 30_000 }).catch((e: unknown) => { goError = e; });
    let end: { exitcode?: number; stdout: string; stderr: string } | undefined;
    let endError: unknown;
    try {
      // Without the "go" the script still thaws at its deadline: wait for that too.
      const waitMs = goError === undefined ? (opts.thawTimeoutMs ?? 30_000) : guestDeadlineS * 1000 + 5_000;
      end = await this.waitExit(pid, waitMs);
    } catch (e) {
      endError = e;
    }
    const report = end ? parseScriptReport(end.stdout) : undefined;
    if (!report) {
      const why = endError ?? goError ?? new VirtcbtError(`the freeze script ended without its report (exit ${end?.exitcode}): ${end?.stderr.trim() ?? ''}`);
      throw new ThawFailedError(why, ok ? undefined : failure, {
        domain: this.domain,
        hint: `the guest thaws itself at the latest ${guestDeadlineS + 3} s after the freeze began (its script's deadline and watchdog); guest-fsfreeze-status cannot tell (qemu-ga does not hold this freeze): \`fsfreeze --unfreeze MOUNTPOINT\` in the guest thaws at once`,
      });
    }
    if (!ok) throw failure;
    const capture = this.captureOf(report, order, filesystems, started);
    capture.hostWindowMs = round(performance.now() - seenFrozen);
    this.last = capture;
    this.opts.onCapture?.(capture);
    return { value: value as T, capture };
  }

  /** undefined once the guest says it is frozen; the script's end when it exited first. */
  private async waitFrozen(pid: number, dir: string, signal: AbortSignal): Promise<{ exitcode?: number; stdout: string; stderr: string } | undefined> {
    for (;;) {
      if (signal.aborted) throw abortReason(signal, 'waiting for the guest to freeze');
      const [handle, status] = await Promise.all([
        this.transport.execute<number>('guest-file-open', { path: `${dir}/frozen`, mode: 'r' }, { signal }).catch((e: unknown) => {
          if (e instanceof AgentCommandError) return undefined; // not there yet
          throw e;
        }),
        this.execStatus(pid, signal),
      ]);
      if (handle !== undefined) {
        void this.transport.execute('guest-file-close', { handle }).catch(() => undefined);
        return undefined;
      }
      if (status) return status;
      await sleep(POLL_MS, signal);
    }
  }

  private async waitExit(pid: number, timeoutMs: number): Promise<{ exitcode?: number; stdout: string; stderr: string }> {
    const signal = deadlineSignal({ timeoutMs }, 'the guest command')!;
    try {
      for (;;) {
        const s = await this.execStatus(pid, signal);
        if (s) return s;
        await sleep(POLL_MS, signal);
      }
    } catch (err) {
      if (!signal.aborted) throw err;
      throw new TimeoutError(`the guest's freeze script (pid ${pid}) did not report its thaw within ${timeoutMs} ms`, { domain: this.domain, cause: err });
    }
  }

  private async execStatus(pid: number, signal: AbortSignal): Promise<{ exitcode?: number; stdout: string; stderr: string } | undefined> {
    const s = await this.transport.execute<{ exited: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string }>('guest-exec-status', { pid }, { signal });
    if (!s.exited) return undefined;
    return { exitcode: s.exitcode, stdout: Buffer.from(s['out-data'] ?? '', 'base64').toString('utf8'), stderr: Buffer.from(s['err-data'] ?? '', 'base64').toString('utf8') };
  }

  /** qemu-ga's own freeze: consistent, but no GETFSMAP can run inside it, so nothing is mapped. */
  private async viaAgentFreeze<T>(fn: (signal: AbortSignal) => Promise<T>, opts: FrozenOptions, filesystems: GuestFilesystem[], started: number, why: string): Promise<{ value: T; capture: FrozenCapture }> {
    let frozenAt = 0;
    const value = await super.withFrozen(async (signal) => {
      frozenAt = performance.now();
      return fn(signal);
    }, opts);
    const reason = `the guest could not run the map script (${why}): frozen through qemu-ga, which runs nothing while frozen`;
    const capture: FrozenCapture = {
      filesystems: filesystems.map((f) => unmapped(f, reason)),
      via: 'agent-freeze',
      note: reason,
      freezeWindowMs: round(performance.now() - frozenAt),
      hostMs: round(performance.now() - started),
    };
    this.last = capture;
    this.opts.onCapture?.(capture);
    return { value, capture };
  }

  private captureOf(report: ScriptReport, order: GuestFilesystem[], all: GuestFilesystem[], started: number): FrozenCapture {
    const t = report.times;
    const maps = order.map((f, i): FilesystemMap => {
      if (f.problem) return unmapped(f, f.problem);
      const m = report.maps[i];
      if (!m) return unmapped(f, 'the freeze script reported no map for it');
      if (m.rc !== 0) return unmapped(f, `GETFSMAP failed in the guest (xfs_io exit ${m.rc}): ${m.err || 'no message'}`);
      try {
        const records = parseFsmap(m.out);
        const free = freeExtents(records, f.devNumber ?? '');
        if (!records.some((r) => r.device === f.devNumber)) return unmapped(f, `GETFSMAP listed nothing on device ${f.devNumber} (it reports ${[...new Set(records.map((r) => r.device))].join(', ') || 'nothing'})`);
        const shift = (e: Extent) => ({ offset: e.offset + f.offset, length: e.length });
        return { ...f, mapped: true, free: free.map(shift), used: complement(free, f.size).map(shift) };
      } catch (err) {
        return unmapped(f, errorMessage(err));
      }
    });
    const byMount = new Map(maps.map((m) => [m.mountpoint, m]));
    return {
      filesystems: all.map((f) => byMount.get(f.mountpoint)!),
      via: 'guest-script',
      freezeWindowMs: round((t.thawed - t.frozen) * 1000),
      freezeCallMs: round((t.frozen - t.start) * 1000),
      readMs: round((t.mapped - t.frozen) * 1000),
      hostMs: round(performance.now() - started),
      released: report.released,
      note: report.released === 'deadline' ? 'the guest thawed at its own deadline: the host\'s word did not arrive' : undefined,
    };
  }
}

/**
 * Used byte extents of one disk of `size` bytes from a capture: everything except the free space
 * of the filesystems mapped on it (regions outside any mapped filesystem count as used), with the
 * reasons for what could not be mapped.
 */
export function agentDiskUsedMap(capture: FrozenCapture, disk: { target?: string; guestDisk?: string; size: number }): { used: Extent[]; unmapped: { mountpoint: string; reason: string }[] } {
  const on = (f: FilesystemMap) => (disk.target !== undefined && f.target === disk.target) || (disk.target === undefined && disk.guestDisk !== undefined && f.guestDisk === disk.guestDisk);
  const mine = capture.filesystems.filter((f) => on(f) || (f.problem !== undefined && f.target === disk.target));
  const free = merge(mine.filter((f) => f.mapped).flatMap((f) => f.free));
  return {
    used: complement(free, disk.size),
    unmapped: mine.filter((f) => !f.mapped).map((f) => ({ mountpoint: f.mountpoint, reason: f.reason ?? 'not mapped' })),
  };
}

function unmapped(f: GuestFilesystem, reason: string): FilesystemMap {
  const used = f.problem || f.size === 0 ? [] : [{ offset: f.offset, length: f.size }];
  return { ...f, mapped: false, used, free: [], reason };
}

const depth = (p: string) => p.split('/').filter(Boolean).length;
const round = (ms: number) => Math.round(ms * 10) / 10;

/** `p`, or the signal's reason as soon as it fires. */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  p.catch(() => {});
  if (signal.aborted) return Promise.reject(abortReason(signal, what));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortReason(signal, what));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (e: unknown) => { signal.removeEventListener('abort', onAbort); reject(e); },
    );
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortReason(signal, 'sleep'));
    const t = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve(); }, ms);
    const onAbort = (): void => { clearTimeout(t); reject(abortReason(signal, 'sleep')); };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
