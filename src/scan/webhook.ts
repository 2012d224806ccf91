// The optional webhook: each quarantine and release POSTed as JSON to scan.webhook. It runs
// beside the quarantine, never before it: a dead or slow receiver only costs a log line.
import { deadlineSignal } from '../util/abort.js';
import type { Logger } from '../util/log.js';
import { errorMessage } from '../util/errors.js';

/** Long enough for a chat or ticket service on another continent, short enough not to pile up. */
export const WEBHOOK_TIMEOUT_MS = 10_000;

/** POSTs `body`; resolves true when the receiver answered 2xx, false (logged) otherwise. Never throws. */
export async function postWebhook(url: string, body: unknown, logger: Logger, fields: Record<string, unknown> = {}): Promise<boolean> {
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'user-agent': 'virtcbtd' },
      body: JSON.stringify(body),
      signal: deadlineSignal({ timeoutMs: WEBHOOK_TIMEOUT_MS }, 'the quarantine webhook'),
      redirect: 'error',
    });
    // Drain so the connection is freed; the receiver's answer means nothing to us.
    await res.arrayBuffer().catch(() => undefined);
    if (!res.ok) {
      logger.warn('quarantine webhook refused the event', { ...fields, url: redact(url), status: res.status });
      return false;
    }
    logger.debug('quarantine webhook delivered', { ...fields, url: redact(url) });
    return true;
  } catch (err) {
    const cause = (err as { cause?: unknown }).cause;
    logger.warn('quarantine webhook failed; the quarantine itself is in place', {
      ...fields, url: redact(url), error: errorMessage(err) + (cause ? ` (${errorMessage(cause)})` : ''),
    });
    return false;
  }
}

/** The URL without user:password, which must not end up in the journal. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    return u.toString();
  } catch {
    return '(invalid URL)';
  }
}
