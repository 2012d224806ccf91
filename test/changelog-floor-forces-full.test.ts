// The floor: whenever the log cannot prove what changed (bitmap lost, disk resized, new disk, unreadable page),
// every consumer whose last pass is below it gets a full pass, with the reason shown in status.
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ChangeLog } from '../src/changelog/index.js';
import { GiB, asPairs, guestWrote, tempLog, type TempLog } from './support/changelog.js';

const B = 65536;
const disk = (log: ChangeLog, consumer: string, target: string) => asPairs(log.changes('vm', consumer)).find((d) => d.target === target)!;

function completePass(log: ChangeLog, consumer: string): number {
  const p = log.beginPass('vm', consumer);
  asPairs(log.passChanges(p.id));
  log.commitPass(p.id);
  return p.generation;
}

describe('change-log floor', () => {
  let t: TempLog;
  beforeEach(() => {
    t = tempLog();
    t.log.ensureDomain('vm');
    t.log.upsertDisk('vm', 'vda', { blockSize: B, sizeBytes: GiB });
    t.log.upsertDisk('vm', 'vdb', { blockSize: B, sizeBytes: 2 * GiB });
    t.log.addConsumer('vm', 'A');
    t.log.addConsumer('vm', 'B');
    completePass(t.log, 'A');
    completePass(t.log, 'B');
  });
  afterEach(() => t.cleanup());

  it('raiseFloor makes every consumer full for that disk only, and status says why and when', () => {
    const { log } = t;
    guestWrote(log, 'vm', 'vda', [[0, B]]);
    guestWrote(log, 'vm', 'vdb', [[B, B]]);
    expect(disk(log, 'A', 'vda')).toMatchObject({ full: false, extents: [[0, B]] });

    t.setNow('2026-02-03T04:05:06.000Z');
    const info = log.raiseFloor('vm', 'vda', 'bitmap virtcbt-7 was lost');
    expect(info.floor).toBe(log.currentGeneration('vm'));
    for (const c of ['A', 'B']) {
      const d = disk(log, c, 'vda');
      expect(d.full).toBe(true);
      expect(d.extents).toEqual([[0, GiB]]);
      expect(d.reason).toContain('bitmap virtcbt-7 was lost');
      expect(d.reason).toContain('2026-02-03T04:05:06.000Z');
      // The other disk is not affected.
      expect(disk(log, c, 'vdb')).toMatchObject({ full: false, extents: [[B, B]] });
    }
    const st = log.status('vm').disks.find((d) => d.target === 'vda')!;
    expect(st).toMatchObject({ floor: info.floor, floorReason: 'bitmap virtcbt-7 was lost', floorAt: '2026-02-03T04:05:06.000Z' });

    // A full pass brings A back to incremental; B stays full until it passes too.
    completePass(log, 'A');
    guestWrote(log, 'vm', 'vda', [[5 * B, 1]]);
    expect(disk(log, 'A', 'vda')).toMatchObject({ full: false, extents: [[5 * B, B]] });
    expect(disk(log, 'B', 'vda').full).toBe(true);
  });

  it('a floor raised while a pass is open makes that pass full, and the one after it', () => {
    const { log } = t;
    const p = log.beginPass('vm', 'A');
    expect(asPairs(log.passChanges(p.id)).find((d) => d.target === 'vda')!.full).toBe(false);
    log.raiseFloor('vm', 'vda', 'disk moved by a block copy');
    const during = asPairs(log.passChanges(p.id)).find((d) => d.target === 'vda')!;
    expect(during.full).toBe(true);
    expect(during.reason).toContain('disk moved by a block copy');
    log.commitPass(p.id);
    // P is below the floor: the consumer's next pass is full again.
    expect(disk(log, 'A', 'vda').full).toBe(true);
    completePass(log, 'A');
    expect(disk(log, 'A', 'vda').full).toBe(false);
  });

  it('a new disk starts with the floor at the current generation', () => {
    const { log } = t;
    const r = log.upsertDisk('vm', 'vdc', { blockSize: B, sizeBytes: GiB });
    expect(r).toMatchObject({ created: true, floor: log.currentGeneration('vm'), floorReason: 'disk added to the change log' });
    expect(disk(log, 'A', 'vdc').full).toBe(true);
    expect(disk(log, 'A', 'vda').full).toBe(false);
    // Upserting again with the same spec changes nothing.
    const again = log.upsertDisk('vm', 'vdc', { blockSize: B, sizeBytes: GiB });
    expect(again.created).toBe(false);
    expect(again.floorRaised).toBeUndefined();
    expect(again.floor).toBe(r.floor);
    // A disk that leaves the domain and comes back is new again, whatever was folded for it before.
    completePass(log, 'A');
    guestWrote(log, 'vm', 'vdc', [[0, B]]);
    expect(disk(log, 'A', 'vdc')).toMatchObject({ full: false, extents: [[0, B]] });
    log.removeDisk('vm', 'vdc');
    expect(log.listDisks('vm').map((d) => d.target)).toEqual(['vda', 'vdb']);
    log.upsertDisk('vm', 'vdc', { blockSize: B, sizeBytes: GiB });
    expect(disk(log, 'A', 'vdc').full).toBe(true);
  });

  it('a size or block-size change raises the floor, updates the block count and drops stale blocks', () => {
    const { log } = t;
    guestWrote(log, 'vm', 'vda', [[GiB - B, B]]);
    const grown = log.upsertDisk('vm', 'vda', { blockSize: B, sizeBytes: 2 * GiB + 100 });
    expect(grown.floorRaised).toMatch(/disk size changed from 1073741824 to 2147483748 bytes/);
    expect(grown.blockCount).toBe(2 * GiB / B + 1);
    expect(disk(log, 'A', 'vda')).toMatchObject({ full: true, extents: [[0, 2 * GiB + 100]] });
    expect(log.status('vm').disks.find((d) => d.target === 'vda')!.storedPages).toBe(0);

    // After a full pass, a write to the short last block is reported clipped to the disk's end.
    completePass(log, 'A');
    guestWrote(log, 'vm', 'vda', [[2 * GiB, 100]]);
    expect(disk(log, 'A', 'vda')).toMatchObject({ full: false, extents: [[2 * GiB, 100]] });

    const regranular = log.upsertDisk('vm', 'vda', { blockSize: 2 * B, sizeBytes: 2 * GiB + 100 });
    expect(regranular.floorRaised).toMatch(/block size changed from 65536 to 131072/);
    expect(disk(log, 'A', 'vda').full).toBe(true);
  });

  it('a fold past the disk end (stale size) is refused, changing nothing', () => {
    const { log } = t;
    log.recordBitmap('vm', 'vda', 'big', log.currentGeneration('vm'), 'frozen');
    expect(() => log.fold('vm', 'vda', 'big', [[0, B], [GiB, B]])).toThrow(/past the disk's end/);
    try {
      log.fold('vm', 'vda', 'big', [[GiB, B]]);
    } catch (err) {
      expect((err as { hint?: string }).hint).toMatch(/upsertDisk/);
    }
    expect(log.listBitmaps('vm', 'vda')[0].state).toBe('frozen');
    expect(disk(log, 'A', 'vda').extents).toEqual([]);
  });

  it('dropping a bitmap that was never folded raises the floor; dropping a folded or creating one does not', () => {
    const { log } = t;
    const g = log.currentGeneration('vm');
    log.recordBitmap('vm', 'vda', 'done', g, 'frozen');
    log.fold('vm', 'vda', 'done', [[0, B]]);
    expect(log.forgetBitmap('vm', 'vda', 'done')).toEqual({ forgotten: true });
    log.recordBitmap('vm', 'vda', 'never-made', g, 'creating');
    expect(log.forgetBitmap('vm', 'vda', 'never-made')).toEqual({ forgotten: true });
    expect(disk(log, 'A', 'vda').full).toBe(false);

    log.recordBitmap('vm', 'vda', 'lost', g, 'active');
    log.setBitmapState('vm', 'vda', 'lost', 'frozen');
    const r = log.forgetBitmap('vm', 'vda', 'lost');
    expect(r.floorRaised).toMatch(/bitmap lost \(generation \d+\) was dropped while frozen/);
    expect(disk(log, 'A', 'vda')).toMatchObject({ full: true });
    expect(disk(log, 'A', 'vda').reason).toContain('dropped while frozen');
    // Forgetting again is a no-op.
    expect(log.forgetBitmap('vm', 'vda', 'lost')).toEqual({ forgotten: false });
  });

  it('an unreadable page makes the disk full instead of guessing, and the next fold clears it', () => {
    const { log, path } = t;
    guestWrote(log, 'vm', 'vda', [[0, B], [3 * B, B]]);
    // Damage the page's BLOB behind the log's back (a bad sector, a bug): a varint that never ends.
    const raw = new Database(path);
    try {
      raw.prepare('UPDATE pages SET runs = ? WHERE page_no = 0').run(Buffer.from([0x80, 0x80]));
    } finally {
      raw.close();
    }
    const d = disk(log, 'A', 'vda');
    expect(d.full).toBe(true);
    expect(d.reason).toMatch(/could not be read/);
    expect(disk(log, 'A', 'vdb').full).toBe(false);

    const r = guestWrote(log, 'vm', 'vda', [[7 * B, B]]);
    expect(r.floorRaised).toMatch(/could not be read/);
    expect(disk(log, 'A', 'vda').full).toBe(true);
    expect(log.status('vm').disks.find((x) => x.target === 'vda')!.floorReason).toMatch(/could not be read during a fold/);
    completePass(log, 'A');
    guestWrote(log, 'vm', 'vda', [[9 * B, B]]);
    expect(disk(log, 'A', 'vda')).toMatchObject({ full: false, extents: [[9 * B, B]] });
  });
});
