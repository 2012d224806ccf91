// An Endpoint wrapper that shows every byte reaching the destination (writes, zeroes, discards) to a checksum first.
import type { StatusExtent } from '../nbd/index.js';
import type { Endpoint, EndpointReadResult } from './endpoint.js';

/** What the wrapper feeds: the repository's ExtentDigest is one. */
export interface ByteDigest {
  /**
   * Takes the bytes at `offset` (`buf` undefined: `length` zero bytes); `buf` may be reused once
   * this returns. A promise when the digest has fallen behind and the writer should wait.
   */
  feed(offset: number, length: number, buf?: Uint8Array): Promise<void> | undefined;
}

/** `dst` with every write, zero and discard seen by `digest` first (zeroes reach `dst` only if it needs them). */
export function digestingEndpoint(dst: Endpoint, digest: ByteDigest): Endpoint {
  return new DigestingEndpoint(dst, digest);
}

class DigestingEndpoint implements Endpoint {
  // The engine must hand us every hole, so that the digest sees it: we never claim zero-initialized.
  readonly zeroInitialized = false;

  constructor(private readonly inner: Endpoint, private readonly digest: ByteDigest) {}

  get name() { return this.inner.name; }
  get size() { return this.inner.size; }
  get alignment() { return this.inner.alignment; }
  get maxRequest() { return this.inner.maxRequest; }

  read(buf: Uint8Array, offset: number): Promise<EndpointReadResult> {
    return this.inner.read(buf, offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const behind = this.digest.feed(offset, buf.length, buf);
    await this.inner.write(buf, offset);
    await behind;
  }

  async zero(offset: number, length: number): Promise<void> {
    const behind = this.digest.feed(offset, length);
    if (!this.inner.zeroInitialized) await this.inner.zero(offset, length);
    await behind;
  }

  /** A discarded range reads as zeroes (see Endpoint.discard): that is what the digest sees. */
  async discard(offset: number, length: number): Promise<void> {
    const behind = this.digest.feed(offset, length);
    await this.inner.discard(offset, length);
    await behind;
  }

  flush() { return this.inner.flush(); }
  close() { return this.inner.close(); }
  extents(context: string, offset?: number, length?: number): AsyncIterable<StatusExtent> {
    if (!this.inner.extents) throw new Error(`${this.inner.name} has no block status`);
    return this.inner.extents(context, offset, length);
  }
  hasExtents(context: string): boolean {
    return this.inner.hasExtents?.(context) ?? false;
  }
}
