// A deadline joined to a caller's signal must fire even when a garbage collection runs meanwhile.
// Node 20's AbortSignal.any holds its sources weakly and AbortSignal.timeout's timer holds its
// signal weakly: joined that way, a collection drops the timeout and the deadline never comes.
// That is how a scan whose scanner never answered waited past scan.timeoutSeconds.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { deadlineSignal } from '../src/util/abort.js';
import { TimeoutError } from '../src/util/errors.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Collects garbage a few times over `ms`, then says whether `signal` fired. */
async function firesThroughCollections(signal: AbortSignal, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until && !signal.aborted) {
    gc();
    await new Promise((r) => setTimeout(r, 10));
  }
  return signal.aborted;
}

describe('deadlineSignal', () => {
  it('fires at its deadline, joined to a caller\'s signal, through garbage collections', async () => {
    const caller = new AbortController();
    const signal = deadlineSignal({ signal: caller.signal, timeoutMs: 50 }, 'the scan of vm1')!;
    expect(await firesThroughCollections(signal, 2_000)).toBe(true);
    expect(signal.reason).toBeInstanceOf(TimeoutError);
    expect(String(signal.reason.message)).toMatch(/the scan of vm1: no answer within 50 ms/);
    expect(caller.signal.aborted).toBe(false);
  });

  it('fires when the caller\'s signal does, before the deadline', async () => {
    const caller = new AbortController();
    const signal = deadlineSignal({ signal: caller.signal, timeoutMs: 60_000 }, 'x')!;
    gc();
    caller.abort(new Error('cancelled'));
    expect(signal.aborted).toBe(true);
    expect(signal.reason.message).toBe('cancelled');
  });
});
