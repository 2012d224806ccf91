// Deadlines and cancellation: every wait in virtcbt takes an AbortSignal and a deadline.
import { TimeoutError } from './errors.js';

export interface WaitOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/**
 * A signal that fires when `signal` does or when `timeoutMs` passes (with a TimeoutError). The
 * timer holds its controller: never `AbortSignal.any([s, AbortSignal.timeout(ms)])`, whose timeout
 * Node 20 lets a garbage collection drop (the composite holds its sources weakly, and the timer its
 * signal), so that the deadline silently never comes (nodejs/node#57736).
 */
export function deadlineSignal(opts: WaitOptions, what: string): AbortSignal | undefined {
  const signals: AbortSignal[] = [];
  if (opts.signal) signals.push(opts.signal);
  if (opts.timeoutMs !== undefined && Number.isFinite(opts.timeoutMs)) {
    const ctl = new AbortController();
    const t = setTimeout(
      () => ctl.abort(new TimeoutError(`${what}: no answer within ${opts.timeoutMs} ms`)),
      opts.timeoutMs,
    );
    t.unref();
    signals.push(ctl.signal);
  }
  if (signals.length === 0) return undefined;
  if (signals.length === 1) return signals[0];
  return AbortSignal.any(signals);
}

/** The reason a signal aborted, as an Error. */
export function abortReason(signal: AbortSignal, what: string): Error {
  const r: unknown = signal.reason;
  if (r instanceof Error) return r;
  return new TimeoutError(`${what}: aborted${r === undefined ? '' : ` (${String(r)})`}`);
}

/** Resolves when `fn()` returns a truthy value, polling every `intervalMs`, or rejects at the deadline. */
export async function pollUntil<T>(
  fn: () => T | Promise<T>,
  what: string,
  opts: WaitOptions & { intervalMs?: number } = {},
): Promise<NonNullable<T>> {
  const signal = deadlineSignal({ timeoutMs: 30_000, ...opts }, what);
  const interval = opts.intervalMs ?? 50;
  for (;;) {
    if (signal?.aborted) throw abortReason(signal, what);
    const v = await fn();
    if (v) return v as NonNullable<T>;
    await new Promise<void>((resolve) => {
      const onAbort = () => { clearTimeout(t); resolve(); };
      const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, interval);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
