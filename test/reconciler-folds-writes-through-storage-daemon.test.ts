// The reconciler against a real qemu-storage-daemon: writes made through QEMU's block layer show
// up at bitmap granularity for each consumer; bitmaps survive a clean restart; a SIGKILLed QEMU
// leaves an inconsistent bitmap, which raises the floor (every consumer gets a full pass).
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChangeLog } from '../src/changelog/index.js';
import { NbdClient } from '../src/nbd/index.js';
import { blockExportAddNbd } from '../src/qmp/index.js';
import { withStorageDaemon, type QsdSession } from '../src/qsd/index.js';
import { readDirtyExtents, Reconciler, storageDaemonDisks } from '../src/reconciler/index.js';
import { ensureNbdServer, nbdUnixUri } from '../src/snapshot/index.js';
import { asPairs } from './support/changelog.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DOMAIN = 'vm';

// Each case has its own image and change log (beforeEach). After startTracking: a fresh 64 MiB
// qcow2, consumers a and b, tracking started and a's first (full) pass committed; b never had one.
let dir: string;
let image: string;
let log: ChangeLog;
/** Bitmaps the reconciler read over NBD. */
let reads: string[];

async function startTracking(): Promise<void> {
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  log.ensureDomain(DOMAIN);
  log.addConsumer(DOMAIN, 'a');
  log.addConsumer(DOMAIN, 'b');
  await session(async (s, rec) => {
    await rec.recover((await disks(s))[0]);
    const p = await rec.rotateAndFold(await disks(s), { pass: { consumer: 'a' } });
    log.commitPass(p.passId!);
  });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'virtcbt-reconcile-'));
  image = join(dir, 'disk.qcow2');
  log = ChangeLog.open(join(dir, 'changelog.db'));
  reads = [];
});
afterEach(() => {
  log.close();
  rmSync(dir, { recursive: true, force: true });
});

async function session<T>(fn: (s: QsdSession, rec: Reconciler) => Promise<T>): Promise<T> {
  return withStorageDaemon(dir, DOMAIN, [{ target: 'vda', image }], async (s) => {
    const rec = new Reconciler({
      log, qmp: s.qmp, domain: DOMAIN, nbdSocket: s.nbdSocket, granularity: 64 * KiB,
      readDirty: (uri, bitmap, size) => {
        reads.push(bitmap);
        return readDirtyExtents(uri, bitmap, size);
      },
    });
    return fn(s, rec);
  });
}

const disks = (s: QsdSession) => storageDaemonDisks(s.qmp, s.nodes);

/** Writes through QEMU (a writable NBD export of the same node), so that its bitmaps record them. */
async function write(s: QsdSession, writes: [number, number][]): Promise<void> {
  await ensureNbdServer(s.qmp, s.nbdSocket);
  await blockExportAddNbd(s.qmp, { id: 'w', 'node-name': s.nodes[0].node, name: 'w', writable: true }).catch(() => undefined);
  const nbd = await NbdClient.connect(nbdUnixUri(s.nbdSocket, 'w'));
  try {
    for (const [off, len] of writes) await nbd.pwrite(Buffer.alloc(len, 0xab), off);
    await nbd.flush();
  } finally {
    await nbd.close();
  }
  await s.qmp.execute('block-export-del', { id: 'w', mode: 'hard' });
}

const changes = (consumer: string) => asPairs(log.changes(DOMAIN, consumer))[0];

describe('reconciler on qemu-storage-daemon', () => {
  it('starts tracking: creates the bitmap; a new consumer gets a full pass', async () => {
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
    log.ensureDomain(DOMAIN);
    log.addConsumer(DOMAIN, 'a');
    log.addConsumer(DOMAIN, 'b');
    await session(async (s, rec) => {
      const r = await rec.recover((await disks(s))[0]);
      expect(r.floorRaised).toMatch(/no bitmap/);
      const bitmaps = (await disks(s))[0].bitmaps;
      expect(bitmaps.map((b) => [b.name, b.recording, b.persistent])).toEqual([['virtcbt-1', true, true]]);
      expect(changes('a').full).toBe(true);
      const p = await rec.rotateAndFold(await disks(s), { pass: { consumer: 'a' } });
      expect(asPairs(log.passChanges(p.passId!))[0].full).toBe(true);
      log.commitPass(p.passId!);
    });
  });

});

