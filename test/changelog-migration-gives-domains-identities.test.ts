// Schema 2 → 3: opening a change log written before identities gives every domain one (a distinct UUID) and changes
// nothing else: the same rows in every table, the same changes for every consumer. The migration runs once; a
// domain removed and added again (disable, enable) gets a new identity.
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChangeLog, SCHEMA_VERSION, isLogId, logContinuity } from '../src/changelog/index.js';
import { GiB, MiB, guestWrote, tempLog, type TempLog } from './support/changelog.js';

const B = 65536;
const TABLES = ['domains', 'disks', 'pages', 'bitmaps', 'consumers', 'passes'];

/** Every row of every table, domains without log_id: what the migration must leave as it was. */
function dump(path: string): Record<string, unknown[]> {
  const db = new Database(path, { readonly: true });
  try {
    const out: Record<string, unknown[]> = {};
    for (const t of TABLES) {
      out[t] = (db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).all() as Record<string, unknown>[]).map(({ log_id: _, ...rest }) => rest);
    }
    return out;
  } finally {
    db.close();
  }
}

/** The file as virtcbt with schema 2 left it: the domains table without log_id, user_version 2. */
function downgradeToSchema2(path: string): void {
  const db = new Database(path);
  try {
    db.exec('DROP INDEX domains_by_log_id; ALTER TABLE domains DROP COLUMN log_id');
    db.pragma('user_version = 2');
    const cols = (db.prepare('PRAGMA table_info(domains)').all() as { name: string }[]).map((c) => c.name);
    expect(cols).toEqual(['id', 'name', 'generation', 'created_at']);
  } finally {
    db.close();
  }
}

describe('change log schema 2 → 3', () => {
  let t: TempLog;
  beforeEach(() => {
    t = tempLog();
  });
  afterEach(() => t.cleanup());

  it('gives each existing domain its own identity and changes nothing else', () => {
    for (const vm of ['vm1', 'vm2']) {
      t.log.ensureDomain(vm);
      t.log.upsertDisk(vm, 'vda', { blockSize: B, sizeBytes: GiB });
      t.log.addConsumer(vm, 'nightly');
      t.log.addConsumer(vm, 'weekly');
      guestWrote(t.log, vm, 'vda', [[0, 4 * MiB]]);
      const p = t.log.beginPass(vm, 'nightly');
      t.log.commitPass(p.id);
      guestWrote(t.log, vm, 'vda', [[10 * MiB, 1 * MiB], [100 * MiB, 64 * 1024]]);
      t.log.beginPass(vm, 'weekly'); // left open
    }
    const changesBefore = ['vm1', 'vm2'].map((vm) => ['nightly', 'weekly'].map((c) => t.log.changes(vm, c)));
    t.log.close();
    downgradeToSchema2(t.path);
    const before = dump(t.path);

    const log = ChangeLog.open(t.path);
    try {
      const ids = log.listDomains().map((d) => d.logId);
      expect(ids.every(isLogId)).toBe(true);
      expect(new Set(ids).size).toBe(2);
      expect(log.status('vm1').logId).toBe(ids[0]);
      expect(log.openPasses('vm2').map((p) => p.logId)).toEqual([ids[1]]);
      expect(['vm1', 'vm2'].map((vm) => ['nightly', 'weekly'].map((c) => log.changes(vm, c)))).toEqual(changesBefore);
      log.close();
      expect(dump(t.path)).toEqual(before);
      const db = new Database(t.path, { readonly: true });
      expect(db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
      db.close();

      // Opened again: the identities stay.
      const again = ChangeLog.open(t.path);
      expect(again.listDomains().map((d) => d.logId)).toEqual(ids);
      again.close();
    } finally {
      log.close();
    }
  });

  it('a domain removed and added again has a new identity, and nothing recorded under the old one continues', () => {
    const first = t.log.ensureDomain('vm').logId;
    expect(t.log.ensureDomain('vm').logId).toBe(first);
    t.log.removeDomain('vm');
    const second = t.log.ensureDomain('vm').logId;
    expect(isLogId(second)).toBe(true);
    expect(second).not.toBe(first);
    expect(logContinuity(first, second)).toBe('other');
    expect(logContinuity(undefined, second)).toBe('unknown');
    expect(logContinuity(second, second)).toBe('same');
  });
});
