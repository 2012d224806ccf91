// Writes a fresh qcow2 image directly from Node, as a copy-engine Endpoint: data clusters are
// appended in the order they arrive, the tables are kept in memory and written behind the data by
// finish(). No qemu-img or qemu-nbd process, no NBD round trip: the repository's write path is a
// pwrite per request. The image is valid only after finish(); a backup names it in a manifest
// only then, and a killed one is removed as a leftover.
import { constants } from 'node:fs';
import { lstat, open, unlink, type FileHandle } from 'node:fs/promises';
import type { Endpoint, EndpointReadResult } from '../copy/index.js';
import {
  FLAG_COPIED, FLAG_ZERO, clusterSize, encodeHeader, encodeRefcounts, l2Entries, layoutMetadata, type ImageGeometry,
} from './format.js';

export interface Qcow2WriterOptions {
  /** Virtual size in bytes. */
  size: number;
  /** Backing file (relative to the image's directory, as qemu-img stores it) and its format. */
  backing?: { name: string; format?: string };
  /** Cluster size, a power of two from 512 B to 2 MiB (default 64 KiB). */
  clusterSize?: number;
  /** finish() makes the image durable (default); false for scratch images (fleecing overlays). */
  durable?: boolean;
}

/** An L2 slot: 0 unallocated, ZERO reads as zeroes, else the host offset of the data cluster. */
const ZERO = -1;
/** Largest single write the engine may hand over (the writer has no protocol limit; this bounds one pwrite). */
const MAX_REQUEST = 32 * 1024 * 1024;

interface Pending {
  buf: Buffer;
  /** Bytes of the cluster written or zeroed so far. */
  covered: number;
  hasData: boolean;
}

export class Qcow2Writer implements Endpoint {
  readonly maxRequest = MAX_REQUEST;
  readonly alignment = 1;
  readonly zeroInitialized: boolean;
  private readonly g: ImageGeometry;
  private readonly cs: number;
  private readonly tables = new Map<number, Float64Array>();
  /** Clusters written in part (a hole split a request): completed in memory, written when whole. */
  private readonly pending = new Map<number, Pending>();
  private nextCluster = 1;
  private readonly inflight = new Set<Promise<unknown>>();
  private finished = false;
  private finishing = false;
  private closed = false;

  private constructor(readonly name: string, private readonly fh: FileHandle, private readonly o: Qcow2WriterOptions, bits: number) {
    this.g = { size: o.size, clusterBits: bits };
    this.cs = clusterSize(this.g);
    // Without a backing file an unallocated cluster reads as zeroes: zero ranges need no writes.
    this.zeroInitialized = !o.backing;
  }

