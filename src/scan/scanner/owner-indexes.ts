// The owner indexes the scanner keeps in memory between scans, one per hypervisor identity,
// domain, disk and partition, each labelled with the hypervisor's token for the state it describes
// (ScanJob.ownerIndex). Bounded by memory: the least recently kept go first. Saved when the scanner
// stops and read back when it starts (save/load, with ownerIndex.saveDir); without that, or after a
// crash, the next scan of each filesystem reads its inode tables and builds one again.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { OwnerIndex } from '../../fs/index.js';
import { writeFileAtomically } from '../../util/atomic-file.js';
import { ByteReader, ByteWriter } from '../../util/byte-fields.js';
import { NotRegularFileError, readRegularFileBytes } from '../../util/regular-file.js';

const SAVED_MAGIC = 'VCBTOS01';
const MAC_BYTES = 32;

export class OwnerIndexStore {
  private readonly kept = new Map<string, { token: string; index: OwnerIndex; bytes: number }>();
  private total = 0;
  /** The key of the granule digests kept with the indexes (fs/ext/granule-digests.ts): a secret of this scanner's. */
  readonly digestKey: Buffer;

  /** `digestKey`: the scanner's saved secret's (digests read back must match); a fresh random one by default. */
  constructor(readonly maxBytes: number, opts: { digestKey?: Buffer } = {}) {
    this.digestKey = opts.digestKey ?? randomBytes(32);
  }

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

  /** Moves on at every put: a periodic save skips a store that did not change since the last. */
  version = 0;

  put(key: string, token: string, index: OwnerIndex): void {
    this.version++;
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

  /**
   * Writes every kept index to `file` (atomically, mode 0600), least recently kept first, followed
   * by an HMAC-SHA256 with `macKey` over the rest: load reads back only what this scanner wrote.
   */
  async save(file: string, macKey: Buffer): Promise<number> {
    const w = new ByteWriter();
    w.raw(Buffer.from(SAVED_MAGIC, 'latin1'));
    w.u32(this.kept.size);
    for (const [key, k] of this.kept) {
      w.str(key);
      w.str(k.token);
      w.bytes(k.index.toBytes());
    }
    const body = w.done();
    await writeFileAtomically(file, Buffer.concat([body, createHmac('sha256', macKey).update(body).digest()]));
    return this.kept.size;
  }

  /**
   * Reads back what save wrote, within the memory budget. A file that is missing reads as none; one
   * that does not authenticate or parse is refused whole (`problem`), keeping nothing from it.
   */
  async load(file: string, macKey: Buffer): Promise<{ kept: number; problem?: string }> {
    let b: Buffer;
    try {
      b = (await readRegularFileBytes(file, 2 * this.maxBytes + 1024 * 1024)).bytes;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kept: 0 };
      return { kept: 0, problem: err instanceof NotRegularFileError ? err.message : `${file}: ${(err as Error).message}` };
    }
    if (b.length < SAVED_MAGIC.length + 4 + MAC_BYTES) return { kept: 0, problem: `${file} is too short to be saved owner indexes` };
    const body = b.subarray(0, b.length - MAC_BYTES);
    const mac = createHmac('sha256', macKey).update(body).digest();
    if (!timingSafeEqual(mac, b.subarray(b.length - MAC_BYTES))) return { kept: 0, problem: `${file} was not written by this scanner (or was changed since): its owner indexes are not used` };
    try {
      const r = new ByteReader(body, 'the saved owner indexes');
      if (r.raw(SAVED_MAGIC.length).toString('latin1') !== SAVED_MAGIC) throw new Error('not saved owner indexes');
      const read: [string, string, OwnerIndex][] = [];
      for (let n = r.count(12); n > 0; n--) read.push([r.str(), r.str(), OwnerIndex.fromBytes(Buffer.from(r.bytes()))]);
      r.end();
      for (const [key, token, index] of read) this.put(key, token, index);
      return { kept: this.kept.size };
    } catch (err) {
      return { kept: 0, problem: `${file}: ${(err as Error).message}: its owner indexes are not used` };
    }
  }
}
