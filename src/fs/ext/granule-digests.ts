// Keyed digests of a file's bytes per 64 KiB granule of its filesystem: what lets an incremental
// scan tell a file that merely shares a changed granule with a changed file (its blocks untouched)
// from one whose blocks were written, without trusting its inode. A granule's digest is an
// HMAC-SHA256 (8 bytes kept) with a secret key over the granule's number and the file's bytes in
// it, in disk order. Compared only while the file's mapping is unchanged (the owner index says so),
// so the bytes' places in the granule are the same; a guest that does not know the key cannot make
// other bytes match.
//
// Only the granules a file shares get one: a granule the file's bytes fill whole changes only when
// the file itself is written (its mapping unchanged), and then the file is read anyway. That keeps
// the hashing to the edges of a file's runs, not a large file's every byte.
import { createHmac, type Hmac } from 'node:crypto';
import type { Extent } from '../../extent/index.js';

/** The granule digests are kept at: the change log's default granularity. */
export const DIGEST_GRANULE = 64 * 1024;

/** Per granule index (byte offset / DIGEST_GRANULE), the file's digest there (8 bytes). */
export type GranuleDigests = Map<number, Buffer>;

/**
 * The granules that a file's bytes on disk (sorted, merged byte extents) fill whole: they get no
 * digest, so a change there always has the file read.
 */
export function wholeGranules(onDisk: readonly Extent[]): Set<number> {
  const whole = new Set<number>();
  for (const e of onDisk) {
    const first = Math.ceil(e.offset / DIGEST_GRANULE);
    const end = Math.floor((e.offset + e.length) / DIGEST_GRANULE);
    for (let g = first; g < end; g++) whole.add(g);
  }
  return whole;
}

/** One file's digests as its bytes are read: pieces of a granule must come in disk order. */
export class GranuleDigestSession {
  private readonly open = new Map<number, { h: Hmac; end: number } | null>();

  /** `whole`: granules the file fills (wholeGranules), which get no digest. */
  constructor(private readonly key: Buffer, private readonly whole?: ReadonlySet<number>) {}

  /** Adds file bytes read at filesystem byte offset `physical`. */
  add(physical: number, bytes: Uint8Array): void {
    for (let off = 0; off < bytes.length;) {
      const at = physical + off;
      const g = Math.floor(at / DIGEST_GRANULE);
      const n = Math.min(bytes.length - off, (g + 1) * DIGEST_GRANULE - at);
      if (this.whole?.has(g)) {
        off += n;
        continue;
      }
      let s = this.open.get(g);
      if (s === undefined) {
        const h = createHmac('sha256', this.key);
        const head = Buffer.alloc(8);
        head.writeUIntBE(Math.floor(g / 2 ** 32), 0, 4);
        head.writeUInt32BE(g % 2 ** 32, 4);
        s = { h: h.update(head), end: at };
        this.open.set(g, s);
      }
      // Bytes out of disk order (a file whose runs in one granule are not in logical order): that
      // granule gets no digest, and the file is read whenever it is touched.
      if (s !== null && at < s.end) this.open.set(g, (s = null));
      if (s !== null) {
        s.h.update(bytes.subarray(off, off + n));
        s.end = at + n;
      }
      off += n;
    }
  }

  digests(): GranuleDigests {
    const out: GranuleDigests = new Map();
    for (const [g, s] of this.open) if (s) out.set(g, s.h.digest().subarray(0, 8));
    return out;
  }
}
