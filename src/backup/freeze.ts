// Guest filesystem freeze around the rotation transaction only: freeze → transaction → thaw,
// with the window measured. Without a usable agent the backup is crash-consistent, and says so.
import { GuestAgent, ThawFailedError } from '../guest/index.js';
import type { RotateResult } from '../reconciler/index.js';
import { errorMessage } from '../util/errors.js';

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

export type Rotate = (aroundTransaction?: (run: () => Promise<void>) => Promise<void>) => Promise<RotateResult>;

/**
 * Runs `rotate` with the guest frozen around its transaction when `agent` is given. If the freeze
 * itself fails (nothing happened in QEMU then), rotates again without it: a crash-consistent
 * backup beats none, and the result says why it is one.
 */
export interface FreezeOptions {
  freezeTimeoutMs: number;
  noAgentReason?: string;
  /**
   * Called before the freeze and after a successful thaw: records that this process froze the
   * guest, so that a daemon killed in between thaws it when it starts again.
   */
  marker?: { set(): Promise<void>; clear(): Promise<void> };
  /** Fault injection for crash tests: called with the guest frozen, after the transaction. */
  whileFrozen?: () => void | Promise<void>;
}

export async function rotateFrozen(rotate: Rotate, agent: GuestAgent | undefined, opts: FreezeOptions): Promise<{ rot: RotateResult; freeze: FreezeOutcome }> {
  if (!agent) {
    return { rot: await rotate(), freeze: { consistency: 'crash', note: opts.noAgentReason ?? 'no guest agent', freezeWindowMs: null } };
  }
  let ran = false;
  let t0 = 0;
  let frozenAt = 0;
  let thawedAt = 0;
  let thawError: string | undefined;
  const around = async (run: () => Promise<void>) => {
    await opts.marker?.set();
    t0 = performance.now();
    try {
      await agent.withFrozen(async () => {
        frozenAt = performance.now();
        ran = true;
        await run();
        await opts.whileFrozen?.();
      }, { timeoutMs: opts.freezeTimeoutMs });
      thawedAt = performance.now();
      await opts.marker?.clear();
    } catch (err) {
      // The transaction ran but the thaw failed: the rotation is done and must not be undone.
      if (ran && err instanceof ThawFailedError && err.original === undefined) {
        thawedAt = performance.now();
        thawError = errorMessage(err.thawError);
        return;
      }
      // withFrozen thawed unless ThawFailedError says otherwise: then the marker stays for the next start.
      if (!(err instanceof ThawFailedError)) await opts.marker?.clear();
      throw err;
    }
  };
  try {
    const rot = await rotate(around);
    return {
      rot,
      freeze: {
        // The snapshot was taken frozen either way; a failed thaw is the guest's problem to report.
        consistency: 'filesystem',
        note: thawError ? `WARNING: the thaw failed after the snapshot, the guest may still be frozen: ${thawError}` : undefined,
        freezeWindowMs: Math.round((thawedAt - frozenAt) * 10) / 10,
        freezeCallMs: Math.round((frozenAt - t0) * 10) / 10,
        thawError,
      },
    };
  } catch (err) {
    if (ran) throw err;
    const rot = await rotate();
    return { rot, freeze: { consistency: 'crash', note: `the guest agent could not freeze the filesystems: ${errorMessage(err)}`, freezeWindowMs: null } };
  }
}
