// The owner indexes the scanner keeps in memory between scans, one per hypervisor identity,
// domain, disk and partition, each labelled with the hypervisor's token for the state it describes
// (ScanJob.ownerIndex). Bounded by memory: the least recently kept go first. Lost with the process:
// the next scan of that filesystem reads its inode tables and builds one again.
import { randomBytes } from 'node:crypto';
import type { OwnerIndex } from '../../fs/index.js';

export class OwnerIndexStore {
  private readonly kept = new Map<string, { token: string; index: OwnerIndex; bytes: number }>();
  private total = 0;
  /** The key of the granule digests kept with the indexes (fs/ext/granule-digests.ts): this process's secret. */
  readonly digestKey = randomBytes(32);

  constructor(readonly maxBytes: number) {}

  static key(client: string, domain: string, disk: string, partitionOffset: number): string {
    return JSON.stringify([client, domain, disk, partitionOffset]);
  }

  /** Whether an index of about this size may be kept at all. */
  fits(bytes: number): boolean {
    return bytes <= this.maxBytes;
  }

  /**
   * The index kept under `key` if it was left at `token`. It is removed either way: the job that
   * took it owns it until it puts it back, and a job that fails leaves none behind.
   */
  take(key: string, token: string | undefined): OwnerIndex | undefined {
    const k = this.kept.get(key);
    if (!k) return undefined;
    this.kept.delete(key);
    this.total -= k.bytes;
    return token !== undefined && k.token === token ? k.index : undefined;
  }

  put(key: string, token: string, index: OwnerIndex): void {
    this.take(key, undefined);
    const bytes = index.bytes;
    if (bytes > this.maxBytes) return;
    this.kept.set(key, { token, index, bytes });
    this.total += bytes;
    // Map order is insertion order: the first are the least recently kept.
    for (const [k, v] of this.kept) {
      if (this.total <= this.maxBytes) break;
      this.kept.delete(k);
      this.total -= v.bytes;
    }
  }

  /** For GET /v1/status: how many are kept, the memory they take and the budget. */
  status(): { kept: number; bytes: number; maxBytes: number } {
    return { kept: this.kept.size, bytes: this.total, maxBytes: this.maxBytes };
  }
}
