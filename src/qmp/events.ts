// QMP events: typed payloads for the events virtcbt reacts to, listeners with a name filter, and waitFor.
import { TimeoutError } from '../util/errors.js';
import { abortReason } from '../util/abort.js';
import type { QmpTimestamp } from './framing.js';
import type { JobStatus } from './types.js';

/** Payloads of the events virtcbt uses (QEMU 7.2 qapi/run-state.json, block-core.json, job.json, block-export.json). */
export interface QmpEventMap {
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
  SHUTDOWN: { guest: boolean; reason: string };
  POWERDOWN: Record<string, never>;
  RESET: { guest: boolean; reason: string };
  JOB_STATUS_CHANGE: { id: string; status: JobStatus };
  BLOCK_JOB_COMPLETED: { type: string; device: string; len: number; offset: number; speed: number; error?: string };
  BLOCK_JOB_CANCELLED: { type: string; device: string; len: number; offset: number; speed: number };
  BLOCK_JOB_ERROR: { device: string; operation: 'read' | 'write'; action: 'ignore' | 'report' | 'stop' };
  BLOCK_JOB_READY: { type: string; device: string; len: number; offset: number; speed: number };
  BLOCK_JOB_PENDING: { type: string; id: string };
  BLOCK_EXPORT_DELETED: { id: string };
  BLOCK_IO_ERROR: {
    device: string;
    'node-name'?: string;
    operation: 'read' | 'write';
    action: 'ignore' | 'report' | 'stop';
    nospace?: boolean;
    reason: string;
  };
  DEVICE_DELETED: { device?: string; path: string };
}

export type QmpEventName = keyof QmpEventMap;

/** One event as QEMU sent it; `data` is typed for the events in QmpEventMap. */
export interface QmpEvent<E extends string = string> {
  event: E;
  data: E extends QmpEventName ? QmpEventMap[E] : Record<string, unknown>;
  timestamp: QmpTimestamp;
}

export type QmpEventListener<E extends string = string> = (event: QmpEvent<E>) => void;

export interface WaitForOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

interface Waiter {
  name: string;
  reject(err: Error): void;
}

/** Fan-out of events to listeners; '*' receives every event. A throwing listener does not stop the others. */
export class EventHub {
  private readonly listeners = new Map<string, Set<QmpEventListener>>();
  private readonly waiters = new Set<Waiter>();
  private closedWith: Error | undefined;

  constructor(private readonly onListenerError: (err: unknown, event: QmpEvent) => void) {}

  on(name: '*', listener: QmpEventListener): () => void;
  on<E extends string>(name: E, listener: QmpEventListener<E>): () => void;
  on<E extends string>(name: E | '*', listener: QmpEventListener<E>): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    // A fresh wrapper per registration, so the same function registered twice is removed once per unsubscribe.
    const entry: QmpEventListener = (ev) => listener(ev as QmpEvent<E>);
    set.add(entry);
    return () => {
      set.delete(entry);
      if (set.size === 0 && this.listeners.get(name) === set) this.listeners.delete(name);
    };
  }

  emit(event: QmpEvent): void {
    for (const key of [event.event, '*']) {
      const set = this.listeners.get(key);
      if (!set) continue;
      for (const l of [...set]) {
        try {
          l(event);
        } catch (err) {
          this.onListenerError(err, event);
        }
      }
    }
  }

  /**
   * The next event named `name` (that `predicate` accepts). Register it BEFORE sending the command
   * that causes the event, because QEMU may send the event before the command's reply:
   *
   *     const stopped = qmp.waitFor('STOP');
   *     await qmp.execute('stop');
   *     await stopped;
   *
   * The returned promise is marked handled, so abandoning it (because the command failed) never
   * raises an unhandled rejection; awaiting it still throws.
   */
  waitFor<E extends string>(
    name: E,
    predicate?: (event: QmpEvent<E>) => boolean,
    opts: WaitForOptions = {},
  ): Promise<QmpEvent<E>> {
    const p = new Promise<QmpEvent<E>>((resolve, reject) => {
      if (this.closedWith) {
        reject(this.closedWith);
        return;
      }
      const what = `waiting for QMP event ${name}`;
      if (opts.signal?.aborted) {
        reject(abortReason(opts.signal, what));
        return;
      }
      let timer: NodeJS.Timeout | undefined;
      const finish = (): void => {
        unsubscribe();
        this.waiters.delete(waiter);
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      const waiter: Waiter = {
        name,
        reject: (err) => {
          finish();
          reject(err);
        },
      };
      const onAbort = (): void => waiter.reject(abortReason(opts.signal!, what));
      const unsubscribe = this.on<E>(name, (ev) => {
        let ok = true;
        if (predicate) {
          try {
            ok = predicate(ev);
          } catch (err) {
            waiter.reject(err instanceof Error ? err : new Error(String(err)));
            return;
          }
        }
        if (!ok) return;
        finish();
        resolve(ev);
      });
      this.waiters.add(waiter);
      if (opts.timeoutMs !== undefined && Number.isFinite(opts.timeoutMs)) {
        timer = setTimeout(() => waiter.reject(new TimeoutError(`${what}: none within ${opts.timeoutMs} ms`)), opts.timeoutMs);
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
    p.catch(() => {});
    return p;
  }

  /** The connection ended: every waiter is rejected with `err`, and later waitFor calls fail at once. */
  close(err: Error): void {
    this.closedWith ??= err;
    for (const w of [...this.waiters]) w.reject(err);
  }
}
