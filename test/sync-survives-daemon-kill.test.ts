// A sync whose virtcbtd is killed outright (SIGKILL: no clean-up of its own runs) while it writes
// the target: the restarted virtcbtd records what it left, so that the next sync continues instead
// of seeding every used block again. A seed killed after a checkpoint (target flushed, progress
// recorded) resumes from there; an incremental sync killed mid-copy is followed by an incremental
// one. An on-stop sync (sync.onStop) killed that way runs again by itself when virtcbtd is back.
// Each time the target image itself (e2fsck -fn, every file's bytes) equals the guest's.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { syncConsumerName } from '../src/sync/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, guestFile, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';
import { guestHashes as guestHashesOf, targetHashes as targetHashesOf } from './support/sync.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let dir: string;
let target: string;
let pause: string;
/** The paused syncs are held once they have written this much; a seed checkpoints every 4 MiB. */
const HELD_AT = 12 * MiB;

beforeAll(async () => {
  dir = tempDir('synckill');
  target = join(dir, 'replica.qcow2');
  pause = join(dir, 'release-sync');
  writeFileSync(pause, '');
  guest = await startLibvirtGuest({ name: 'synckill', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  daemon = await startTestDaemon({
    env: { VIRTCBT_PAUSE_SYNC: `copying@${HELD_AT}:${pause}` },
    config: { nbd: { inflight: 2 }, sync: { seedCheckpointMiB: 4, onStop: [{ domain: guest.name, disk: 'vda', to: target }] } },
  });
  await daemon.cli(['enable', guest.name]);
  await guest.start();
  await connected();
});

const connected = () => pollUntil(async () => (await daemon.cliJson(['status', guest.name]).catch(() => ({ connected: false }))).connected,
  'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });

/** The marker file of the sync to `target` (see WritingMarker). */
const markerPath = () => join(daemon.stateDir, 'sync', encodeURIComponent(guest.name), `${syncConsumerName('vda', target)}.writing`);

async function sync(): Promise<any> {
  const r = await daemon.cli(['sync', guest.name, '--disk', 'vda', '--to', target, '--json']);
  const last = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).at(-1);
  expect(last.type).toBe('result');
  return last;
}

/** Starts a sync, holds it once it wrote HELD_AT, kills virtcbtd with SIGKILL there and starts it again. */
async function syncKilledMidCopy(): Promise<{ marker: any; restartLog: string }> {
  rmSync(pause, { force: true });
  rmSync(`${pause}.reached`, { force: true });
  const cli = daemon.cli(['sync', guest.name, '--disk', 'vda', '--to', target, '--json'], { reject: false });
  await pollUntil(() => existsSync(`${pause}.reached`), 'the sync to hold the target', { timeoutMs: 120_000, intervalMs: 50 });
  const marker = JSON.parse(readFileSync(markerPath(), 'utf8'));
  await daemon.kill('SIGKILL');
  expect((await cli).exitCode).not.toBe(0);
  writeFileSync(pause, '');
  const from = daemon.log().length;
  await daemon.start();
  await connected();
  return { marker, restartLog: daemon.log().slice(from) };
}

it('a seed killed with its virtcbtd resumes from its last checkpoint; an incremental sync killed mid-copy is followed by an incremental one', async () => {
  // 1. The first sync (a seed) is killed once it wrote 12 MiB: its last checkpoint is recorded.
  rmSync(target, { force: true });
  await guestFile(agent, 'one.bin', 24 * MiB);
  const seed = await syncKilledMidCopy();
  expect(seed.marker.kind).toBe('seed');
  expect(seed.restartLog).toMatch(/the next sync resumes its seed from byte (\d+)/);
  const from = Number(/resumes its seed from byte (\d+)/.exec(seed.restartLog)![1]);
  expect(from).toBeGreaterThan(0);
  expect(existsSync(markerPath())).toBe(false);

  // The guest writes on; the next sync resumes the seed: less than every used block is copied.
  await guestFile(agent, 'two.bin', 4 * MiB);
  const resumed = await sync();
  expect(resumed.seed).toBe(true);
  expect(resumed.reason).toMatch(new RegExp(`is resumed: every used block from byte ${from} on`));
  expect(resumed.copiedBytes).toBeLessThan(resumed.usedBytes);
  expect(from).toBeLessThan(resumed.usedMap.sizeBytes);
  expect(await targetHashesOf(target, dir)).toEqual(await guestHashesOf(agent));
  const consumers = (await daemon.cliJson(['consumer', 'list', guest.name])).consumers ?? [];
  expect(JSON.stringify(consumers), 'the seed pin goes with the completed seed').not.toMatch(/\.seed"/);

  // 2. An incremental sync killed mid-copy: the next one is incremental, and the target complete.
  await guestFile(agent, 'three.bin', 24 * MiB);
  const incremental = await syncKilledMidCopy();
  expect(incremental.marker.kind).toBe('incremental');
  expect(incremental.restartLog).toMatch(/the next sync copies everything since the last complete one/);
  const [status] = (await daemon.cliJson(['sync', 'status', guest.name])).targets;
  expect(status).toMatchObject({ target, configured: ['on stop'], interruptedAt: expect.any(String) });
  expect(status.writing).toBeUndefined();
  await guestFile(agent, 'four.bin', 2 * MiB);
  const after = await sync();
  expect(after.seed, after.reason).toBe(false);
  expect(after.notes.join('\n')).toMatch(/was interrupted after it began writing/);
  expect(await targetHashesOf(target, dir)).toEqual(await guestHashesOf(agent));
});

it('an on-stop sync killed with its virtcbtd runs again when virtcbtd is back, and completes the target', async () => {
  await sync();
  await guestFile(agent, 'five.bin', 24 * MiB);
  const last = await guestHashesOf(agent);
  rmSync(pause, { force: true });
  rmSync(`${pause}.reached`, { force: true });
  await virsh(['shutdown', '--mode', 'agent', guest.name]);
  await pollUntil(() => existsSync(`${pause}.reached`), 'the on-stop sync to hold the target', { timeoutMs: 120_000, intervalMs: 50 });
  await daemon.kill('SIGKILL');
  writeFileSync(pause, '');
  await pollUntil(async () => (await virsh(['domstate', guest.name])).stdout.trim() === 'shut off', 'the guest to shut down', { timeoutMs: 60_000, intervalMs: 200 });
  const from = daemon.log().length;
  await daemon.start();
  const done = await pollUntil(() => daemon.log().slice(from).split('\n').find((l) => l.includes('on-stop sync done')), 'the on-stop sync to run again', { timeoutMs: 120_000, intervalMs: 250 });
  expect(daemon.log().slice(from)).toMatch(/on-stop syncs an earlier virtcbtd did not finish run again/);
  expect(done).toMatch(/\bseed=false\b/);
  expect(await targetHashesOf(target, dir)).toEqual(last);
  await pollUntil(() => !existsSync(join(daemon.stateDir, 'sync', encodeURIComponent(guest.name), 'on-stop.pending')), 'the owed round to be done', { timeoutMs: 10_000, intervalMs: 50 });
});