describe('reconciler on qemu-storage-daemon, tracking started', () => {
  beforeEach(startTracking);

  it('folds writes at bitmap granularity; consumer a sees them, b still gets a full pass', async () => {
    await session(async (s, rec) => {
      await write(s, [[1 * MiB, 4 * KiB], [5 * MiB + 100, 1], [10 * MiB, 200 * KiB]]);
      const r = await rec.rotateAndFold(await disks(s));
      expect(r.disks[0].dirtyBytes).toBe(64 * KiB + 64 * KiB + 256 * KiB);
      // The frozen bitmap is gone from QEMU; the new one records.
      expect((await disks(s))[0].bitmaps.map((b) => b.name)).toEqual(['virtcbt-3']);
    });
    const a = changes('a');
    expect(a.full).toBe(false);
    expect(a.extents).toEqual([[1 * MiB, 64 * KiB], [5 * MiB, 64 * KiB], [10 * MiB, 256 * KiB]]);
    expect(changes('b').full).toBe(true);
  });

  it('a bitmap that recorded nothing is folded without being read; the next one with writes is read', async () => {
    await session(async (s, rec) => {
      reads.length = 0;
      const [recording] = (await disks(s))[0].bitmaps.map((b) => b.name);
      const next = `virtcbt-${Number(recording!.replace('virtcbt-', '')) + 1}`;
      const quiet = await rec.rotateAndFold(await disks(s));
      expect(quiet.disks[0].dirtyBytes).toBe(0);
      expect(reads).toEqual([]);
      // Folded all the same: gone from QEMU and the log, the new bitmap records.
      expect((await disks(s))[0].bitmaps.map((b) => b.name)).toEqual([next]);
      expect(log.bitmaps(DOMAIN, 'vda').map((b) => [b.name, b.state])).toEqual([[next, 'active']]);
      await write(s, [[20 * MiB, 4 * KiB]]);
      const busy = await rec.rotateAndFold(await disks(s));
      expect(busy.disks[0].dirtyBytes).toBe(64 * KiB);
      expect(reads).toEqual([next]);
    });
    expect(changes('a').extents).toContainEqual([20 * MiB, 64 * KiB]);
  });

  it('keeps recording across a clean restart; a pass rotates and the consumer moves on commit', async () => {
    // Written in one QEMU session, folded in the next.
    await session(async (s) => write(s, [[1 * MiB, 4 * KiB], [20 * MiB, 64 * KiB]]));
    const pass = await session(async (s, rec) => rec.rotateAndFold(await disks(s), { pass: { consumer: 'a' } }));
    expect(pass.passId).toBeDefined();
    const pc = asPairs(log.passChanges(pass.passId!))[0];
    expect(pc.extents).toEqual([[1 * MiB, 64 * KiB], [20 * MiB, 64 * KiB]]);
    log.commitPass(pass.passId!);
    expect(changes('a').extents).toEqual([]);
    await session(async (s, rec) => {
      await write(s, [[30 * MiB, 64 * KiB]]);
      await rec.rotateAndFold(await disks(s));
    });
    expect(changes('a').extents).toEqual([[30 * MiB, 64 * KiB]]);
  });

  it('a SIGKILLed QEMU leaves an inconsistent bitmap: the floor rises, every consumer gets a full pass', async () => {
    await session(async (s) => {
      await write(s, [[40 * MiB, 64 * KiB]]);
      process.kill(s.pid, 'SIGKILL');
    });
    await session(async (s, rec) => {
      const before = (await disks(s))[0].bitmaps;
      expect(before[0].inconsistent).toBe(true);
      const r = await rec.rotateAndFold(await disks(s));
      expect(r.disks[0].floorRaised).toMatch(/inconsistent/);
      expect((await disks(s))[0].bitmaps.map((b) => [b.recording, b.inconsistent ?? false])).toEqual([[true, false]]);
    });
    expect(changes('a').full).toBe(true);
    expect(changes('b').full).toBe(true);
  });
});
