// Sync on session end (sync.onStop): when the domain shuts down, virtcbtd syncs its disk from the
// images and the target is a clean copy of what the guest had; a `virsh start` during that sync
// succeeds at once (the hook ends the sync's storage daemon), the sync yields without moving its
// consumer, and the next on-stop sync brings the target fully up to date. The start comes once the
// sync has written 4 MiB to the target: after an interrupted incremental sync the next is still
// incremental (the interrupted one wrote only blocks the next copies again); after an interrupted
// seed the next resumes it (every used block above where it got to, below it only the changes).
import { existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, guestFile, tempDir } from './support/backup.js';
import { guestHashes as guestHashesOf, targetHashes as targetHashesOf } from './support/sync.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let dir: string;
let target: string;
let pause: string;
/** The paused syncs are held once they have written this much to the target. */
const HELD_AT = 4 * MiB;

beforeAll(async () => {
  dir = tempDir('onstop');
  target = join(dir, 'replica.qcow2');
  pause = join(dir, 'release-sync');
  writeFileSync(pause, '');
  guest = await startLibvirtGuest({ name: 'onstop', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  daemon = await startTestDaemon({
    env: { VIRTCBT_PAUSE_SYNC: `copying@${HELD_AT}:${pause}` },
    // One request in flight: the paused copy has read only its first chunk when the domain starts.
    config: { nbd: { inflight: 1 }, sync: { onStop: [{ domain: guest.name, disk: 'vda', to: target }] } },
  });
  await daemon.cli(['enable', guest.name]);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
});

const guestHashes = () => guestHashesOf(agent);

/** virtcbtd's record of the (only) sync target of the domain. */
function syncRecord(): any {
  const dir = join(daemon.stateDir, 'sync', encodeURIComponent(guest.name));
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  expect(files).toHaveLength(1);
  return JSON.parse(readFileSync(join(dir, files[0]!), 'utf8'));
}

const targetHashes = (_label: string) => targetHashesOf(target, dir);

const syncJobs = async (): Promise<any[]> => (await daemon.cliJson(['jobs'])).jobs.filter((j: { kind: string }) => j.kind === 'sync');
/** The newest sync job once it has ended, when there are more than `count` sync jobs. */
async function syncEnded(count: number): Promise<any> {
  const all = (await syncJobs()).sort((a, b) => b.queuedAt.localeCompare(a.queuedAt));
  return all.length > count && all[0].endedAt ? all[0] : undefined;
}

async function shutdown(): Promise<void> {
  await virsh(['shutdown', '--mode', 'agent', guest.name]);
  await pollUntil(async () => (await virsh(['domstate', guest.name])).stdout.trim() === 'shut off', 'the guest to shut down', { timeoutMs: 60_000, intervalMs: 200 });
}

/** The daemon's log lines of ended on-stop syncs. */
const onStopDone = () => daemon.log().split('\n').filter((l) => l.includes('on-stop sync done'));

/** Ends the session with the sync held once it wrote HELD_AT bytes, starts the domain meanwhile, and waits until the guest is back. */
async function startDuringSync(): Promise<void> {
  rmSync(pause, { force: true });
  rmSync(`${pause}.reached`, { force: true });
  await shutdown();
  await pollUntil(() => existsSync(`${pause}.reached`), 'the on-stop sync to hold the images', { timeoutMs: 120_000, intervalMs: 50 });
  const t0 = performance.now();
  const started = await virsh(['start', guest.name], { reject: false });
  const startMs = performance.now() - t0;
  expect(started.exitCode, started.stderr).toBe(0);
  expect(startMs).toBeLessThan(10_000);
  const yielding = (await syncJobs()).length - 1;
  writeFileSync(pause, '');
  const yielded = await pollUntil(() => syncEnded(yielding), 'the yielded sync to end', { timeoutMs: 60_000, intervalMs: 250 });
  expect(yielded.state).toBe('failed');
  expect(daemon.log()).toMatch(/on-stop sync yielded to the domain's start/);
  await pollUntil(async () => agent.ping({ timeoutMs: 2_000 }).then(() => true, () => false), 'the guest agent', { timeoutMs: 120_000, intervalMs: 500 });
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to reconnect', { timeoutMs: 60_000, intervalMs: 250 });
}

it('on shutdown the target is synced from the images; a start during the sync wins at once; the next sync covers it', async () => {
  // 0. The first session end's seed is cut off by a start (8 MiB of data in the guest: the seed
  // writes more than HELD_AT, most of a fresh filesystem's used blocks read as zeroes).
  rmSync(target, { force: true });
  await guestFile(agent, 'zero.bin', 8 * MiB);
  await startDuringSync();
  expect(existsSync(target)).toBe(true);

  // 1. The next session end resumes that seed: the target becomes a clean copy of what the guest had.
  await guestFile(agent, 'first.bin', 4 * MiB);
  const first = await guestHashes();
  const before = (await syncJobs()).length;
  await shutdown();
  const done = await pollUntil(() => syncEnded(before), 'the on-stop sync to end', { timeoutMs: 120_000, intervalMs: 250 });
  expect(done.state, JSON.stringify(done)).toBe('done');
  expect(await targetHashes('first')).toEqual(first);
  const resumed = onStopDone().at(-1)!;
  const from = /\bseed=true\b.*is resumed: every used block from byte (\d+) on/.exec(resumed);
  expect(from, resumed).not.toBeNull();
  expect(Number(from![1])).toBeGreaterThanOrEqual(HELD_AT);
  const [copied, used] = [/ copied=(\d+)/, / used=(\d+)/].map((re) => Number(re.exec(resumed)![1]));
  expect(copied, resumed).toBeLessThan(used!);
  const syncedMtime = statSync(target).mtimeMs;

  // 2. The next session's end: the incremental sync holds the images (once it wrote HELD_AT) when the domain starts again.
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to reconnect', { timeoutMs: 60_000, intervalMs: 250 });
  await guestFile(agent, 'second.bin', 8 * MiB);
  await startDuringSync();
  expect(statSync(target).mtimeMs, 'the interrupted sync wrote to the target').not.toBe(syncedMtime);
  // The record keeps the last complete sync's position, with the target's new identity and when it was cut off.
  expect(syncRecord().interruptedAt).toEqual(expect.any(String));
  expect(syncRecord().identity.mtimeMs).toBe(statSync(target).mtimeMs);

  // 3. The guest runs on; its next session end syncs everything since the last good sync.
  await guestFile(agent, 'third.bin', 2 * MiB);
  const third = await guestHashes();
  expect(Object.keys(third)).toEqual(expect.arrayContaining(['first.bin', 'second.bin', 'third.bin']));
  const ended = (await syncJobs()).length;
  await shutdown();
  const last = await pollUntil(() => syncEnded(ended), 'the next on-stop sync to end', { timeoutMs: 120_000, intervalMs: 250 });
  expect(last.state, JSON.stringify(last)).toBe('done');
  expect(await targetHashes('third')).toEqual(third);
  expect(onStopDone().at(-1), 'the sync after the interrupted one is incremental').toMatch(/\bseed=false\b/);
  expect(syncRecord().interruptedAt).toBeUndefined();
});
