// One job at a time per key (a domain's consumer): two backups of one consumer would write the
// same chain, two syncs of one target the same copy. Jobs of different consumers overlap (their
// snapshots coexist); one of the same consumer waits its turn here, cancellable while it waits.
import { abortReason } from '../util/abort.js';

export class KeyedTurns {
  private tails = new Map<string, Promise<void>>();

  /** Runs `fn` once every earlier job of `key` has ended; `waiting` is called if it must wait. */
  async run<T>(key: string, fn: () => Promise<T>, o: { signal?: AbortSignal; waiting?: () => void } = {}): Promise<T> {
    const before = this.tails.get(key);
    let done!: () => void;
    const mine = new Promise<void>((r) => { done = r; });
    const tail = (before ?? Promise.resolve()).then(() => mine);
    this.tails.set(key, tail);
    try {
      if (before) {
        o.waiting?.();
        await new Promise<void>((resolve, reject) => {
          const onAbort = () => reject(abortReason(o.signal!, 'waiting for the earlier job'));
          if (o.signal?.aborted) return onAbort();
          o.signal?.addEventListener('abort', onAbort, { once: true });
          void before.then(() => { o.signal?.removeEventListener('abort', onAbort); resolve(); });
        });
      }
      return await fn();
    } finally {
      done();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
