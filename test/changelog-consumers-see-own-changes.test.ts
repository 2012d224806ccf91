// Independent consumers of one change log: each sees the writes since its own last committed pass.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ChangeLog } from '../src/changelog/index.js';
import { PAGE_BLOCKS } from '../src/changelog/index.js';
import { GiB, asPairs, guestWrote, tempLog, type PairedDiskChanges, type TempLog } from './support/changelog.js';

const B = 65536;
const extentsOf = (c: PairedDiskChanges[], target = 'vda') => c.find((d) => d.target === target)!.extents;

/** A full pass + commit, so the consumer is incremental from here on. */
function completePass(log: ChangeLog, consumer: string): number {
  const p = log.beginPass('vm', consumer);
  expect(asPairs(log.passChanges(p.id)).every((d) => d.full)).toBe(true);
  log.commitPass(p.id);
  return p.generation;
}

describe('change-log consumers', () => {
  let t: TempLog;
  beforeEach(() => {
    t = tempLog();
    t.log.ensureDomain('vm');
    t.log.upsertDisk('vm', 'vda', { blockSize: B, sizeBytes: GiB });
    t.log.addConsumer('vm', 'A');
    t.log.addConsumer('vm', 'B');
  });
  afterEach(() => t.cleanup());

  it('each consumer sees its own changes; committing moves only that consumer', () => {
    const { log } = t;
    expect(completePass(log, 'A')).toBe(1);
    expect(completePass(log, 'B')).toBe(2);
    expect(log.currentGeneration('vm')).toBe(3);

    // W1 during generation 3: part of block 0, and blocks 10–11 (an unaligned write straddling them).
    guestWrote(log, 'vm', 'vda', [[0, 100], [10 * B + 5, B]]);
    const w1 = [[0, B], [10 * B, 2 * B]];
    expect(extentsOf(asPairs(log.changes('vm', 'A')))).toEqual(w1);
    expect(extentsOf(asPairs(log.changes('vm', 'B')))).toEqual(w1);

    // A's pass takes generation 3: exactly W1.
    const pa = log.beginPass('vm', 'A');
    expect(pa).toMatchObject({ generation: 3, since: 1, consumer: 'A', state: 'open' });
    const [disk] = asPairs(log.passChanges(pa.id));
    expect(disk).toMatchObject({ target: 'vda', blockSize: B, sizeBytes: GiB, full: false });
    expect(disk.extents).toEqual(w1);
    // W2, folded after the pass began, is generation 4 and belongs to A's next pass. It rewrites block 11, which
    // now carries generation 4: asked again, the pass still lists block 11 (and, harmlessly, W2's other block)
    // rather than lose W1's write to it.
    guestWrote(log, 'vm', 'vda', [[11 * B, B], [512 * 1024 * 1024, 1]]);
    expect(extentsOf(asPairs(log.passChanges(pa.id)))).toEqual([[0, B], [10 * B, 2 * B], [8192 * B, B]]);
    expect(log.commitPass(pa.id)).toEqual({ consumer: 'A', generation: 3, last: 3, moved: true });

    // After A's commit, A sees only W2; B still sees W1 and W2, merged.
    expect(extentsOf(asPairs(log.changes('vm', 'A')))).toEqual([[11 * B, B], [8192 * B, B]]);
    expect(extentsOf(asPairs(log.changes('vm', 'B')))).toEqual([[0, B], [10 * B, 2 * B], [8192 * B, B]]);
    expect(log.listConsumers('vm').map((c) => [c.name, c.last])).toEqual([['A', 3], ['B', 2]]);
  });

  it('a new consumer gets a full pass, with a reason', () => {
    const { log } = t;
    completePass(log, 'A');
    guestWrote(log, 'vm', 'vda', [[0, B]]);
    log.addConsumer('vm', 'C');
    const [c] = asPairs(log.changes('vm', 'C'));
    expect(c.full).toBe(true);
    expect(c.reason).toMatch(/consumer C has no completed pass/);
    expect(c.extents).toEqual([[0, GiB]]);
    // A, meanwhile, is incremental.
    expect(asPairs(log.changes('vm', 'A'))[0]).toMatchObject({ full: false, extents: [[0, B]] });
  });

  it('an aborted pass does not move the consumer, and open passes are listed until closed', () => {
    const { log } = t;
    completePass(log, 'A');
    guestWrote(log, 'vm', 'vda', [[3 * B, B]]);
    const p = log.beginPass('vm', 'A');
    expect(log.openPasses('vm').map((x) => [x.id, x.consumer, x.generation])).toEqual([[p.id, 'A', p.generation]]);
    expect(log.openPasses().map((x) => x.domain)).toEqual(['vm']);
    expect(log.status('vm').openPasses.map((x) => x.id)).toEqual([p.id]);

    // An open pass never moves its consumer.
    expect(log.listConsumers('vm').find((c) => c.name === 'A')!.last).toBe(1);
    expect(log.abortPass(p.id).state).toBe('aborted');
    expect(log.openPasses('vm')).toEqual([]);
    expect(log.listConsumers('vm').find((c) => c.name === 'A')!.last).toBe(1);
    // The write is still there for A's next pass.
    const again = log.beginPass('vm', 'A');
    expect(extentsOf(asPairs(log.passChanges(again.id)))).toEqual([[3 * B, B]]);
    expect(() => log.commitPass(p.id)).toThrow(/pass \d+ is already aborted/);
    log.commitPass(again.id);
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual([]);
  });

  it('two open passes of one consumer: the older commit never moves it back', () => {
    const { log } = t;
    completePass(log, 'A');
    const p1 = log.beginPass('vm', 'A');
    guestWrote(log, 'vm', 'vda', [[7 * B, B]]);
    const p2 = log.beginPass('vm', 'A');
    expect(p2.generation).toBe(p1.generation + 1);
    // Each pass covers what changed after its consumer's last pass when it began; p2 includes the write of
    // generation p1 + 1, and so does p1 asked after that write was folded (it cannot tell that write apart from
    // an earlier one to the same block).
    expect(extentsOf(asPairs(log.passChanges(p2.id)))).toEqual([[7 * B, B]]);
    expect(extentsOf(asPairs(log.passChanges(p1.id)))).toEqual([[7 * B, B]]);
    expect(log.commitPass(p2.id)).toMatchObject({ moved: true, last: p2.generation });
    expect(log.commitPass(p1.id)).toMatchObject({ moved: false, last: p2.generation });
    expect(log.listConsumers('vm').find((c) => c.name === 'A')!.last).toBe(p2.generation);
    expect(() => log.commitPass(p2.id)).toThrow(/already committed/);
    expect(() => log.abortPass(p2.id)).toThrow(/already committed/);
  });

  it('a removed consumer takes its open passes with it; others are untouched', () => {
    const { log } = t;
    completePass(log, 'B');
    const p = log.beginPass('vm', 'A');
    log.removeConsumer('vm', 'A');
    expect(log.openPasses('vm')).toEqual([]);
    expect(() => asPairs(log.passChanges(p.id))).toThrow(/pass \d+ does not exist/);
    expect(log.listConsumers('vm').map((c) => c.name)).toEqual(['B']);
  });

  it('consumers of different domains are independent', () => {
    const { log } = t;
    log.ensureDomain('other');
    log.upsertDisk('other', 'vda', { blockSize: B, sizeBytes: GiB });
    log.addConsumer('other', 'A');
    completePass(log, 'A');
    guestWrote(log, 'vm', 'vda', [[0, 1]]);
    expect(log.currentGeneration('other')).toBe(1);
    expect(asPairs(log.changes('other', 'A'))[0].full).toBe(true);
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual([[0, B]]);
    expect(log.listDomains().map((d) => d.name)).toEqual(['other', 'vm']);
    log.removeDomain('other');
    expect(log.listDomains().map((d) => d.name)).toEqual(['vm']);
  });

  it('writes folded while a first (full) pass is open are kept for the consumer\'s next pass', () => {
    const { log } = t;
    const p = log.beginPass('vm', 'A');
    expect(p.since).toBeNull();
    guestWrote(log, 'vm', 'vda', [[4 * B, B]]);
    expect(asPairs(log.passChanges(p.id))[0].full).toBe(true);
    log.commitPass(p.id);
    expect(asPairs(log.changes('vm', 'A'))[0]).toMatchObject({ full: false, extents: [[4 * B, B]] });
  });

  it.each([12345, 777, 31337])('random writes, passes, commits, aborts, floors and consumers (seed %i): every consumer sees exactly the blocks written since its last pass', (start) => {
    const { log } = t;
    // Deterministic PRNG: a failure reproduces.
    let seed = start;
    const rand = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 2 ** 32; };
    const int = (n: number) => Math.floor(rand() * n);
    const blocks = Math.floor(PAGE_BLOCKS * 2.5);
    const size = blocks * B;
    log.upsertDisk('vm', 'vdb', { blockSize: B, sizeBytes: size });
    const writes: { gen: number; extents: [number, number][] }[] = [];
    let floor = log.listDisks('vm').find((d) => d.target === 'vdb')!.floor;
    const open = new Map<number, { since: number | null }>();
    const consumers = new Set(['A', 'B']);
    let nextConsumer = 0;

    /** What a consumer whose last pass was `since` must be shown: every block written in a later generation. */
    const truth = (since: number | null): [number, number][] => {
      if (since === null || since < floor) return [[0, size]];
      const mark = new Uint8Array(blocks);
      for (const w of writes) {
        if (w.gen <= since) continue;
        for (const [o, l] of w.extents) mark.fill(1, Math.floor(o / B), Math.ceil((o + l) / B));
      }
      const out: [number, number][] = [];
      for (let k = 0; k < blocks;) {
        if (!mark[k]) { k++; continue; }
        let e = k;
        while (e < blocks && mark[e]) e++;
        out.push([k * B, (e - k) * B]);
        k = e;
      }
      return out;
    };
    const vdb = (c: PairedDiskChanges[]) => c.find((d) => d.target === 'vdb')!;

    let checks = 0;
    for (let step = 0; step < 400; step++) {
      const op = rand();
      const names = [...consumers];
      if (op < 0.4) {
        const extents: [number, number][] = [];
        for (let k = 1 + int(20); k > 0; k--) {
          const o = rand() < 0.2 ? (1 + int(2)) * PAGE_BLOCKS * B - int(3 * B) : int(size - 1);
          extents.push([o, Math.min(size - o, 1 + int(4 * B))]);
        }
        writes.push({ gen: log.currentGeneration('vm'), extents });
        guestWrote(log, 'vm', 'vdb', extents);
      } else if (op < 0.55 && names.length > 0) {
        const p = log.beginPass('vm', names[int(names.length)]);
        open.set(p.id, { since: p.since });
      } else if (op < 0.75 && open.size > 0) {
        const ids = [...open.keys()];
        const id = ids[int(ids.length)];
        const got = vdb(asPairs(log.passChanges(id)));
        expect(got.full ? [[0, size]] : got.extents, `pass ${id} at step ${step}`).toEqual(truth(open.get(id)!.since));
        checks++;
        if (rand() < 0.7) log.commitPass(id); else log.abortPass(id);
        open.delete(id);
      } else if (op < 0.88 && names.length > 0) {
        const c = names[int(names.length)];
        const last = log.listConsumers('vm').find((x) => x.name === c)!.last;
        const got = vdb(asPairs(log.changes('vm', c)));
        expect(got.full ? [[0, size]] : got.extents, `consumer ${c} at step ${step}`).toEqual(truth(last));
        checks++;
      } else if (op < 0.92) {
        const c = `N${nextConsumer++}`;
        log.addConsumer('vm', c);
        consumers.add(c);
      } else if (op < 0.95 && names.length > 1) {
        const c = names[int(names.length)];
        for (const p of log.openPasses('vm')) if (p.consumer === c) open.delete(p.id);
        log.removeConsumer('vm', c);
        consumers.delete(c);
      } else if (op < 0.97) {
        floor = log.raiseFloor('vm', 'vdb', `random floor at step ${step}`).floor;
      }
    }
    expect(checks).toBeGreaterThan(100);
  });

  it('a pin keeps the history after its generation, which folds would otherwise prune; passChangesSincePin answers from it', () => {
    const { log } = t;
    // Consumer C has never passed: its first pass (P1) is interrupted and dropped, as a seed cut short.
    log.addConsumer('vm', 'C');
    const p1 = log.beginPass('vm', 'C');
    log.pinHistory('vm', 'C.seed', p1.generation);
    log.abortPass(p1.id);
    // Written after P1, folded (each fold prunes what no consumer or pin can ask for again).
    guestWrote(log, 'vm', 'vda', [[7 * B, B]]);
    guestWrote(log, 'vm', 'vda', [[7 * B, B], [9 * B, 1]]);
    const p2 = log.beginPass('vm', 'C');
    expect(asPairs(log.passChanges(p2.id))[0]!.full).toBe(true);
    expect(extentsOf(asPairs(log.passChangesSincePin(p2.id, 'C.seed')))).toEqual([[7 * B, B], [9 * B, B]]);
    log.abortPass(p2.id);
    // Without a pin, the same asked of a fresh log: nothing keeps the history, and it is gone.
    log.removeConsumer('vm', 'C.seed');
    expect(() => log.passChangesSincePin(log.beginPass('vm', 'C').id, 'C.seed')).toThrow(/no pin C\.seed/);
  });

  it('without the pin, folds prune the history after an abandoned first pass (why the pin exists)', () => {
    const { log } = t;
    log.addConsumer('vm', 'C');
    const p1 = log.beginPass('vm', 'C');
    log.abortPass(p1.id);
    log.addConsumer('vm', 'late');
    guestWrote(log, 'vm', 'vda', [[7 * B, B]]);
    const p2 = log.beginPass('vm', 'C');
    guestWrote(log, 'vm', 'vda', [[8 * B, B]]);
    // A pin made only now names p1's generation, but the fold above had nothing holding it: block 7 is gone.
    log.pinHistory('vm', 'late-pin', p1.generation);
    expect(extentsOf(asPairs(log.passChangesSincePin(p2.id, 'late-pin')))).not.toContainEqual([7 * B, B]);
  });
});
