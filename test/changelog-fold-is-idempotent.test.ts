// Folding is all-or-nothing and repeatable: a repeated fold is a no-op, a fold that fails half-way leaves no trace,
// and a block's generation never goes down.
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PAGE_BLOCKS } from '../src/changelog/index.js';
import { GiB, asPairs, tempLog, type TempLog } from './support/changelog.js';

const B = 65536;
const PAGE_BYTES = PAGE_BLOCKS * B;

function pageRows(path: string): { page_no: number; runs: Buffer }[] {
  const raw = new Database(path, { readonly: true });
  try {
    return raw.prepare('SELECT page_no, runs FROM pages ORDER BY disk_id, page_no').all() as { page_no: number; runs: Buffer }[];
  } finally {
    raw.close();
  }
}

describe('change-log fold', () => {
  let t: TempLog;
  beforeEach(() => {
    t = tempLog();
    t.log.ensureDomain('vm');
    // 5 pages' worth of disk.
    t.log.upsertDisk('vm', 'vda', { blockSize: B, sizeBytes: 5 * PAGE_BYTES });
    t.log.addConsumer('vm', 'A');
    const p = t.log.beginPass('vm', 'A');
    t.log.commitPass(p.id);
  });
  afterEach(() => t.cleanup());

  const extents: [number, number][] = [[100, 1], [PAGE_BYTES - B, 3 * B], [3 * PAGE_BYTES + 7, 2 * PAGE_BYTES - 7]];
  const expected = [[0, B], [PAGE_BYTES - B, 3 * B], [3 * PAGE_BYTES, 2 * PAGE_BYTES]];

  it('a second fold of the same bitmap is a no-op that says so', () => {
    const { log, path } = t;
    const g = log.currentGeneration('vm');
    log.recordBitmap('vm', 'vda', 'b1', g, 'frozen');
    const first = log.fold('vm', 'vda', 'b1', extents);
    expect(first).toMatchObject({ alreadyFolded: false, generation: g, extents: 3, blocks: 1 + 3 + 2 * PAGE_BLOCKS, pages: 4 });
    expect(log.listBitmaps('vm', 'vda')[0]).toMatchObject({ name: 'b1', state: 'folded' });
    const before = pageRows(path);
    const statusBefore = log.status('vm').disks[0];

    const second = log.fold('vm', 'vda', 'b1', extents);
    expect(second).toEqual({ alreadyFolded: true, generation: g, extents: 0, blocks: 0, pages: 0 });
    // Even with other extents: the bitmap's content is already in the log.
    expect(log.fold('vm', 'vda', 'b1', [[B * 40, B]]).alreadyFolded).toBe(true);
    expect(pageRows(path)).toEqual(before);
    expect(log.status('vm').disks[0].foldCount).toBe(statusBefore.foldCount);
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual(expected);
  });

  it('a fold that fails half-way (SQLite rolls back) leaves nothing, and the retry equals a clean fold', () => {
    const { log, path } = t;
    const g = log.currentGeneration('vm');
    log.recordBitmap('vm', 'vda', 'b1', g, 'frozen');
    // Make the write of page 3 fail, after pages 0 and 1 were written inside the fold's transaction.
    const raw = new Database(path);
    try {
      raw.exec(`CREATE TRIGGER fail_page_3 BEFORE INSERT ON pages WHEN NEW.page_no = 3
                BEGIN SELECT RAISE(ABORT, 'injected failure on page 3'); END`);
    } finally {
      raw.close();
    }
    expect(() => log.fold('vm', 'vda', 'b1', extents)).toThrow(/injected failure on page 3/);
    expect(pageRows(path)).toEqual([]);
    expect(log.listBitmaps('vm', 'vda')[0].state).toBe('frozen');
    expect(log.status('vm').disks[0]).toMatchObject({ foldCount: 0, lastFold: null });
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual([]);

    const fix = new Database(path);
    try { fix.exec('DROP TRIGGER fail_page_3'); } finally { fix.close(); }
    expect(log.fold('vm', 'vda', 'b1', extents)).toMatchObject({ alreadyFolded: false, pages: 4 });
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual(expected);
    expect(log.status('vm').disks[0]).toMatchObject({ foldCount: 1, lastFold: { bitmap: 'b1', extents: 3 } });
  });

  it('a late fold of an older bitmap never lowers a newer generation', () => {
    const { log } = t;
    const g1 = log.currentGeneration('vm');
    log.recordBitmap('vm', 'vda', 'old', g1, 'frozen');
    // A pass starts (generation g1 → g1 + 1) before the old bitmap was folded; a newer bitmap is folded first.
    const p = log.beginPass('vm', 'A');
    log.recordBitmap('vm', 'vda', 'new', g1 + 1, 'frozen');
    log.fold('vm', 'vda', 'new', [[0, B]]);
    expect(() => asPairs(log.passChanges(p.id))).toThrow(/bitmap old \(generation \d+\) is frozen, not folded yet/);
    log.fold('vm', 'vda', 'old', [[0, 2 * B]]);
    // Block 0 keeps g1 + 1; block 1 has g1.
    log.commitPass(p.id);
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual([[0, B]]);
  });

  it('unsorted, overlapping and zero-length extents fold like their sorted union', () => {
    const { log } = t;
    const g = log.currentGeneration('vm');
    log.recordBitmap('vm', 'vda', 'messy', g, 'frozen');
    const r = log.fold('vm', 'vda', 'messy', [
      { offset: 10 * B, length: B }, { offset: 0, length: 0 }, [9 * B + 1, B], [2 * B, 1], [2 * B + 10, 5],
    ]);
    expect(r).toMatchObject({ extents: 2, blocks: 3 });
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual([[2 * B, B], [9 * B, 2 * B]]);
  });

  it('folds a bitmap only once it is frozen', () => {
    const { log } = t;
    const g = log.currentGeneration('vm');
    log.recordBitmap('vm', 'vda', 'live', g, 'active');
    expect(() => log.fold('vm', 'vda', 'live', [[0, B]])).toThrow(/is active, not frozen/);
    log.markRotated('vm', [{ target: 'vda', frozen: 'live', active: 'next' }].map((r) => {
      log.recordBitmap('vm', 'vda', r.active, g, 'creating');
      return r;
    }));
    expect(log.listBitmaps('vm', 'vda').map((b) => [b.name, b.state])).toEqual([['live', 'frozen'], ['next', 'active']]);
    expect(log.fold('vm', 'vda', 'live', [[0, B]]).alreadyFolded).toBe(false);
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual([[0, B]]);
  });

  it('an empty disk folds nothing and reports nothing', () => {
    const { log } = t;
    log.upsertDisk('vm', 'empty', { blockSize: B, sizeBytes: 0 });
    log.recordBitmap('vm', 'empty', 'e', log.currentGeneration('vm'), 'frozen');
    expect(log.fold('vm', 'empty', 'e', [])).toMatchObject({ blocks: 0, pages: 0 });
    expect(asPairs(log.changes('vm', 'A')).find((d) => d.target === 'empty')!.extents).toEqual([]);
    expect(GiB).toBeGreaterThan(0);
  });

  it('a fold prunes the pages it rewrites of runs that no consumer can ask for any more', () => {
    const { log } = t;
    const write = (name: string, ext: [number, number][]) => {
      log.recordBitmap('vm', 'vda', name, log.currentGeneration('vm'), 'frozen');
      log.fold('vm', 'vda', name, ext);
    };
    log.addConsumer('vm', 'B');
    log.commitPass(log.beginPass('vm', 'B').id);
    const scattered: [number, number][] = Array.from({ length: 500 }, (_, k) => [k * 7 * B, B]);
    write('w1', scattered);
    const stored = () => log.status('vm').disks[0].storedBytes;
    const before = stored();
    expect(before).toBeGreaterThan(500);
    // A passes w1; B has not and keeps it alive.
    const pa = log.beginPass('vm', 'A');
    log.commitPass(pa.id);
    write('w2', [[B, B]]);
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual([[B, B]]);
    // A and B have both passed w1's generation now: the next fold into that page drops w1's runs.
    expect(stored()).toBeGreaterThan(before - 10);
    const pb = log.beginPass('vm', 'B');
    log.commitPass(pb.id);
    log.commitPass(log.beginPass('vm', 'A').id);
    write('w3', [[3 * B, B]]);
    expect(stored()).toBeLessThan(10);
    expect(asPairs(log.changes('vm', 'A'))[0].extents).toEqual([[3 * B, B]]);
    expect(asPairs(log.changes('vm', 'B'))[0].extents).toEqual([[3 * B, B]]);
  });
});
