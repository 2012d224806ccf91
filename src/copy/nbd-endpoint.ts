// An NBD export as an Endpoint: reads report holes from structured replies, zero and discard use WRITE_ZEROES when offered.
import { NbdClient, type NbdClientOptions, type NbdTarget, type StatusExtent } from '../nbd/index.js';
import type { Endpoint, EndpointReadResult } from './endpoint.js';

/** Zero fill for servers without WRITE_ZEROES. */
const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

/** `signal` (the job's) fails reads and writes in flight with its reason and closes the connection. */
export interface NbdEndpointOptions extends NbdClientOptions {
  /** The target is fresh and sparse (e.g. just made with qemu-img create): zero ranges are skipped. */
  zeroInitialized?: boolean;
}

export class NbdEndpoint implements Endpoint {
  readonly zeroInitialized: boolean;

  constructor(readonly client: NbdClient, opts: { zeroInitialized?: boolean } = {}) {
    this.zeroInitialized = opts.zeroInitialized ?? false;
  }

  static async open(target: string | NbdTarget, opts: NbdEndpointOptions = {}): Promise<NbdEndpoint> {
    return new NbdEndpoint(await NbdClient.connect(target, opts), opts);
  }

  get name(): string {
    return this.client.what;
  }

  get size(): number {
    return this.client.size;
  }

  get maxRequest(): number {
    return this.client.maxRequest;
  }

  get alignment(): number {
    return this.client.blockSize.min;
  }

  read(buf: Uint8Array, offset: number): Promise<EndpointReadResult> {
    return this.client.pread(buf, offset);
  }

  readDiscard(offset: number, length: number): Promise<EndpointReadResult> {
    return this.client.readDiscard(offset, length);
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.client.pwrite(buf, offset);
  }

  async zero(offset: number, length: number): Promise<void> {
    if (this.client.flags.canZero) {
      await this.client.writeZeroes(offset, length);
      return;
    }
    const step = Math.min(ZERO_CHUNK.length, this.client.maxRequest);
    const all: Promise<void>[] = [];
    for (let at = 0; at < length; at += step) {
      all.push(this.client.pwrite(ZERO_CHUNK.subarray(0, Math.min(step, length - at)), offset + at));
    }
    await Promise.all(all);
  }

  /**
   * WRITE_ZEROES without NO_HOLE rather than TRIM: after a TRIM the NBD protocol lets a read return
   * anything (and QEMU's own exports, discard=ignore by default, drop it), while zeroes that may
   * be punched are both freed where the server can (qemu-nbd --discard=unmap: qcow2 clusters and
   * raw blocks were freed here exactly as by TRIM) and read back as zeroes everywhere.
   */
  discard(offset: number, length: number): Promise<void> {
    return this.zero(offset, length);
  }

  flush(): Promise<void> {
    return this.client.flush();
  }

  close(): Promise<void> {
    return this.client.close();
  }

  hasExtents(context: string): boolean {
    return this.client.metaContexts.has(context);
  }

  extents(context: string, offset?: number, length?: number): AsyncIterable<StatusExtent> {
    return this.client.blockStatus(context, offset, length);
  }
}
