// Progress of one disk's copy: rate over a sliding window, ETA, and throttling to a few events a second.

/** At most this many progress events per disk and second reach the stream. */
const EVENT_INTERVAL_MS = 250;
/** The rate is measured over roughly this much recent history. */
const WINDOW_MS = 3_000;

export interface ProgressFigures {
  done: number;
  total: number;
  written: number;
  bytesPerSec: number;
  etaSec: number | null;
}

export class ProgressMeter {
  private readonly start = performance.now();
  private last = -Infinity;
  private samples: { t: number; done: number }[] = [];

  constructor(private readonly total: number) {}

  private figures(done: number, written: number, now: number): ProgressFigures {
    this.samples.push({ t: now, done });
    while (this.samples.length > 2 && now - this.samples[0]!.t > WINDOW_MS) this.samples.shift();
    const first = this.samples[0]!;
    const dt = (now - first.t) / 1000;
    const rate = dt > 0 ? (done - first.done) / dt : done / Math.max(1e-3, (now - this.start) / 1000);
    const left = Math.max(0, this.total - done);
    return { done, total: this.total, written, bytesPerSec: Math.round(rate), etaSec: rate > 0 ? Math.round((left / rate) * 10) / 10 : null };
  }

  /** Figures when an event is due, else undefined. */
  update(done: number, written: number): ProgressFigures | undefined {
    const now = performance.now();
    if (now - this.last < EVENT_INTERVAL_MS) return undefined;
    this.last = now;
    return this.figures(done, written, now);
  }

  /** The last event: average rate over the whole copy. */
  final(done: number, written: number): ProgressFigures {
    const secs = Math.max(1e-3, (performance.now() - this.start) / 1000);
    return { done, total: Math.max(this.total, done), written, bytesPerSec: Math.round(done / secs), etaSec: 0 };
  }
}