  /**
   * Creates `path`, exclusively and never through a symlink: an existing file (or link) at the
   * name is an error, unless `replace` is set and it is a regular file (one this process made
   * and rewrites): that is removed first. Nothing is ever written into a file found there.
   */
  static async create(path: string, o: Qcow2WriterOptions & { replace?: boolean }): Promise<Qcow2Writer> {
    const cs = o.clusterSize ?? 65536;
    const bits = Math.log2(cs);
    if (!Number.isInteger(bits) || bits < 9 || bits > 21) throw new RangeError(`qcow2 cluster size ${cs} is not a power of two from 512 B to 2 MiB`);
    if (!Number.isSafeInteger(o.size) || o.size < 0) throw new RangeError(`qcow2 size ${o.size} is not a byte count`);
    if (o.replace) {
      // lstat: a symlink (or anything but a regular file) at the name stays, and the create below refuses it.
      const st = await lstat(path).catch(() => undefined);
      if (st?.isFile()) await unlink(path);
    }
    let fh: FileHandle;
    try {
      fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o640);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const st = await lstat(path).catch(() => undefined);
      throw Object.assign(new Error(`cannot create the image ${path}: a ${st?.isSymbolicLink() ? 'symlink' : 'file'} of that name is in the way (never written through); remove it if nothing needs it`, { cause: err }), { code: 'EEXIST' });
    }
    return new Qcow2Writer(path, fh, o, bits);
  }

  get size(): number {
    return this.o.size;
  }

  read(): Promise<EndpointReadResult> {
    return Promise.reject(new Error(`${this.name} is write-only while it is written`));
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.track(this.put(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), offset, false));
  }

  zero(offset: number, length: number): Promise<void> {
    return this.track(this.put(undefined, offset, length));
  }

  /** A fresh image has nothing to free: a zero cluster (or nothing) is what a discarded range becomes. */
  discard(offset: number, length: number): Promise<void> {
    return this.zero(offset, length);
  }

  /** Makes what was written so far durable (writes still go on meanwhile). */
  flush(): Promise<void> {
    return this.track(this.fh.datasync());
  }

  /** Writes the tables and the header behind the data and makes the image durable; then it is a valid qcow2. */
  async finish(): Promise<void> {
    if (this.finished) return;
    // The tables are let go as they are written: a failed finish cannot be tried again.
    if (this.finishing) throw new Error(`${this.name}: an earlier finish failed; the image is incomplete`);
    this.finishing = true;
    await this.settled();
    for (const [c, p] of this.pending) {
      const end = Math.min(this.cs, this.o.size - c * this.cs);
      // A standalone image reads zeroes where nothing was written; an overlay would read its backing.
      if (p.covered < end && this.o.backing) {
        throw new Error(`${this.name}: cluster ${c} was written only in part (${p.covered} of ${end} bytes); overlay writes must cover whole clusters`);
      }
      await this.commit(c, p);
    }
    this.pending.clear();
    const cs = this.cs;
    const l1Indexes = [...this.tables.keys()].sort((a, b) => a - b);
    const layout = layoutMetadata(this.g, this.nextCluster, l1Indexes.length);
    // The L2 tables go out in batches through one reused buffer, each table's memory let go once
    // written: the tables are never held twice (a whole-disk copy of 2 TiB has 256 MiB of them).
    const l1 = Buffer.alloc(layout.l1Clusters * cs);
    const BATCH = 64;
    const batch = Buffer.alloc(Math.min(BATCH, Math.max(1, l1Indexes.length)) * cs);
    for (let k0 = 0; k0 < l1Indexes.length; k0 += BATCH) {
      const n = Math.min(BATCH, l1Indexes.length - k0);
      batch.fill(0, 0, n * cs);
      for (let k = k0; k < k0 + n; k++) {
        const i = l1Indexes[k]!;
        l1.writeBigUInt64BE(BigInt((layout.l2Start + k) * cs) | FLAG_COPIED, i * 8);
        const t = this.tables.get(i)!;
        const at = (k - k0) * cs;
        for (let j = 0; j < t.length; j++) {
          const v = t[j]!;
          if (v === ZERO) batch.writeBigUInt64BE(FLAG_ZERO, at + j * 8);
          else if (v > 0) batch.writeBigUInt64BE(BigInt(v) | FLAG_COPIED, at + j * 8);
        }
        this.tables.delete(i);
      }
      await this.fh.write(batch, 0, n * cs, (layout.l2Start + k0) * cs);
    }
    await this.fh.write(l1, 0, l1.length, layout.l1Start * cs);
    const rc = encodeRefcounts(this.g, layout);
    await this.fh.write(rc.table, 0, rc.table.length, layout.refcountTableStart * cs);
    await this.fh.write(rc.blocks, 0, rc.blocks.length, layout.refcountBlockStart * cs);
    const header = encodeHeader({
      ...this.g, l1TableOffset: layout.l1Start * cs, refcountTableOffset: layout.refcountTableStart * cs,
      refcountTableClusters: layout.refcountTableClusters,
      backing: this.o.backing ? { name: this.o.backing.name, format: this.o.backing.format ?? 'qcow2' } : undefined,
    });
    await this.fh.write(header, 0, header.length, 0);
    if (this.o.durable !== false) await this.fh.datasync();
    this.finished = true;
    await this.close();
  }

  /** Closes the file; before finish() the image is left incomplete (for the caller to remove). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.settled().catch(() => undefined);
    await this.fh.close();
  }

  private track<T>(p: Promise<T>): Promise<void> {
    const q = p.then(() => undefined);
    this.inflight.add(q);
    const done = () => { this.inflight.delete(q); };
    q.then(done, done);
    return q;
  }

  private async settled(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  private slot(cluster: number): { t: Float64Array; j: number } {
    const per = l2Entries(this.g);
    const i = Math.floor(cluster / per);
    let t = this.tables.get(i);
    if (!t) {
      t = new Float64Array(per);
      this.tables.set(i, t);
    }
    return { t, j: cluster % per };
  }

  /** Writes `data` (or `zeroLength` zero bytes) at `offset`, cluster by cluster. */
  private async put(data: Buffer | undefined, offset: number, zeroLength: number | false): Promise<void> {
    if (this.finished || this.closed) throw new Error(`${this.name} is closed`);
    const length = data ? data.length : (zeroLength as number);
    if (offset < 0 || offset + length > this.o.size) throw new RangeError(`write [${offset}, +${length}) lies outside ${this.name} (${this.o.size} bytes)`);
    const cs = this.cs;
    const writes: Promise<unknown>[] = [];
    // Runs of whole fresh clusters go out as one pwrite at consecutive host clusters.
    let run: { host: number; from: number; to: number } | undefined;
    const endRun = () => {
      if (run && data) writes.push(this.fh.write(data, run.from, run.to - run.from, run.host));
      run = undefined;
    };
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const cStart = c * cs;
      const cEnd = Math.min(cStart + cs, this.o.size);
      const to = Math.min(end, cEnd);
      const whole = pos === cStart && to === cEnd && !this.pending.has(c);
      const { t, j } = this.slot(c);
      if (whole && data) {
        if (t[j]! > 0) {
          endRun();
          writes.push(this.fh.write(data, pos - offset, to - pos, t[j]!));
        } else {
          const host = this.nextCluster++ * cs;
          t[j] = host;
          if (run && run.host + (run.to - run.from) === host && run.to === pos - offset) run.to = to - offset;
          else {
            endRun();
            run = { host, from: pos - offset, to: to - offset };
          }
        }
      } else if (whole) {
        endRun();
        if (t[j]! > 0) writes.push(this.fh.write(Buffer.alloc(to - pos), 0, to - pos, t[j]!));
        else if (!this.zeroInitialized) t[j] = ZERO;
      } else {
        endRun();
        let p = this.pending.get(c);
        if (!p) {
          p = { buf: Buffer.alloc(cEnd - cStart), covered: 0, hasData: false };
          this.pending.set(c, p);
        }
        if (data) {
          data.copy(p.buf, pos - cStart, pos - offset, to - offset);
          p.hasData = true;
        } else {
          p.buf.fill(0, pos - cStart, to - cStart);
        }
        p.covered += to - pos;
        if (p.covered >= cEnd - cStart) {
          this.pending.delete(c);
          writes.push(this.commit(c, p));
        }
      }
      pos = to;
    }
    endRun();
    await Promise.all(writes);
  }

  /** A cluster assembled in memory: written out when it holds data, else a zero cluster (or nothing). */
  private async commit(c: number, p: Pending): Promise<void> {
    const { t, j } = this.slot(c);
    if (!p.hasData && t[j]! <= 0) {
      if (!this.zeroInitialized) t[j] = ZERO;
      return;
    }
    let host = t[j]!;
    if (host <= 0) {
      host = this.nextCluster++ * this.cs;
      t[j] = host;
    }
    await this.fh.write(p.buf, 0, p.buf.length, host);
  }
}

/**
 * Writes an empty qcow2 image (header, tables; no data) at `path`: what `qemu-img create -f qcow2`
 * makes, without its process. Created exclusively, as Qcow2Writer.create does.
 */
export async function createQcow2(path: string, o: Qcow2WriterOptions & { replace?: boolean }): Promise<void> {
  const w = await Qcow2Writer.create(path, o);
  try {
    await w.finish();
  } finally {
    await w.close();
  }
}

