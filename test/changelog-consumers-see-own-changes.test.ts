// Independent consumers of one change log: each sees the writes since its own last committed pass.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ChangeLog, DiskChanges } from '../src/changelog/index.js';
import { GiB, guestWrote, tempLog, type TempLog } from './support/changelog.js';

const B = 65536;
const extentsOf = (c: DiskChanges[], target = 'vda') => c.find((d) => d.target === target)!.extents;

/** A full pass + commit, so the consumer is incremental from here on. */
function completePass(log: ChangeLog, consumer: string): number {
  const p = log.beginPass('vm', consumer);
  expect(log.passChanges(p.id).every((d) => d.full)).toBe(true);
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
    expect(extentsOf(log.changes('vm', 'A'))).toEqual(w1);
    expect(extentsOf(log.changes('vm', 'B'))).toEqual(w1);

    // A's pass takes generation 3: exactly W1.
    const pa = log.beginPass('vm', 'A');
    expect(pa).toMatchObject({ generation: 3, since: 1, consumer: 'A', state: 'open' });
    const [disk] = log.passChanges(pa.id);
    expect(disk).toMatchObject({ target: 'vda', blockSize: B, sizeBytes: GiB, full: false });
    expect(disk.extents).toEqual(w1);
    // W2, folded after the pass began, is generation 4 and belongs to A's next pass. It rewrites block 11, which
    // now carries generation 4: asked again, the pass still lists block 11 (and, harmlessly, W2's other block)
    // rather than lose W1's write to it.
    guestWrote(log, 'vm', 'vda', [[11 * B, B], [512 * 1024 * 1024, 1]]);
    expect(extentsOf(log.passChanges(pa.id))).toEqual([[0, B], [10 * B, 2 * B], [8192 * B, B]]);
    expect(log.commitPass(pa.id)).toEqual({ consumer: 'A', generation: 3, last: 3, moved: true });

    // After A's commit, A sees only W2; B still sees W1 and W2, merged.
    expect(extentsOf(log.changes('vm', 'A'))).toEqual([[11 * B, B], [8192 * B, B]]);
    expect(extentsOf(log.changes('vm', 'B'))).toEqual([[0, B], [10 * B, 2 * B], [8192 * B, B]]);
    expect(log.listConsumers('vm').map((c) => [c.name, c.last])).toEqual([['A', 3], ['B', 2]]);
  });

  it('a new consumer gets a full pass, with a reason', () => {
    const { log } = t;
    completePass(log, 'A');
    guestWrote(log, 'vm', 'vda', [[0, B]]);
    log.addConsumer('vm', 'C');
    const [c] = log.changes('vm', 'C');
    expect(c.full).toBe(true);
    expect(c.reason).toMatch(/consumer C has no completed pass/);
    expect(c.extents).toEqual([[0, GiB]]);
    // A, meanwhile, is incremental.
    expect(log.changes('vm', 'A')[0]).toMatchObject({ full: false, extents: [[0, B]] });
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
    expect(extentsOf(log.passChanges(again.id))).toEqual([[3 * B, B]]);
    expect(() => log.commitPass(p.id)).toThrow(/pass \d+ is already aborted/);
    log.commitPass(again.id);
    expect(log.changes('vm', 'A')[0].extents).toEqual([]);
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
    expect(extentsOf(log.passChanges(p2.id))).toEqual([[7 * B, B]]);
    expect(extentsOf(log.passChanges(p1.id))).toEqual([[7 * B, B]]);
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
    expect(() => log.passChanges(p.id)).toThrow(/pass \d+ does not exist/);
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
    expect(log.changes('other', 'A')[0].full).toBe(true);
    expect(log.changes('vm', 'A')[0].extents).toEqual([[0, B]]);
    expect(log.listDomains().map((d) => d.name)).toEqual(['other', 'vm']);
    log.removeDomain('other');
    expect(log.listDomains().map((d) => d.name)).toEqual(['vm']);
  });
});
