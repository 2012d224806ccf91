// What a sync killed with its virtcbtd left (its writing marker, STATE/sync/DOMAIN/CONSUMER.writing)
// is read as untrusted input by the next virtcbtd (recoverWriting, sweepInterruptedSyncs): it is
// turned into an interrupted record or a seed's progress only when the target file is still the
// one the sync opened and the record is the one it started from; anything else is removed and the
// target left to the next sync's own checks (a seed). A live sync's marker is not touched, and
// seed pins that no interrupted seed uses are removed, other consumers never.
import { mkdirSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChangeLog } from '../src/changelog/index.js';
import { WRITER, recoverWriting, sweepInterruptedSyncs } from '../src/sync/interrupted.js';
import { SyncRecords, type SyncRecord, type WritingMarker } from '../src/sync/record.js';
import { fileIdentity, seedPinName, type TargetIdentity } from '../src/sync/target.js';

const CONSUMER = 'sync.vda.0123456789ab';
const PIN = seedPinName(CONSUMER);

describe('a killed sync\'s writing marker', () => {
  let dir: string;
  let records: SyncRecords;
  let log: ChangeLog;
  let target: string;
  let generation: number;
  let opened: TargetIdentity;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'virtcbt-writing-'));
    records = new SyncRecords(join(dir, 'sync'));
    log = ChangeLog.open(join(dir, 'changelog.db'));
    log.ensureDomain('vm1');
    log.upsertDisk('vm1', 'vda', { blockSize: 65536, sizeBytes: 1 << 30 });
    log.addConsumer('vm1', CONSUMER);
    const p = log.beginPass('vm1', CONSUMER);
    log.abortPass(p.id);
    generation = p.generation;
    target = join(dir, 'copy.qcow2');
    writeFileSync(target, 'a copy');
    opened = await fileIdentity(target);
  });
  afterEach(() => {
    log.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const marker = (m: Partial<WritingMarker> = {}): WritingMarker => ({
    format: 'virtcbt-sync-writing/1', domain: 'vm1', consumer: CONSUMER, key: target, writer: 'a-dead-one', path: target,
    identity: opened, kind: 'incremental', recordIdentity: opened, logId: log.logId('vm1'), generation, doneBelow: 0,
    startedAt: new Date().toISOString(), ...m,
  });
  const record = (r: Partial<SyncRecord> = {}): SyncRecord => ({
    format: 'virtcbt-sync/1', domain: 'vm1', disk: 'vda', consumer: CONSUMER, target, key: target, identity: opened,
    logId: log.logId('vm1'), generation, syncedAt: '2026-12-01T00:00:00.000Z', ...r,
  });
  /** The dead sync wrote to the target: its modification time moves on. */
  const written = () => writeFileSync(target, 'a copy, partly newer');
  const pins = () => log.listConsumers('vm1').filter((c) => c.name === PIN);
  const markerGone = async () => expect(await records.readWriting('vm1', CONSUMER)).toBeUndefined();

  it('an incremental sync killed mid-copy: the record keeps its position with the target as the sync left it', async () => {
    await records.write(record(), [{ offset: 0, length: 65536 }]);
    await records.writeWriting(marker());
    written();
    expect(await recoverWriting(records, log, 'vm1', CONSUMER)).toMatch(/copies everything since the last complete one/);
    const { record: after } = await records.read('vm1', CONSUMER);
    expect(after!.identity).toEqual(await fileIdentity(target));
    expect(after!.generation).toBe(generation);
    expect(after!.interruptedAt).toEqual(expect.any(String));
    expect(after!.used).toEqual([[0, 65536]]);
    await markerGone();
  });

  it('a live sync\'s marker (this process\'s) is left alone', async () => {
    await records.write(record(), undefined);
    await records.writeWriting(marker({ writer: WRITER }));
    written();
    expect(await recoverWriting(records, log, 'vm1', CONSUMER)).toBeUndefined();
    expect(await records.readWriting('vm1', CONSUMER)).toMatchObject({ writer: WRITER });
    expect((await records.read('vm1', CONSUMER)).record!.identity).toEqual(opened);
  });

  it.each([
    // Written beside it, then renamed over it: both inodes live at once, so the new one's number differs.
    ['the target file replaced (another inode)', async () => { writeFileSync(`${target}.new`, 'another file'); renameSync(`${target}.new`, target); }, /gone or replaced/],
    ['the target file gone', async () => { rmSync(target); }, /gone or replaced/],
  ])('%s: nothing is recorded, the next sync seeds', async (_what, change, said) => {
    await records.write(record(), undefined);
    await records.writeWriting(marker());
    await change();
    expect(await recoverWriting(records, log, 'vm1', CONSUMER)).toMatch(said);
    expect((await records.read('vm1', CONSUMER)).record!.identity).toEqual(opened);
    await markerGone();
  });

  it('a record changed since the marker (another sync, a restore of the state directory): the record stands', async () => {
    const other: TargetIdentity = { ...opened, mtimeMs: opened.kind === 'file' ? opened.mtimeMs - 5000 : 0 } as TargetIdentity;
    await records.write(record({ identity: other }), undefined);
    await records.writeWriting(marker());
    written();
    expect(await recoverWriting(records, log, 'vm1', CONSUMER)).toMatch(/record changed since/);
    expect((await records.read('vm1', CONSUMER)).record!.identity).toEqual(other);
    await markerGone();
  });

  it('a seed killed after a checkpoint: its progress is kept, with the pin its history needs', async () => {
    log.pinHistory('vm1', PIN, generation);
    await records.writeWriting(marker({ kind: 'seed', recordIdentity: undefined, doneBelow: 8 << 20 }));
    written();
    expect(await recoverWriting(records, log, 'vm1', CONSUMER)).toMatch(/resumes its seed from byte 8388608/);
    expect(await records.readSeed('vm1', CONSUMER)).toMatchObject({ doneBelow: 8 << 20, generation, identity: await fileIdentity(target) });
    expect(pins()).toHaveLength(1);
    await markerGone();
  });

  it.each([
    ['before its first checkpoint', { doneBelow: 0 }, () => undefined],
    ['with its pin at another generation', { doneBelow: 1 << 20 }, () => { log.pinHistory('vm1', PIN, 0); }],
  ])('a seed killed %s: no progress, and no pin left', async (_what, m, pinAnother) => {
    log.pinHistory('vm1', PIN, generation);
    pinAnother();
    await records.writeWriting(marker({ kind: 'seed', recordIdentity: undefined, ...m }));
    written();
    expect(await recoverWriting(records, log, 'vm1', CONSUMER)).toMatch(/seeds the target/);
    expect(await records.readSeed('vm1', CONSUMER)).toBeUndefined();
    expect(pins()).toHaveLength(0);
    await markerGone();
  });

  it('a sync killed after it recorded the target: nothing to continue, its pin goes', async () => {
    log.pinHistory('vm1', PIN, generation);
    await records.writeWriting(marker({ kind: 'seed', recordIdentity: undefined, doneBelow: 1 << 20 }));
    written();
    await records.write(record({ identity: await fileIdentity(target), syncedAt: new Date(Date.now() + 1000).toISOString() }), undefined);
    expect(await recoverWriting(records, log, 'vm1', CONSUMER)).toMatch(/after it recorded the target/);
    expect(await records.readSeed('vm1', CONSUMER)).toBeUndefined();
    expect(pins()).toHaveLength(0);
  });

  it.each([
    ['not JSON', '{"format":"virtcbt-sync-writing/1",'],
    ['null', 'null'],
    ['another consumer', () => JSON.stringify(marker({ consumer: 'sync.vda.ffffffffffff' }))],
    ['a negative offset', () => JSON.stringify(marker({ doneBelow: -1 }))],
    ['a kind of its own', () => JSON.stringify({ ...marker(), kind: 'full' })],
    ['a file path with an NBD identity', () => JSON.stringify(marker({ identity: { kind: 'nbd', uri: 'nbd://h/x', size: 1 } }))],
  ])('a marker that is %s is removed and changes nothing', async (_what, text) => {
    await records.write(record(), undefined);
    log.pinHistory('vm1', PIN, generation);
    mkdirSync(join(dir, 'sync', 'vm1'), { recursive: true });
    writeFileSync(join(dir, 'sync', 'vm1', `${CONSUMER}.writing`), typeof text === 'string' ? text : text());
    written();
    expect(await recoverWriting(records, log, 'vm1', CONSUMER)).toMatch(/not one virtcbt wrote/);
    expect((await records.read('vm1', CONSUMER)).record!.identity).toEqual(opened);
    expect(pins(), 'a pin no seed progress names goes').toHaveLength(0);
    await markerGone();
  });

  it('the sweep at daemon start recovers every dead marker and removes only unused seed pins; junk directories are skipped', async () => {
    await records.write(record(), undefined);
    await records.writeWriting(marker());
    written();
    // An unused seed pin of another sync consumer, one in use, and consumers that only look alike.
    for (const c of ['sync.vdb.aaaaaaaaaaaa', 'sync.vdc.bbbbbbbbbbbb']) log.pinHistory('vm1', seedPinName(c), generation);
    await records.writeSeed({
      format: 'virtcbt-sync-seed/1', domain: 'vm1', consumer: 'sync.vdc.bbbbbbbbbbbb', key: '/x', identity: opened, logId: log.logId('vm1'),
      generation, doneBelow: 1, interruptedAt: new Date().toISOString(),
    });
    log.addConsumer('vm1', 'nightly.seed');
    log.addConsumer('vm1', 'sync.vdd.not-a-hash.seed');
    mkdirSync(join(dir, 'sync', '%zz'), { recursive: true });
    writeFileSync(join(dir, 'sync', '%zz', `${CONSUMER}.writing`), '{}');
    const said: string[] = [];
    await sweepInterruptedSyncs(records, log, (msg) => said.push(msg));
    expect(said.join('\n')).toMatch(/copies everything since the last complete one/);
    expect(said.join('\n')).toMatch(/removed a seed pin/);
    expect(log.listConsumers('vm1').map((c) => c.name).sort()).toEqual([CONSUMER, 'nightly.seed', 'sync.vdc.bbbbbbbbbbbb.seed', 'sync.vdd.not-a-hash.seed'].sort());
    expect((await records.read('vm1', CONSUMER)).record!.identity).toEqual(await fileIdentity(target));
    expect(statSync(join(dir, 'sync', '%zz', `${CONSUMER}.writing`)).isFile()).toBe(true);
    expect(await records.lastOnTarget(target)).toMatchObject({ consumer: CONSUMER });
  });
});
