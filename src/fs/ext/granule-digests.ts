// Keyed digests of a file's bytes per 64 KiB granule of its filesystem: what lets an incremental
// scan tell a file that merely shares a changed granule with a changed file (its blocks untouched)
// from one whose blocks were written, without trusting its inode. Each block of file data is
// digested with a secret key and its offset (HMAC-SHA256, 8 bytes kept), and a granule's digest is
// the XOR of its blocks': the same whatever order or pieces the bytes were read in, and not
// forgeable by a guest that does not know the key.
import { createHmac } from 'node:crypto';

/** The granule digests are kept at: the change log's default granularity. */
export const DIGEST_GRANULE = 64 * 1024;

/** Per granule index (byte offset / DIGEST_GRANULE), the XOR of its blocks' digests (8 bytes). */
export type GranuleDigests = Map<number, Buffer>;

export class GranuleDigester {
  private readonly at = Buffer.alloc(8);

  constructor(
    private readonly key: Buffer,
    /** The filesystem's block size: blocks are digested whole (the file's last one up to its end). */
    private readonly blockSize: number,
  ) {}

  /** Adds file bytes read at filesystem byte offset `physical` (block-aligned: a piece of a mapped run). */
  add(into: GranuleDigests, physical: number, bytes: Uint8Array): void {
    for (let off = 0; off < bytes.length; off += this.blockSize) {
      const where = physical + off;
      this.at.writeUIntBE(Math.floor(where / 2 ** 32), 0, 4);
      this.at.writeUInt32BE(where % 2 ** 32, 4);
      const d = createHmac('sha256', this.key).update(this.at).update(bytes.subarray(off, Math.min(bytes.length, off + this.blockSize))).digest();
      const g = Math.floor(where / DIGEST_GRANULE);
      const acc = into.get(g);
      if (!acc) into.set(g, d.subarray(0, 8));
      else for (let i = 0; i < 8; i++) acc[i]! ^= d[i]!;
    }
  }
}
