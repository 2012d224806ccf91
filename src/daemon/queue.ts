// One serial work queue per domain: folds, passes and hook events for a domain never overlap,
// while different domains proceed in parallel.
export class DomainQueues {
  private tails = new Map<string, Promise<unknown>>();

  run<T>(domain: string, job: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(domain) ?? Promise.resolve();
    const next = prev.then(job, job);
    const tail = next.catch(() => undefined);
    this.tails.set(domain, tail);
    void tail.then(() => {
      if (this.tails.get(domain) === tail) this.tails.delete(domain);
    });
    return next;
  }

  /** Resolves when every queued job has finished (for shutdown). */
  async idle(): Promise<void> {
    while (this.tails.size > 0) await Promise.all([...this.tails.values()]);
  }
}
