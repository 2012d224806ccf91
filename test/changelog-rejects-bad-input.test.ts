// Bad input to the change log is refused with an error that names it, and changes nothing: bad consumer names,
// unknown domains, consumers, disks, bitmaps and passes, out-of-order bitmap states, and a damaged database file.
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChangeLog, ChangeLogCorruptError } from '../src/changelog/index.js';
import { UsageError, VirtcbtError } from '../src/util/errors.js';
import { GiB, guestWrote, tempLog, type TempLog } from './support/changelog.js';

const B = 65536;

function thrown(fn: () => unknown): VirtcbtError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(VirtcbtError);
    return err as VirtcbtError;
  }
  throw new Error('expected an error, got none');
}

const fingerprint = (p: string) => ({
  sha: createHash('sha256').update(readFileSync(p)).digest('hex'),
  size: statSync(p).size,
  mtimeMs: statSync(p).mtimeMs,
});

describe('change log refuses bad input', () => {
  let t: TempLog;
  beforeEach(() => {
    t = tempLog();
    t.log.ensureDomain('vm');
    t.log.upsertDisk('vm', 'vda', { blockSize: B, sizeBytes: GiB });
  });
  afterEach(() => t.cleanup());

  it('rejects bad consumer names, naming them, and accepts good ones', () => {
    const bad = ['', 'a/b', 'a b', '-x', '.hidden', '_x', 'x'.repeat(65), 'naïve', 'tab\there', 'new\nline', '../up'];
    for (const name of bad) {
      const err = thrown(() => t.log.addConsumer('vm', name));
      expect(err).toBeInstanceOf(UsageError);
      expect(err.message).toContain(JSON.stringify(name));
      expect(err.domain).toBe('vm');
    }
    expect(t.log.listConsumers('vm')).toEqual([]);
    for (const name of ['a', 'A.b_c-1', '0day', 'x'.repeat(64)]) t.log.addConsumer('vm', name);
    expect(t.log.listConsumers('vm')).toHaveLength(4);
    expect(thrown(() => t.log.addConsumer('vm', 'a')).message).toMatch(/consumer a already exists/);
    // Look-ups validate too, so a bad name never reaches SQL as a "not found".
    expect(thrown(() => t.log.changes('vm', 'a b')).message).toContain('"a b"');
  });

  it('names the unknown domain, consumer, disk, bitmap and pass', () => {
    const { log } = t;
    for (const fn of [() => log.changes('nope', 'a'), () => log.status('nope'), () => log.currentGeneration('nope'),
      () => log.upsertDisk('nope', 'vda', { blockSize: B, sizeBytes: GiB }), () => log.removeDomain('nope')]) {
      const err = thrown(fn);
      expect(err).toBeInstanceOf(UsageError);
      expect(err.message).toMatch(/domain nope is not in the change log/);
      expect(err.domain).toBe('nope');
      expect(err.describe()).toMatch(/^domain nope: /);
    }
    const c = thrown(() => log.beginPass('vm', 'ghost'));
    expect(c.message).toMatch(/consumer ghost does not exist/);
    expect(c.hint).toMatch(/virtcbt consumer add vm ghost/);
    expect(thrown(() => log.removeConsumer('vm', 'ghost')).message).toMatch(/consumer ghost/);
    const d = thrown(() => log.raiseFloor('vm', 'vdz', 'x'));
    expect(d.describe()).toMatch(/domain vm, disk vdz: disk vdz is not tracked/);
    expect(thrown(() => log.fold('vm', 'vda', 'unknown-bitmap', [])).message).toMatch(/bitmap unknown-bitmap is not recorded/);
    for (const fn of [() => log.passChanges(999), () => log.commitPass(999), () => log.abortPass(999), () => log.getPass(999)]) {
      expect(thrown(fn).message).toMatch(/pass 999 does not exist/);
    }
    expect(thrown(() => log.commitPass(-1)).message).toMatch(/pass id -1 is not valid/);
  });

  it('refuses nonsense disk specs and bitmap bookkeeping that could hide changes', () => {
    const { log } = t;
    expect(thrown(() => log.upsertDisk('vm', 'vdb', { blockSize: 3000, sizeBytes: GiB })).message).toMatch(/not a power of two/);
    expect(thrown(() => log.upsertDisk('vm', 'vdb', { blockSize: B, sizeBytes: -1 })).message).toMatch(/not a byte count/);
    expect(thrown(() => log.upsertDisk('vm', 'bad/target', { blockSize: B, sizeBytes: GiB })).message).toMatch(/disk target "bad\/target"/);
    const g = log.currentGeneration('vm');
    // Only fold() may mark a bitmap folded; a new bitmap must record the current generation.
    expect(thrown(() => log.recordBitmap('vm', 'vda', 'b', g, 'folded' as never)).message).toMatch(/only by fold/);
    expect(thrown(() => log.recordBitmap('vm', 'vda', 'b', g - 0.5 + 1.5, 'active')).message).toMatch(/would record generation/);
    log.recordBitmap('vm', 'vda', 'b', g, 'active');
    expect(thrown(() => log.recordBitmap('vm', 'vda', 'b', g + 1, 'frozen')).message).toMatch(/recorded with generation/);
    expect(thrown(() => log.setBitmapState('vm', 'vda', 'b', 'creating')).message).toMatch(/cannot go back to creating/);
    // A pass must rotate every disk whose bitmap is recording.
    log.addConsumer('vm', 'c');
    const e = thrown(() => log.beginPass('vm', 'c'));
    expect(e.message).toMatch(/active bitmap b that this pass does not rotate/);
    expect(log.currentGeneration('vm')).toBe(g);
    const p = log.beginPass('vm', 'c', { newBitmaps: [{ target: 'vda', name: 'b2' }] });
    expect(log.listBitmaps('vm', 'vda').find((x) => x.name === 'b2')).toMatchObject({ state: 'creating', generation: g + 1 });
    // Its changes are refused until the old bitmap is frozen and folded, and so is the commit.
    expect(thrown(() => log.passChanges(p.id)).message).toMatch(/bitmap b \(generation \d+\) is active, not folded yet/);
    expect(thrown(() => log.commitPass(p.id)).message).toMatch(/not folded yet/);
    log.markRotated('vm', [{ target: 'vda', frozen: 'b', active: 'b2' }]);
    log.fold('vm', 'vda', 'b', [[0, B]]);
    expect(log.passChanges(p.id)[0].full).toBe(true);
    log.commitPass(p.id);
    expect(thrown(() => log.passChanges(p.id)).message).toMatch(/pass \d+ is committed/);
    expect(thrown(() => log.abortPass(p.id)).message).toMatch(/already committed/);
    expect(() => guestWrote(log, 'vm', 'vda', [[GiB, 1]])).toThrow(/past the disk's end/);
    expect(() => guestWrote(log, 'vm', 'vda', [[-5, 1]])).toThrow(/non-negative integers/);
  });
});

describe('change log refuses a damaged file and leaves it as it was', () => {
  let t: TempLog;
  beforeEach(() => { t = tempLog(); });
  afterEach(() => t.cleanup());

  function expectRefused(path: string, pattern: RegExp): ChangeLogCorruptError {
    const before = fingerprint(path);
    let err: unknown;
    try {
      ChangeLog.open(path).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ChangeLogCorruptError);
    const e = err as ChangeLogCorruptError;
    expect(e.message).toContain(path);
    expect(e.message).toMatch(pattern);
    expect(e.hint).toContain(`move ${path} aside`);
    expect(e.hint).toMatch(/next pass of every consumer will be full/);
    expect(fingerprint(path)).toEqual(before);
    return e;
  }

  it('a file that is not SQLite at all', () => {
    const path = join(t.dir, 'garbage.db');
    writeFileSync(path, Buffer.alloc(8192, 0x5a));
    expectRefused(path, /not a readable SQLite database/);
  });

  it('a change log cut short (a torn copy or a full disk)', () => {
    const { log } = t;
    log.ensureDomain('vm');
    log.upsertDisk('vm', 'vda', { blockSize: B, sizeBytes: 1024 * GiB });
    // A consumer that has passed, so that the log keeps what it folds.
    log.addConsumer('vm', 'c');
    log.commitPass(log.beginPass('vm', 'c').id);
    // Enough scattered blocks to need many database pages.
    const ext: [number, number][] = [];
    for (let k = 0; k < 200_000; k++) ext.push([k * 83 * B, B]);
    guestWrote(log, 'vm', 'vda', ext);
    log.checkpoint();
    log.close();
    const size = statSync(t.path).size;
    expect(size).toBeGreaterThan(64 * 1024);
    truncateSync(t.path, Math.floor(size / 2));
    expectRefused(t.path, /integrity check|not a readable SQLite database/);
  });

  it('an SQLite database that is not a change log, or one from a newer virtcbt', () => {
    const foreign = join(t.dir, 'foreign.db');
    const f = new Database(foreign);
    f.exec('CREATE TABLE photos (id INTEGER PRIMARY KEY)');
    f.close();
    expectRefused(foreign, /not a virtcbt change log \(tables: photos\)/);

    const newer = join(t.dir, 'newer.db');
    ChangeLog.open(newer).close();
    const n = new Database(newer);
    n.pragma('user_version = 99');
    n.close();
    const before = fingerprint(newer);
    expect(() => ChangeLog.open(newer)).toThrow(/schema version 99, newer than this virtcbt understands/);
    expect(fingerprint(newer)).toEqual(before);
  });

  it('an existing healthy log reopens with its content', () => {
    const { log, path } = t;
    log.ensureDomain('vm');
    log.upsertDisk('vm', 'vda', { blockSize: B, sizeBytes: GiB });
    log.addConsumer('vm', 'a');
    log.close();
    const again = ChangeLog.open(path);
    try {
      expect(again.listConsumers('vm').map((c) => c.name)).toEqual(['a']);
    } finally {
      again.close();
    }
  });
});
