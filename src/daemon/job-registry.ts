// Every job virtcbtd runs on a domain (backup, pass export; later sync and scan) as one record:
// an id the admin can type, its state and progress, and the one AbortSignal that reaches its work.
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { NotFoundError, VirtcbtError, errorMessage } from '../util/errors.js';

export type JobKind = 'backup' | 'pass-export' | 'sync' | 'scan';
export type JobState = 'queued' | 'running' | 'cancelling' | 'done' | 'failed' | 'cancelled';

/** Ids start with the kind's letters, so `virtcbt jobs cancel b-3f2a` reads as "that backup". */
const PREFIX: Record<JobKind, string> = { backup: 'b', 'pass-export': 'p', sync: 'sy', scan: 'sc' };
/** An id is the prefix and this many random hex digits: short enough to type, and (unlike a counter) not handed out again after a restart. */
const ID_BYTES = 2;
/** Finished jobs stay listed this long, so that `virtcbt jobs` still shows how a job just ended. */
const KEEP_FINISHED_MS = 10 * 60_000;
/** ... but at most this many (a timer that backs up many domains must not grow the list without bound). */
const KEEP_FINISHED = 100;

export interface JobProgress {
  /** What the job is doing now (a backup's step: lock, snapshot, copy, manifest, ...). */
  step?: string;
  /** Bytes handled so far and in all, when known. */
  done?: number;
  total?: number;
}

export interface JobInfo {
  id: string;
  kind: JobKind;
  domain: string;
  consumer?: string;
  state: JobState;
  progress: JobProgress;
  /** When the job was accepted (it may wait for the domain's queue). */
  queuedAt: string;
  /** When it began its work; undefined while queued. */
  startedAt?: string;
  endedAt?: string;
  /** Why it was cancelled (while cancelling, and after). */
  cancelReason?: string;
  /** How a failed job failed. */
  error?: string;
}

/** A job's cancellation: the reason every step that sees the signal throws. */
export class JobCancelledError extends VirtcbtError {}

/** No job has this id (exit code 4, HTTP 404, as for other things that are not found). */
export class UnknownJobError extends NotFoundError {}

/** What a job's work gets: its signal, and where to report progress. */
export interface Job {
  readonly id: string;
  readonly signal: AbortSignal;
  /** Merges `p` into the job's progress (a new step clears done/total unless given). */
  progress(p: JobProgress): void;
  /**
   * The job leaves the queue and starts its work (the domain's queue let it in). Throws the
   * cancellation if the job was cancelled meanwhile: its work must then not begin.
   */
  started(): void;
}

interface Entry {
  info: JobInfo;
  ctl: AbortController;
  ended: Promise<void>;
  end: () => void;
}

export interface JobRegistryOptions {
  now?: () => number;
}

export class JobRegistry {
  private jobs = new Map<string, Entry>();
  private closedReason?: string;

  constructor(private readonly opts: JobRegistryOptions = {}) {}

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  private newId(kind: JobKind): string {
    for (;;) {
      const id = `${PREFIX[kind]}-${randomBytes(ID_BYTES).toString('hex')}`;
      if (!this.jobs.has(id)) return id;
    }
  }

