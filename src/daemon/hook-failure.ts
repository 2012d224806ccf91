// Whether a hook event that failed is worth retrying: the spool keeps events that failed for a
// passing reason and moves aside those that cannot work by waiting.
import { DomainNotFoundError, isLibvirtUnreachable } from '../libvirt/index.js';
import { QmpConnectionError } from '../qmp/index.js';
import { TimeoutError, UsageError } from '../util/errors.js';
import type { Verdict } from './spool.js';

/** errno codes of a socket that is not there yet or went away: QEMU starting, restarting. */
const PASSING_ERRNO = new Set(['ENOENT', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EAGAIN']);

export function hookFailureVerdict(err: unknown): Verdict {
  // libvirtd down or restarting: waiting is all there is to do, and it costs nothing.
  if (isLibvirtUnreachable(err)) return 'wait';
  if (err instanceof DomainNotFoundError || err instanceof UsageError) return 'fail';
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof TimeoutError || e instanceof QmpConnectionError || (e.name === 'AbortError' || e.name === 'TimeoutError')) return 'retry';
    if (PASSING_ERRNO.has((e as NodeJS.ErrnoException).code ?? '')) return 'retry';
  }
  return 'fail';
}
