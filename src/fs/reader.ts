// Reads a region of an Endpoint (a partition, a filesystem) with bounds checks and a small metadata cache.
import type { Endpoint } from '../copy/index.js';
import { CONTEXT_BASE_ALLOCATION, NBD_STATE_ZERO } from '../nbd/index.js';
import { damaged } from './errors.js';

/** Cache granule: one request brings a few neighbouring inodes, extent or directory blocks at once. */
const CHUNK = 64 * 1024;
/** 256 chunks = 16 MiB of cached metadata at most, whatever the filesystem's size. */
const CACHE_CHUNKS = 256;
/** Large reads are cut to this, so one call never holds more than this in one request. */
const MAX_REQUEST = 8 * 1024 * 1024;
/** readsAsZeroes without block status reads at most this much (a blank extra disk of a few GiB). */
const READ_FOR_ZEROES_MAX = 4 * 1024 * 1024 * 1024;

export class DiskReader {
  private readonly cache = new Map<number, Promise<Buffer>>();
  /** What was read from the endpoint, shared with sub-readers (tests and benchmarks: reads must grow with the work, not the disk). */
  readonly stats: { bytesRead: number; requests: number };

  /**
   * @param base byte offset of the region in the endpoint
   * @param length the region's length (the endpoint's end by default)
   */
  constructor(
    readonly endpoint: Endpoint,
    readonly base = 0,
    readonly length = endpoint.size - base,
    /** For messages: "disk.img, partition 2" and the like. */
    readonly label = endpoint.name,
    stats?: { bytesRead: number; requests: number },
  ) {
    this.stats = stats ?? { bytesRead: 0, requests: 0 };
    if (base < 0 || length < 0 || base + length > endpoint.size) {
      throw damaged(label, `region ${base}+${length} lies past the end of ${endpoint.name} (${endpoint.size} bytes)`);
    }
  }

  /** A reader of a sub-region (a partition), offsets relative to its start. */
  sub(offset: number, length: number, label: string): DiskReader {
    if (offset < 0 || length < 0 || offset + length > this.length) {
      throw damaged(label, `region ${offset}+${length} lies past the end of ${this.label} (${this.length} bytes)`);
    }
    return new DiskReader(this.endpoint, this.base + offset, length, label, this.stats);
  }

  private check(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.length) {
      throw damaged(this.label, `${what} at byte ${offset} (+${length}) lies outside the ${this.length} bytes there are (truncated image or corrupt pointer)`);
    }
  }

  /** Reads exactly [offset, offset+length) uncached (file data, bitmaps: read once). */
  async read(offset: number, length: number, what = 'data'): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, offset, what);
    return buf;
  }

  /** Fills `buf` from [offset, offset+buf.length) uncached (file data straight into the caller's buffer). */
  async readInto(buf: Uint8Array, offset: number, what = 'data'): Promise<void> {
    const length = buf.length;
    this.check(offset, length, what);
    const step = Math.min(MAX_REQUEST, this.endpoint.maxRequest);
    for (let at = 0; at < length; at += step) {
      const n = Math.min(step, length - at);
      await this.endpoint.read(buf.subarray(at, at + n), this.base + offset + at);
      this.stats.bytesRead += n;
      this.stats.requests++;
    }
  }

  /**
   * True when the whole region reads as zeroes (a blank disk or partition: nothing on it to scan or
   * keep). With block status (base:allocation) that is asked of the server, which knows it without
   * reading: allocated data counts as not blank even when it holds zeroes. Without, the region is
   * read up to its first byte that is not zero, and a region over READ_FOR_ZEROES_MAX is not read
   * at all (not blank: a sparse 1 TiB disk must not cost a scan its time). False once `signal` is
   * aborted: a region is never called blank without having been looked at.
   */
  async readsAsZeroes(signal?: AbortSignal): Promise<boolean> {
    const { endpoint } = this;
    if (endpoint.extents && endpoint.hasExtents?.(CONTEXT_BASE_ALLOCATION)) {
      let covered = 0;
      for await (const e of endpoint.extents(CONTEXT_BASE_ALLOCATION, this.base, this.length)) {
        if (signal?.aborted || !(e.flags & NBD_STATE_ZERO)) return false;
        covered += e.length;
        if (covered >= this.length) break;
      }
      return covered >= this.length;
    }
    if (this.length > READ_FOR_ZEROES_MAX) return false;
    const step = Math.min(4 * 1024 * 1024, this.length);
    const buf = Buffer.allocUnsafe(step);
    const zero = Buffer.alloc(step);
    for (let at = 0; at < this.length; at += step) {
      if (signal?.aborted) return false;
      const n = Math.min(step, this.length - at);
      await this.readInto(buf.subarray(0, n), at, 'data');
      if (buf.compare(zero, 0, n, 0, n) !== 0) return false;
    }
    return true;
  }

  /** Reads a small metadata range through the cache; the result may be shared: do not modify it. */
  async readCached(offset: number, length: number, what = 'metadata'): Promise<Buffer> {
    this.check(offset, length, what);
    const first = Math.floor(offset / CHUNK);
    const last = Math.floor((offset + length - 1) / CHUNK);
    if (first === last) {
      const chunk = await this.chunk(first);
      const at = offset - first * CHUNK;
      return chunk.subarray(at, at + length);
    }
    const out = Buffer.alloc(length);
    for (let c = first; c <= last; c++) {
      const chunk = await this.chunk(c);
      const from = Math.max(offset, c * CHUNK);
      const to = Math.min(offset + length, (c + 1) * CHUNK);
      chunk.copy(out, from - offset, from - c * CHUNK, to - c * CHUNK);
    }
    return out;
  }

  private chunk(index: number): Promise<Buffer> {
    const hit = this.cache.get(index);
    if (hit) {
      // Map order is insertion order: re-inserting makes it the most recently used.
      this.cache.delete(index);
      this.cache.set(index, hit);
      return hit;
    }
    const start = index * CHUNK;
    const p = this.read(start, Math.min(CHUNK, this.length - start), 'metadata');
    p.catch(() => this.cache.delete(index));
    this.cache.set(index, p);
    while (this.cache.size > CACHE_CHUNKS) this.cache.delete(this.cache.keys().next().value as number);
    return p;
  }
}
