// `virtcbt sync status` reads the sync state directory as untrusted input: a record that is junk,
// a directory or a symlink is listed with why the next sync seeds that target, a junk domain
// directory is skipped, and configured targets never synced are listed as such; nothing throws.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { ChangeLog } from '../src/changelog/index.js';
import { SyncRecords, syncConsumerName, syncStatus } from '../src/sync/index.js';
import { fileIdentity } from '../src/sync/target.js';

let dir: string;
let log: ChangeLog;
let records: SyncRecords;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'virtcbt-sync-status-'));
  log = ChangeLog.open(join(dir, 'changelog.db'));
  log.ensureDomain('vm1');
  log.upsertDisk('vm1', 'vda', { blockSize: 65536, sizeBytes: 1 << 30 });
  records = new SyncRecords(join(dir, 'sync'));
});
afterEach(() => {
  log.close();
  rmSync(dir, { recursive: true, force: true });
});

it('lists good, junk, directory and symlinked records, and configured targets never synced, without throwing', async () => {
  const good = join(dir, 'good.qcow2');
  writeFileSync(good, 'copy');
  const consumer = syncConsumerName('vda', good);
  log.addConsumer('vm1', consumer);
  await records.write({
    format: 'virtcbt-sync/1', domain: 'vm1', disk: 'vda', consumer, target: good, key: good, identity: await fileIdentity(good),
    logId: log.logId('vm1'), generation: 0, syncedAt: '2026-12-05T10:00:00.000Z',
  }, undefined);
  const d = join(dir, 'sync', 'vm1');
  writeFileSync(join(d, 'sync.vda.111111111111.json'), '{"format":');
  mkdirSync(join(d, 'sync.vda.222222222222.json'));
  writeFileSync(join(dir, 'elsewhere.json'), '{}');
  symlinkSync(join(dir, 'elsewhere.json'), join(d, 'sync.vda.333333333333.json'));
  mkdirSync(join(dir, 'sync', '%zz'), { recursive: true });
  writeFileSync(join(dir, 'sync', '%zz', 'x.json'), '{}');

  const all = await syncStatus(records, log, [{ domain: 'vm1', disk: 'vdb', to: join(dir, 'never.qcow2'), as: 'on stop' }, { domain: 'vm1', disk: 'vdc', to: 'relative.qcow2', as: 'job x (hourly)' }]);
  const by = (c: string) => all.find((e) => e.consumer === c);
  expect(by(consumer)).toMatchObject({ target: good, lastSync: '2026-12-05T10:00:00.000Z', modifiedSince: { bytes: 1 << 30, full: true } }); // a consumer with no pass yet: everything
  expect(by(consumer)!.targetChanged).toBeUndefined();
  for (const junk of ['sync.vda.111111111111', 'sync.vda.222222222222', 'sync.vda.333333333333']) {
    expect(by(junk)?.recordProblem, junk).toEqual(expect.any(String));
    expect(by(junk)?.lastSync).toBeUndefined();
  }
  expect(all.find((e) => e.disk === 'vdb')).toMatchObject({ configured: ['on stop'], target: join(dir, 'never.qcow2') });
  expect(all.find((e) => e.disk === 'vdb')!.lastSync).toBeUndefined();
  expect(all.find((e) => e.disk === 'vdc')).toMatchObject({ configured: ['job x (hourly)'], problem: expect.stringMatching(/absolute path/) });
  expect(all.every((e) => e.domain === 'vm1')).toBe(true);

  // The good target written behind virtcbt's back: said.
  writeFileSync(good, 'copy, changed');
  expect((await syncStatus(records, log, [])).find((e) => e.consumer === consumer)!.targetChanged).toMatch(/size changed|written since/);
});
