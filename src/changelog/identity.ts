// The identity of a domain's change log: a random UUID given at `enable`, gone at `disable`. The one rule for
// whether something recorded against a change log (a backup chain, a sync target, a scan history) may be continued.

import { randomUUID } from 'node:crypto';

const LOG_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function newLogId(): string {
  return randomUUID();
}

export function isLogId(v: unknown): v is string {
  return typeof v === 'string' && LOG_ID.test(v);
}

/**
 * Whether something recorded under change log `recorded` may be continued with generations of change log `current`:
 * 'same' only when both are the same identity. Generations restart at every enable, so a number recorded under
 * another identity (or under none: written before identities existed) says nothing about this log's blocks, and what
 * it would continue must start over (a full copy).
 */
export function logContinuity(recorded: string | null | undefined, current: string): 'same' | 'unknown' | 'other' {
  if (recorded === undefined || recorded === null) return 'unknown';
  return recorded === current ? 'same' : 'other';
}
