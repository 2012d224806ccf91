// The null: endpoint: discards writes and reads as zeroes, like nbdcopy's null: (for benchmarks and read checks).
import type { Endpoint, EndpointReadResult } from './endpoint.js';

export class NullEndpoint implements Endpoint {
  readonly name = 'null:';
  readonly maxRequest = 2 ** 30;
  readonly alignment = 1;
  readonly zeroInitialized = true;
  readonly discardsData = true;

  constructor(readonly size: number) {}

  async read(buf: Uint8Array, offset: number): Promise<EndpointReadResult> {
    buf.fill(0);
    return { holes: [{ offset, length: buf.length }] };
  }

  async write(): Promise<void> {}
  async zero(): Promise<void> {}
  async discard(): Promise<void> {}
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
