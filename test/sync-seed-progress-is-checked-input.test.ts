// An interrupted seed's progress file (STATE/sync/DOMAIN/CONSUMER.seed) is read as untrusted input:
// anything but what virtcbtd wrote, for this domain and consumer, reads as no progress (the next
// sync then seeds in full), never as a place to resume from.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SyncRecords, type SeedProgress } from '../src/sync/record.js';

const good: SeedProgress = {
  format: 'virtcbt-sync-seed/1', domain: 'vm1', consumer: 'sync.vda.0123456789ab', key: '/srv/copy.qcow2',
  identity: { kind: 'file', dev: 2049, ino: 77, size: 1 << 20, mtimeMs: 1_700_000_000_000 },
  logId: 'log-1', generation: 4, doneBelow: 1 << 20, interruptedAt: '2026-12-05T06:00:00.000Z',
};

describe('SyncRecords.readSeed', () => {
  let dir: string;
  let records: SyncRecords;
  const file = () => join(dir, 'vm1', `${good.consumer}.seed`);
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'virtcbt-seed-progress-'));
    records = new SyncRecords(dir);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('gives back what writeSeed wrote, and nothing once removed', async () => {
    await records.writeSeed(good);
    expect(await records.readSeed('vm1', good.consumer)).toEqual(good);
    expect(await records.readSeed('vm2', good.consumer)).toBeUndefined();
    await records.removeSeed('vm1', good.consumer);
    expect(await records.readSeed('vm1', good.consumer)).toBeUndefined();
  });

  it.each([
    ['not JSON', '{"format":"virtcbt-sync-seed/1",'],
    ['another format', JSON.stringify({ ...good, format: 'virtcbt-sync/1' })],
    ['another consumer', JSON.stringify({ ...good, consumer: 'sync.vda.ffffffffffff' })],
    ['a negative offset', JSON.stringify({ ...good, doneBelow: -1 })],
    ['a fractional generation', JSON.stringify({ ...good, generation: 1.5 })],
    ['no identity', JSON.stringify({ ...good, identity: undefined })],
    ['an identity of no kind', JSON.stringify({ ...good, identity: { kind: 'disk', size: 1 } })],
    ['null', 'null'],
  ])('reads %s as no progress', async (_what, text) => {
    mkdirSync(join(dir, 'vm1'), { recursive: true });
    writeFileSync(file(), text);
    expect(await records.readSeed('vm1', good.consumer)).toBeUndefined();
  });

  it('does not follow a symlink', async () => {
    const elsewhere = join(dir, 'elsewhere.json');
    writeFileSync(elsewhere, JSON.stringify(good));
    mkdirSync(join(dir, 'vm1'), { recursive: true });
    symlinkSync(elsewhere, file());
    expect(await records.readSeed('vm1', good.consumer)).toBeUndefined();
  });
});
