// Guest filesystem freeze around the rotation transaction: freeze → transaction → thaw, with the
// window measured. Without a usable agent the backup is crash-consistent, and says so.
import { GuestAgent, ThawFailedError } from '../guest/index.js';
import type { RotateResult } from '../reconciler/index.js';
import { VirtcbtError, errorMessage } from '../util/errors.js';

export interface FreezeOutcome {
  consistency: 'filesystem' | 'crash';
  note?: string;
  /** From the freeze's answer to the thaw's answer: the longest the guest's writes were held. */
  freezeWindowMs: number | null;
  /** How long the freeze call itself took (the guest syncs its filesystems first). */
  freezeCallMs?: number;
  /** The thaw failed after the transaction had run (the guest may still be frozen). */
  thawError?: string;
}

/** Where a freeze is recorded while it lasts (virtcbtd: a file per domain in its state directory). */
export interface FreezeMarker {
  set(): Promise<void>;
  clear(): Promise<void>;
}

export type Rotate = (aroundTransaction?: (run: () => Promise<void>) => Promise<void>) => Promise<RotateResult>;

export interface FreezeOptions {
  freezeTimeoutMs: number;
  noAgentReason?: string;
  /**
   * Records that this process froze the guest, so that a daemon killed in between thaws it when it
   * starts again: `set` is waited for before the freeze; `clear`, after a successful thaw, is not,
   * so the marker must keep its own writes and removals in order.
   */
  marker?: FreezeMarker;
  /** Fault injection for crash tests: called with the guest frozen, after the transaction. */
  whileFrozen?: () => void | Promise<void>;
  /**
   * Send the freeze at once, before `rotate` prepares its transaction, rather than when it gets
   * there: the guest's freeze call (it syncs its filesystems) then overlaps the preparation. Only
   * for a preparation known to be short, since the guest waits frozen for whatever is left of it.
   */
  early?: boolean;
}

/** One freeze of the guest, held until `release()`; always thawed (see GuestAgent.withFrozen). */
class FreezeCycle {
  private cycle?: Promise<void>;
  private frozen?: Promise<void>;
  private release?: () => void;
  private ended = false;
  calledAt = 0;
  frozenAt = 0;
  thawedAt = 0;
  thawError?: string;

  constructor(private readonly agent: GuestAgent, private readonly opts: FreezeOptions) {}

  /** Sends the freeze (once); resolves when the guest answered it, rejects when it failed. */
  start(): Promise<void> {
    if (this.frozen) return this.frozen;
    let onFrozen!: () => void;
    const answered = new Promise<void>((r) => { onFrozen = r; });
    const held = new Promise<void>((r) => { this.release = r; });
    this.cycle = (async () => {
      await this.opts.marker?.set();
      this.calledAt = performance.now();
      try {
        await this.agent.withFrozen(async (signal) => {
          this.frozenAt = performance.now();
          onFrozen();
          await new Promise<void>((resolve, reject) => {
            void held.then(resolve);
            signal.addEventListener('abort', () => reject(signal.reason), { once: true });
          });
        }, { timeoutMs: this.opts.freezeTimeoutMs });
        this.thawedAt = performance.now();
        // Not waited for (a removal can wait behind the repository's fsyncs on the same disk):
        // the marker keeps its own writes in order, and one left behind only thaws a thawed guest.
        void this.opts.marker?.clear().catch(() => undefined);
      } catch (err) {
        // Held and released, but the thaw failed: the caller's work stands; the marker stays for the next start.
        if (err instanceof ThawFailedError && err.original === undefined) {
          this.thawedAt = performance.now();
          this.thawError = errorMessage(err.thawError);
          return;
        }
        if (!(err instanceof ThawFailedError)) await this.opts.marker?.clear();
        throw err;
      } finally {
        this.ended = true;
      }
    })();
    this.cycle.catch(() => undefined);
    // The cycle ending before the answer means the freeze failed (the guest was thawed).
    this.frozen = Promise.race([answered, this.cycle.then(() => {
      throw new VirtcbtError('the guest agent\'s freeze ended before it was used');
    })]);
    return this.frozen;
  }

