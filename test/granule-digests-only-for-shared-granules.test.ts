// Granule digests (what lets an incremental scan pass over a file that merely shares a changed 64
// KiB granule with a changed file) are kept only for the granules a file shares: one its bytes fill
// whole changes only when the file itself is written, and then it is read anyway. wholeGranules
// finds those from the file's bytes on disk; a session skips them and still digests the edges.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DIGEST_GRANULE as G, GranuleDigestSession, wholeGranules } from '../src/fs/index.js';

const key = randomBytes(32);

describe('granule digests', () => {
  it('names the granules a file fills whole, and none it only touches', () => {
    // From 4 KiB before granule 10 to 4 KiB into granule 13: 10, 11 and 12 are whole.
    expect([...wholeGranules([{ offset: 10 * G - 4096, length: 3 * G + 8192 }])].sort((a, b) => a - b)).toEqual([10, 11, 12]);
    // Exactly one granule, aligned.
    expect([...wholeGranules([{ offset: 5 * G, length: G }])]).toEqual([5]);
    // Inside one granule, or across a boundary without filling either side.
    expect([...wholeGranules([{ offset: 5 * G + 4096, length: G - 8192 }])]).toEqual([]);
    expect([...wholeGranules([{ offset: 6 * G - 4096, length: 8192 }])]).toEqual([]);
  });

  it('digests the shared edges of a run and skips the granules in between, with the same digest as a session that hashes all', () => {
    const start = 10 * G - 4096;
    const bytes = randomBytes(3 * G + 8192);
    const whole = wholeGranules([{ offset: start, length: bytes.length }]);
    const edges = new GranuleDigestSession(key, whole);
    const all = new GranuleDigestSession(key);
    // In pieces of 20 KiB, as chunks arrive.
    for (let at = 0; at < bytes.length; at += 20 * 1024) {
      const piece = bytes.subarray(at, Math.min(bytes.length, at + 20 * 1024));
      edges.add(start + at, piece);
      all.add(start + at, piece);
    }
    const e = edges.digests();
    const a = all.digests();
    expect([...e.keys()].sort((x, y) => x - y)).toEqual([9, 13]);
    expect([...a.keys()].sort((x, y) => x - y)).toEqual([9, 10, 11, 12, 13]);
    expect(e.get(9)).toEqual(a.get(9));
    expect(e.get(13)).toEqual(a.get(13));
  });
});
