// The hook's spool: event files written by hooks/qemu.d/virtcbt, picked up by inotify while
// the daemon runs and replayed in order when it starts. An event is deleted only after it was
// handled, so a daemon killed mid-event sees it again; one that failed for a passing reason
// (libvirt restarting, a QMP socket not there yet) stays and is retried, one that can never work
// is moved into failed/ with a log line. Anything in the spool that is not a regular file is
// skipped (and reported once), never opened in a way that could block.
import { existsSync, watch, type FSWatcher } from 'node:fs';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { NotRegularFileError, readRegularFile } from '../util/regular-file.js';

export interface HookEvent {
  file: string;
  domain: string;
  /** prepare, start, started, stopped, release, migrate, restore, reconnect */
  op: string;
  sub: string;
  extra: string;
  /** Domain XML libvirt passed on stdin (may be empty). */
  xml: string;
}

export function parseEventFile(file: string, text: string): HookEvent {
  const split = text.indexOf('\n\n');
  const head = split < 0 ? text : text.slice(0, split);
  const fields: Record<string, string> = {};
  for (const line of head.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return {
    file,
    domain: fields.domain ?? '',
    op: fields.op ?? '',
    sub: fields.sub ?? '',
    extra: fields.extra ?? '',
    xml: split < 0 ? '' : text.slice(split + 2),
  };
}

/** A whole event as the hook writes it: domain= and op= lines, then the blank line that ends the header. */
export function isWholeEvent(text: string): boolean {
  const split = text.indexOf('\n\n');
  if (split < 0) return false;
  const head = text.slice(0, split).split('\n');
  return head.some((l) => /^domain=./.test(l)) && head.some((l) => /^op=./.test(l));
}

/** How a failed event is treated: retried later, or given up on. */
export type Verdict =
  /** Will likely work later and costs nothing to wait for (libvirt down): retried without limit. */
  | 'wait'
  /** May work later (a socket not there yet, a timeout): retried up to MAX_ATTEMPTS times. */
  | 'retry'
  /** Will not work by waiting: moved into failed/. */
  | 'fail';

export interface SpoolHandlers {
  handle: (ev: HookEvent) => Promise<void>;
  classify: (err: unknown) => Verdict;
  /** Log lines: what happened to which file, and why. */
  report: (level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>) => void;
}

/** A hook event is a few lines plus the domain XML: anything bigger is not one. */
const MAX_EVENT_BYTES = 16 << 20;
/** Retries of an event that failed with verdict 'retry' before it is moved aside (~4 min in all with the back-off). */
const MAX_ATTEMPTS = 10;
/** Back-off between retries of one event: doubles from the first to the last. */
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 30_000;

interface Pending {
  attempts: number;
  due: number;
  delayMs: number;
}

interface Spooled {
  name: string;
  file: string;
  ev: HookEvent;
}

export class Spool {
  private watcher?: FSWatcher;
  /** The spool being read: resolves with the workers it started. */
  private scanning?: Promise<Promise<void>[]>;
  private again = false;
  /** Domains whose events a worker is handling. */
  private busy = new Set<string>();
  private pending = new Map<string, Pending>();
  private reportedJunk = new Set<string>();
  private retryTimer?: NodeJS.Timeout;
  private stopped = false;

  constructor(readonly dir: string, private readonly h: SpoolHandlers) {}

  get failedDir(): string {
    return join(this.dir, 'failed');
  }

  /**
   * Watches the spool and starts replaying what is in it; resolves with the replay under way (its
   * promise in `replayed`), so that a daemon can listen meanwhile: an event for a domain whose QEMU
   * hangs may take a QMP deadline, and the control socket must not wait for it.
   */
  async start(): Promise<{ replayed: Promise<void> }> {
    await mkdir(this.dir, { recursive: true, mode: 0o750 });
    this.watcher = watch(this.dir, () => void this.drain());
    this.watcher.on('error', (err) => this.h.report('error', 'watching the hook spool failed', { dir: this.dir, error: err.message }));
    return { replayed: this.drain() };
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.watcher?.close();
    this.watcher = undefined;
  }

  /**
   * Handles every spooled event: one domain's in name (time) order, domains side by side, so that
   * a domain whose QEMU hangs holds only its own events. A call while the spool is being scanned
   * makes the scan run again; events of a domain whose events are being handled wait for that
   * worker, which looks again when it is done. Resolves once the events found are handled (or held
   * for a retry).
   */
  drain(): Promise<void> {
    if (this.scanning) {
      this.again = true;
    } else {
      this.scanning = (async () => {
        const workers: Promise<void>[] = [];
        for (;;) {
          this.again = false;
          workers.push(...await this.scanOnce());
          // Decided and cleared in one step: a call from now on starts a scan of its own.
          if (!this.again || this.stopped) {
            this.scanning = undefined;
            this.scheduleRetry();
            return workers;
          }
        }
      })();
    }
    return this.scanning.then((workers) => Promise.all(workers)).then(() => undefined);
  }

  /** Reads the spool and starts a worker for each domain with events to handle and none running. */
  private async scanOnce(): Promise<Promise<void>[]> {
    // Domains with a worker now are left to it, even if it ends while this scan reads: what this
    // scan read of them may be stale (an event that worker has handled since), and its end makes
    // the spool be read again.
    const busy = new Set(this.busy);
    const names = (await readdir(this.dir).catch(() => [] as string[])).filter((n) => n.endsWith('.event')).sort();
    for (const k of this.pending.keys()) if (!names.includes(k)) this.pending.delete(k);
    for (const k of this.reportedJunk) if (!names.includes(k)) this.reportedJunk.delete(k);
    const byDomain = new Map<string, Spooled[]>();
    for (const name of names) {
      if (this.stopped) return [];
      const file = join(this.dir, name);
      const text = await this.read(name, file);
      if (text === undefined) continue;
      // The hook renames a whole event into place. A file without its header's end, a domain or an
      // op is still being written by something else, or is not an event: handling it would remove it.
      if (!isWholeEvent(text)) {
        this.reportJunk(name, file, 'an incomplete event (no domain, op or end of header)');
        continue;
      }
      this.reportedJunk.delete(name);
      const ev = parseEventFile(file, text);
      const list = byDomain.get(ev.domain) ?? [];
      list.push({ name, file, ev });
      byDomain.set(ev.domain, list);
    }
    const started: Promise<void>[] = [];
    for (const [domain, events] of byDomain) {
      // A domain with an event waiting for a retry: its later events wait too (order matters:
      // `started` before `stopped`); the retry timer comes back for it.
      const first = this.pending.get(events[0]!.name);
      if (busy.has(domain) || (first && Date.now() < first.due)) continue;
      const worker = this.handleInOrder(events).catch((err: unknown) => {
        // Not an event's failure (those are classified above): the spool itself, e.g. a file it cannot remove.
        this.h.report('error', 'handling the hook spool failed; it is read again at the next event', { dir: this.dir, domain, error: err });
      }).finally(() => {
        this.busy.delete(domain);
        // Events of this domain that came while it worked, and the retry of one it left waiting.
        if (!this.stopped) void this.drain();
      });
      this.busy.add(domain);
      started.push(worker);
    }
    return started;
  }

  /** One domain's events in order, until one fails and stays for a retry. */
  private async handleInOrder(events: Spooled[]): Promise<void> {
    for (const { name, file, ev } of events) {
      if (this.stopped) return;
      if (!existsSync(file)) continue; // handled and removed since it was read
      const p = this.pending.get(name);
      if (p && Date.now() < p.due) return;
      try {
        await this.h.handle(ev);
      } catch (err) {
        if (await this.failed(name, file, ev, err, p)) return;
        continue;
      }
      if (p) this.h.report('info', 'hook event handled on retry', { file, domain: ev.domain, op: ev.op, attempts: p.attempts + 1 });
      this.pending.delete(name);
      await rm(file, { force: true });
    }
  }

  /** Junk in the spool is reported once and left alone. */
  private reportJunk(name: string, file: string, what: string): void {
    if (this.reportedJunk.has(name)) return;
    this.reportedJunk.add(name);
    this.h.report('warn', `skipping ${what} in the hook spool: it is not an event virtcbt wrote; remove it`, { file });
  }

  /**
   * The event's text, or undefined when it is not a readable regular file (readRegularFile: a
   * FIFO would otherwise wait for a writer forever).
   */

  private async read(name: string, file: string): Promise<string | undefined> {
    const junk = (what: string) => {
      this.reportJunk(name, file, what);
      return undefined;
    };
    try {
      return (await readRegularFile(file, MAX_EVENT_BYTES)).text;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // handled and removed meanwhile
      if (err instanceof NotRegularFileError) return junk(err.what);
      return junk(`an unreadable file (${(err as Error).message})`);
    }
  }

  /** Records a failed event; true when it stays in the spool for a retry. */
  private async failed(name: string, file: string, ev: HookEvent, err: unknown, p: Pending | undefined): Promise<boolean> {
    const verdict = this.h.classify(err);
    const attempts = (p?.attempts ?? 0) + 1;
    const fields = { file, domain: ev.domain, op: ev.op, error: err };
    if (verdict === 'wait' || (verdict === 'retry' && attempts < MAX_ATTEMPTS)) {
      const delayMs = p ? Math.min(p.delayMs * 2, RETRY_MAX_MS) : RETRY_FIRST_MS;
      this.pending.set(name, { attempts, due: Date.now() + delayMs, delayMs });
      // Once per event: a libvirtd down for an hour must not fill the journal.
      if (!p) this.h.report('warn', 'hook event failed; it stays in the spool and is retried', fields);
      return true;
    }
    this.pending.delete(name);
    const aside = join(this.failedDir, name);
    this.h.report('error', `hook event failed${verdict === 'retry' ? ` ${attempts} times` : ''}; moved aside`, {
      ...fields, movedTo: aside, hint: `virtcbtd folds the domain at its next start or hook event; check with \`virtcbt status ${ev.domain}\`, then delete the file`,
    });
    try {
      await mkdir(this.failedDir, { recursive: true, mode: 0o750 });
      await rename(file, aside);
    } catch (e) {
      this.h.report('error', 'could not move a failed hook event aside; removing it', { file, error: (e as Error).message });
      await rm(file, { force: true }).catch(() => undefined);
    }
    return false;
  }

  private scheduleRetry(): void {
    clearTimeout(this.retryTimer);
    if (this.stopped || this.pending.size === 0) return;
    const due = Math.min(...[...this.pending.values()].map((p) => p.due));
    this.retryTimer = setTimeout(() => void this.drain(), Math.max(0, due - Date.now()));
  }
}