  /** Frozen now: the freeze answered and neither a timeout nor a failure has thawed the guest since. */
  async hold(): Promise<void> {
    await this.start();
    if (!this.ended) return;
    // Thawed since it answered (the freeze timed out): the cycle's own error says why.
    await this.cycle;
    throw new VirtcbtError('the guest was thawed before the snapshot could be taken');
  }

  /** Thaws (once); the answer comes with `end()`. */
  thaw(): void {
    this.release?.();
  }

  /** Thaws and waits for the guest's answer. Rejects when the freeze failed or timed out. */
  async end(): Promise<void> {
    if (!this.cycle) return;
    this.thaw();
    await this.cycle;
  }
}

/**
 * Runs `rotate` with the guest frozen around its transaction when `agent` is given. The thaw is
 * sent as soon as the transaction is done and answered while `rotate` goes on (its folds). If the
 * freeze itself fails (nothing happened in QEMU then), rotates again without it: a
 * crash-consistent backup beats none, and the result says why it is one.
 */
export async function rotateFrozen(rotate: Rotate, agent: GuestAgent | undefined, opts: FreezeOptions): Promise<{ rot: RotateResult; freeze: FreezeOutcome }> {
  if (!agent) {
    return { rot: await rotate(), freeze: { consistency: 'crash', note: opts.noAgentReason ?? 'no guest agent', freezeWindowMs: null } };
  }
  const cycle = new FreezeCycle(agent, opts);
  if (opts.early) void cycle.start().catch(() => undefined);
  let ran = false;
  const around = async (run: () => Promise<void>) => {
    await cycle.hold();
    ran = true;
    try {
      await run();
      await opts.whileFrozen?.();
    } catch (err) {
      // The transaction failed: thaw before the rotation reports it.
      await cycle.end().catch(() => undefined);
      throw err;
    }
    // Must not fail from here on (the rotation is done in QEMU): the thaw is answered in end().
    cycle.thaw();
  };
  let rot: RotateResult;
  try {
    rot = await rotate(around);
  } catch (err) {
    // A freeze sent early is never left behind, whatever stopped the rotation.
    const freezeFailed = await cycle.end().then(() => undefined, (e: unknown) => e);
    if (ran) throw err;
    const note = freezeFailed !== undefined
      ? `the guest agent could not freeze the filesystems: ${errorMessage(freezeFailed)}`
      : `the snapshot could not be taken with the guest frozen (${errorMessage(err)}): taken again without the freeze`;
    const retried = await rotate();
    return { rot: retried, freeze: { consistency: 'crash', note, freezeWindowMs: null } };
  }
  // The transaction ran frozen. A thaw that timed out or failed is the guest's problem to report.
  await cycle.end().catch((err: unknown) => {
    // The freeze timed out after the transaction (the guest was thawed then), or that thaw failed too.
    cycle.thawedAt ||= performance.now();
    if (err instanceof ThawFailedError) cycle.thawError ??= errorMessage(err.thawError);
  });
  return {
    rot,
    freeze: {
      consistency: 'filesystem',
      note: cycle.thawError ? `WARNING: the thaw failed after the snapshot, the guest may still be frozen: ${cycle.thawError}` : undefined,
      freezeWindowMs: Math.round((cycle.thawedAt - cycle.frozenAt) * 10) / 10,
      freezeCallMs: Math.round((cycle.frozenAt - cycle.calledAt) * 10) / 10,
      thawError: cycle.thawError,
    },
  };
}

/**
 * A freeze marker written ahead of the freeze (the freeze then need not wait for the write), and
 * how to remove it when no freeze took it after all (the agent did not answer, the rotation failed
 * before its transaction). A freeze that took it clears it as usual.
 */
export function presetMarker(m: FreezeMarker): { marker: FreezeMarker; dropIfUnused: () => Promise<void> } {
  const written = m.set();
  written.catch(() => undefined);
  let taken = false;
  return {
    marker: { set: () => { taken = true; return written; }, clear: () => m.clear() },
    dropIfUnused: async () => {
      if (taken) return;
      await written.catch(() => undefined);
      await m.clear();
    },
  };
}
