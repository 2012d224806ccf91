// An Endpoint that is another in everything but its write: for wrappers that act on writes alone.
import type { Endpoint } from './endpoint.js';

/** `inner`, with `write` in place of its own (which `write` calls). */
export function withWrite(inner: Endpoint, write: Endpoint['write']): Endpoint {
  return {
    get name() { return inner.name; },
    get size() { return inner.size; },
    get maxRequest() { return inner.maxRequest; },
    get alignment() { return inner.alignment; },
    get zeroInitialized() { return inner.zeroInitialized; },
    read: (buf, offset) => inner.read(buf, offset),
    write,
    zero: (offset, length) => inner.zero(offset, length),
    discard: (offset, length) => inner.discard(offset, length),
    flush: () => inner.flush(),
    close: () => inner.close(),
    extents: inner.extents?.bind(inner),
    hasExtents: inner.hasExtents?.bind(inner),
  };
}
