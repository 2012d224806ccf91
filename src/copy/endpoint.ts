// The Endpoint interface that hides whether a disk is an NBD export, a local file or null: from the copy engine.
// An endpoint that can be cancelled takes the job's AbortSignal when it is opened (NbdEndpoint, serveImage,
// openImageEndpoint): its operations in flight then fail with the signal's reason.
import type { Extent } from '../extent/index.js';
import type { StatusExtent } from '../nbd/index.js';

export interface EndpointReadResult {
  /** Ranges known to read as zeroes (already zero in the buffer); the engine need not write them. */
  holes: readonly Extent[];
}

export interface Endpoint {
  /** For messages: a URI or a path. */
  readonly name: string;
  readonly size: number;
  /** Largest single read or write; the engine cuts requests to it. */
  readonly maxRequest: number;
  /** Requests should start and end on multiples of this (1 when anything goes). */
  readonly alignment: number;
  /** True for a fresh, sparse target that reads as zeroes everywhere: zero ranges need no writes. */
  readonly zeroInitialized: boolean;
  read(buf: Uint8Array, offset: number): Promise<EndpointReadResult>;
  /** Reads a range and drops the data (for a destination that keeps nothing); optional. */
  readDiscard?(offset: number, length: number): Promise<EndpointReadResult>;
  /** True when writes are thrown away (null:): the engine need not keep what it reads. */
  readonly discardsData?: boolean;
  write(buf: Uint8Array, offset: number): Promise<void>;
  /** Makes [offset, offset+length) read as zeroes. */
  zero(offset: number, length: number): Promise<void>;
  /**
   * Frees [offset, offset+length) where the endpoint can (what a synced copy does with blocks the
   * guest freed): afterwards the range reads as zeroes, always, whether or not space was freed
   * (an endpoint that cannot free writes zeroes instead). Not a hint that may be ignored.
   */
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /** Block status of the endpoint, when it has any (NBD with a negotiated context). */
  extents?(context: string, offset?: number, length?: number): AsyncIterable<StatusExtent>;
  /** Whether extents(context) can answer (the context was negotiated). */
  hasExtents?(context: string): boolean;
}

/** An extent to copy; `zero` marks a range the source already knows reads as zeroes (not read at all). */
export interface CopyExtent extends Extent {
  zero?: boolean;
}
