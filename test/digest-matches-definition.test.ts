// The manifest checksum computed during a copy (worker-thread hashing, pieces finishing in any
// order, holes reported by the source) equals the definition in src/repo/digest.ts computed
// directly, for several request sizes and concurrencies (requests smaller than a segment finish
// out of order within it); bytes missing or given twice are refused; the hashing thread stops when
// idle (its isolate keeps garbage) and a later digest starts another.
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { NullEndpoint, copyExtents, type Endpoint } from '../src/copy/index.js';
import { DIGEST_SEGMENT, ExtentDigest, hashingThreadId } from '../src/repo/index.js';
import { pollUntil } from '../src/util/abort.js';

const MiB = 1024 * 1024;
const size = 64 * MiB;
const data = randomBytes(size);
/** The source reports a hole (reads as zeroes) here. */
const HOLE = { offset: 5 * MiB, length: 64 * 1024 };

const content = (o: number, l: number) => {
  const b = Buffer.from(data.subarray(o, o + l));
  const hs = Math.max(o, HOLE.offset);
  const he = Math.min(o + l, HOLE.offset + HOLE.length);
  if (hs < he) b.fill(0, hs - o, he - o);
  return b;
};

/** A source with random data and one hole, answering after a random delay (pieces finish out of order). */
const source: Endpoint = {
  name: 'memory', size, maxRequest: 32 * MiB, alignment: 1, zeroInitialized: false,
  async read(buf, offset) {
    await new Promise((r) => setTimeout(r, Math.random() * 3));
    buf.set(content(offset, buf.length));
    const hs = Math.max(offset, HOLE.offset);
    const he = Math.min(offset + buf.length, HOLE.offset + HOLE.length);
    return { holes: hs < he ? [{ offset: hs, length: he - hs }] : [] };
  },
  async write() {}, async zero() {}, async discard() {}, async flush() {}, async close() {},
};

function definition(extents: [number, number][]): string {
  const outer = createHash('sha256');
  for (const [o, l] of extents) {
    for (let p = o; p < o + l;) {
      const e = Math.min(o + l, (Math.floor(p / DIGEST_SEGMENT) + 1) * DIGEST_SEGMENT);
      const rec = Buffer.alloc(48);
      rec.writeBigUInt64BE(BigInt(p), 0);
      rec.writeBigUInt64BE(BigInt(e - p), 8);
      createHash('sha256').update(content(p, e - p)).digest().copy(rec, 16);
      outer.update(rec);
      p = e;
    }
  }
  return outer.digest('hex');
}

const extents: [number, number][] = [[0, 3 * MiB], [3 * MiB + 4096, 5000], [4 * MiB, 9 * MiB], [40 * MiB, MiB], [63 * MiB, MiB]];

describe('backup checksum', () => {
  it.each([[1, 1], [1, 16], [2, 16], [8, 4], [0.25, 64], [0.0625, 32]])('request size %f MiB, %i in flight: equals the definition', async (mib, inflight) => {
    const dg = new ExtentDigest();
    await copyExtents(source, dg.wrap(new NullEndpoint(size)), dg.track(extents.map(([offset, length]) => ({ offset, length }))), {
      requestSize: mib * MiB, inflight,
    });
    expect(await dg.finish()).toBe(definition(extents));
    expect(dg.extents).toEqual(extents);
    expect(dg.bytes).toBe(extents.reduce((s, [, l]) => s + l, 0));
  });

  it('zero-marked extents are not part of the data copied', async () => {
    const dg = new ExtentDigest();
    await copyExtents(source, dg.wrap(new NullEndpoint(size)), dg.track([
      { offset: 0, length: 2 * MiB }, { offset: 2 * MiB, length: 30 * MiB, zero: true }, { offset: 32 * MiB, length: MiB },
    ]), { requestSize: 2 * MiB });
    expect(await dg.finish()).toBe(definition([[0, 2 * MiB], [32 * MiB, MiB]]));
  });

  it('nothing copied has a fixed checksum; bytes missing or given twice are an error', async () => {
    expect(await new ExtentDigest().finish()).toBe(createHash('sha256').digest('hex'));
    const missing = new ExtentDigest();
    for await (const _ of missing.track([{ offset: 0, length: 2 * MiB }])) { /* hand it out */ }
    await missing.feed(MiB + 10, 10, Buffer.alloc(10));
    await expect(missing.finish()).rejects.toThrow(/incomplete/);
    const twice = new ExtentDigest();
    for await (const _ of twice.track([{ offset: 0, length: 2 * MiB }])) { /* hand it out */ }
    await twice.feed(0, 10, Buffer.alloc(10));
    await twice.feed(0, 10, Buffer.alloc(10));
    await expect(twice.finish()).rejects.toThrow(/twice/);
  });

  it('the hashing thread stops a few seconds after the last digest; the next digest starts a new one', async () => {
    const run = async () => {
      const dg = new ExtentDigest();
      await copyExtents(source, dg.wrap(new NullEndpoint(size)), dg.track([{ offset: 0, length: 2 * MiB }]), { requestSize: MiB });
      const id = hashingThreadId();
      expect(await dg.finish()).toBe(definition([[0, 2 * MiB]]));
      return id;
    };
    const first = await run();
    expect(first).toBeDefined();
    await pollUntil(() => hashingThreadId() === undefined, 'the idle hashing thread to stop', { timeoutMs: 15_000, intervalMs: 100 });
    const second = await run();
    expect(second).toBeDefined();
    expect(second).not.toBe(first);
  }, 30_000);
});