  /**
   * Runs `fn` as a job: listed at once (queued until `job.started()`), its outcome kept for a
   * while after. A job whose signal fired and whose work then failed ends `cancelled`: the work
   * unwinds through its own failure path, so what it throws then is the cancellation's effect.
   * A job cancelled while still queued ends at once (it would otherwise wait for the job ahead of
   * it in the domain's queue); its work throws at `started()` when its turn comes.
   */
  run<T>(kind: JobKind, domain: string, meta: { consumer?: string }, fn: (job: Job) => Promise<T>): Promise<T> {
    if (this.closedReason !== undefined) {
      return Promise.reject(new JobCancelledError(`no new ${kind} job: ${this.closedReason}`, { domain, hint: 'Run it again once virtcbtd is back' }));
    }
    const ctl = new AbortController();
    // Every NBD connection, endpoint and wait of the job listens to it: many disks pass Node's default warning limit of 10.
    setMaxListeners(256, ctl.signal);
    let end!: () => void;
    const ended = new Promise<void>((r) => { end = r; });
    const info: JobInfo = { id: this.newId(kind), kind, domain, consumer: meta.consumer, state: 'queued', progress: {}, queuedAt: new Date(this.now()).toISOString() };
    const e: Entry = { info, ctl, ended, end };
    this.jobs.set(info.id, e);
    this.prune();
    const job: Job = {
      id: info.id,
      signal: ctl.signal,
      progress: (p) => {
        if (p.step !== undefined && p.step !== info.progress.step) info.progress = { ...p };
        else info.progress = { ...info.progress, ...p };
      },
      started: () => {
        ctl.signal.throwIfAborted();
        if (info.state === 'queued') info.state = 'running';
        info.startedAt ??= new Date(this.now()).toISOString();
      },
    };
    let p: Promise<T>;
    try {
      p = fn(job);
    } catch (err) {
      p = Promise.reject(err);
    }
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const finish = (state: 'done' | 'failed', v: T | undefined, err?: unknown) => {
        if (settled) return;
        settled = true;
        // A cancel that came too late (a backup past its manifest completes) leaves the job done.
        info.state = state === 'failed' && ctl.signal.aborted ? 'cancelled' : state;
        if (info.state === 'failed') info.error = errorMessage(err);
        // A finished job's bytes stay; its last step (a backup's release after its result) is no news.
        if (info.state === 'done') delete info.progress.step;
        info.endedAt = new Date(this.now()).toISOString();
        end();
        if (state === 'done') resolve(v as T);
        else reject(err);
      };
      ctl.signal.addEventListener('abort', () => {
        if (info.startedAt === undefined) finish('failed', undefined, ctl.signal.reason);
      }, { once: true });
      p.then((v) => finish('done', v), (err: unknown) => finish('failed', undefined, err));
    });
  }

  list(): JobInfo[] {
    this.prune();
    return [...this.jobs.values()].map((e) => ({ ...e.info, progress: { ...e.info.progress } }));
  }

  get(id: string): JobInfo {
    const e = this.jobs.get(id);
    if (!e) throw unknownJob(id);
    return { ...e.info, progress: { ...e.info.progress } };
  }

  /**
   * Cancels job `id` and resolves once it has ended (its work unwound: for a backup, the pass
   * aborted, the snapshot released, the partial files removed). A job that already ended is
   * reported as it ended.
   */
  async cancel(id: string, reason: string): Promise<JobInfo> {
    const e = this.jobs.get(id);
    if (!e) throw unknownJob(id);
    this.abort(e, reason);
    await e.ended;
    return this.get(id);
  }

  private abort(e: Entry, reason: string): void {
    if (e.info.endedAt !== undefined || e.ctl.signal.aborted) return;
    e.info.state = 'cancelling';
    e.info.cancelReason = reason;
    e.ctl.abort(new JobCancelledError(`${e.info.kind} job ${e.info.id} was cancelled (${reason})`, {
      domain: e.info.domain, hint: 'Run it again when wanted',
    }));
  }

  /**
   * Shutdown: refuses new jobs, cancels every one not yet ended, and resolves when all have ended
   * or `timeoutMs` passed (true when all ended).
   */
  async cancelAll(reason: string, timeoutMs: number): Promise<boolean> {
    this.closedReason = reason;
    const live = [...this.jobs.values()].filter((e) => e.info.endedAt === undefined);
    for (const e of live) this.abort(e, reason);
    if (live.length === 0) return true;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<false>((r) => { timer = setTimeout(() => r(false), timeoutMs); });
    try {
      return await Promise.race([Promise.all(live.map((e) => e.ended)).then(() => true as const), late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Drops finished jobs older than KEEP_FINISHED_MS, and the oldest beyond KEEP_FINISHED. */
  private prune(): void {
    const now = this.now();
    const finished = [...this.jobs.values()].filter((e) => e.info.endedAt !== undefined);
    finished.sort((a, b) => Date.parse(a.info.endedAt!) - Date.parse(b.info.endedAt!));
    finished.forEach((e, i) => {
      if (now - Date.parse(e.info.endedAt!) > KEEP_FINISHED_MS || finished.length - i > KEEP_FINISHED) this.jobs.delete(e.info.id);
    });
  }
}

function unknownJob(id: string): UnknownJobError {
  return new UnknownJobError(`no job '${id}'`, {
    hint: `\`virtcbt jobs\` lists the jobs virtcbtd runs and those that ended in the last ${KEEP_FINISHED_MS / 60_000} minutes`,
  });
}
