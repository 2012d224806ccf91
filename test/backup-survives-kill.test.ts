// kill -9 of virtcbtd during a backup, at each step and at random moments: the repository stays
// valid (verify passes, no manifest names a partial file), the consumer does not move, QEMU is
// left with no fleecing node, and the next backup includes every write since the last good one.
import { execa, type ResultPromise } from 'execa';
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { BACKUP_STEPS } from '../src/backup/index.js';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { Repository, restoreDisk, verifyRepo } from '../src/repo/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, backupJson, guestDd, referenceCopy, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
const CLI = resolve(import.meta.dirname, '../dist/src/cli/main.js');

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let repo: string;
/** Hands out disjoint 1 MiB regions of vdb, so that each test's writes are its own. */
let nextOffset = 8 * MiB;

async function waitConnected(): Promise<void> {
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 100 });
}

/** 1 MiB of random data in a region of vdb no other write touched; returns its offset. */
async function write(): Promise<number> {
  const at = nextOffset;
  nextOffset += 2 * MiB;
  await guestDd(agent, '/dev/vdb', at, 1 * MiB);
  return at;
}

async function restartDaemon(env: Record<string, string> = {}): Promise<void> {
  await daemon.stop();
  await daemon.start(env);
  await waitConnected();
}

/** The generation of the consumer's last completed backup. */
async function consumerLast(): Promise<number> {
  const consumers = (await daemon.cliJson(['consumer', 'list', guest.name])).consumers;
  return consumers.find((c: { name: string }) => c.name === 'nightly').last;
}

/** Fleecing nodes QEMU still has, seen through libvirt's own monitor. */
async function fleeceNodes(): Promise<string[]> {
  const r = await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute: 'query-named-block-nodes', arguments: { flat: true } })]);
  return (JSON.parse(r.stdout).return as { 'node-name': string }[]).map((n) => n['node-name']).filter((n) => n.startsWith('vcbt-'));
}

/** After a kill and a restart: guest thawed, no fleecing, the repository verifies. */
async function expectRepoSound(): Promise<void> {
  // A daemon killed while the guest was frozen: the restarted one thawed it before anything else.
  const st = await virsh(['qemu-agent-command', guest.name, JSON.stringify({ execute: 'guest-fsfreeze-status' })]);
  expect(JSON.parse(st.stdout).return).toBe('thawed');
  // The restarted daemon removes the killed one's fleecing at once (its filter would slow the guest).
  await pollUntil(async () => (await fleeceNodes()).length === 0, 'stale fleecing to be removed', { timeoutMs: 30_000, intervalMs: 100 });
  const v = await verifyRepo(await Repository.open(repo), guest.name);
  expect(v.ok, JSON.stringify(v.disks.filter((d) => !d.ok))).toBe(true);
}

async function expectRepoSoundAndConsumerAt(generation: number): Promise<void> {
  await expectRepoSound();
  expect(await consumerLast()).toBe(generation);
}

/**
 * Resolves once the CLI has printed an event of `type` (`start`: virtcbtd has accepted the job);
 * rejects if the backup ends first.
 */
function printed(child: ResultPromise, type: string): Promise<void> {
  return new Promise((resolveSeen, reject) => {
    let text = '';
    const onData = (c: Buffer) => {
      text += c.toString('utf8');
      if (text.split('\n').slice(0, -1).some((l) => JSON.parse(l).type === type)) {
        child.stdout!.off('data', onData);
        resolveSeen();
      }
    };
    child.stdout!.on('data', onData);
    child.then((r) => reject(new Error(`the backup ended before it printed a ${type} event: ${r.stderr}`)), reject);
  });
}

/** Events of a backup before its result, each followed by more work (copying, the manifest, the commit). */
const MID_BACKUP_EVENTS = ['start', 'snapshot', 'plan', 'progress'];

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'kill', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  repo = tempDir('repo');
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  await guest.start();
  await waitConnected();
  // A first good backup: every test's backups are incrementals on top of a chain.
  await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
});

describe('kill -9 of virtcbtd during a backup', () => {
  it.each(BACKUP_STEPS)('killed at step %s', async (step) => {
    const before = await consumerLast();
    await write();
    await restartDaemon({ VIRTCBT_FAULT_BACKUP_STEP: step });
    const r = await daemon.cli(['backup', guest.name, '--consumer', 'nightly', '--repo', repo, '--json'], { reject: false });
    expect(r.exitCode).not.toBe(0);
    // The fault killed the daemon (the CLI may see the stream end a moment before the exit is reaped).
    await pollUntil(() => !daemon.running, 'virtcbtd to die at the fault', { timeoutMs: 10_000, intervalMs: 10 });
    await restartDaemon();
    await expectRepoSoundAndConsumerAt(before);
  });

  it('killed at random moments of a backup it has accepted', async () => {
    for (let i = 0; i < 3; i++) {
      const before = await consumerLast();
      await write();
      const child = execa('node', [CLI, '--config', daemon.configFile, 'backup', guest.name, '--consumer', 'nightly', '--repo', repo, '--json'], { reject: false });
      // The random moment: at one of the backup's events, so always after virtcbtd accepted the job
      // and before it finished.
      const at = MID_BACKUP_EVENTS[Math.floor(Math.random() * MID_BACKUP_EVENTS.length)]!;
      await printed(child, at);
      await daemon.kill('SIGKILL');
      const out = await child;
      expect(out.exitCode, `killed at the ${at} event`).not.toBe(0);
      expect(out.stdout.split('\n').some((l) => l.startsWith('{') && JSON.parse(l).type === 'result'), `killed at the ${at} event`).toBe(false);
      await restartDaemon();
      await expectRepoSound();
      const now = await consumerLast();
      if (now !== before) {
        // The kill came between the commit and the result: the consumer moved only onto a complete restore point.
        const points = await (await Repository.open(repo)).chain(guest.name, 'nightly');
        expect(points.at(-1)!.generation, `killed at the ${at} event`).toBe(now);
      }
    }
  });

  it('the backup after a killed one cleans up and copies every write since the last good one', async () => {
    // A backup killed in the middle of its copy, with a write before it and one after it.
    const mine = [await write()];
    await restartDaemon({ VIRTCBT_FAULT_BACKUP_STEP: 'copy' });
    const killed = await daemon.cli(['backup', guest.name, '--consumer', 'nightly', '--repo', repo, '--json'], { reject: false });
    expect(killed.exitCode).not.toBe(0);
    await pollUntil(() => !daemon.running, 'virtcbtd to die at the fault', { timeoutMs: 10_000, intervalMs: 10 });
    await restartDaemon();
    mine.push(await write());
    await virsh(['domfsfreeze', guest.name]);
    let r;
    let ref;
    try {
      ref = await referenceCopy(guest, tempDir('ref'), 'ref');
      r = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo, '--no-freeze']);
    } finally {
      await virsh(['domfsthaw', guest.name]);
    }
    const vdb = r.disks.find((d: { target: string }) => d.target === 'vdb');
    expect(vdb.full).toBe(false);
    // Both writes are in this backup's extents (the killed pass never moved the consumer).
    const dir = join(repo, encodeURIComponent(guest.name), 'nightly');
    const m = JSON.parse((await execa('cat', [join(dir, `${r.id}.json`)])).stdout);
    const extents: [number, number][] = m.disks.find((d: { target: string }) => d.target === 'vdb').extents;
    for (const off of mine) expect(extents.some(([o, l]) => o <= off && off + MiB <= o + l), `write at ${off}`).toBe(true);
    const to = join(tempDir('restore'), 'vdb.qcow2');
    await restoreDisk(await Repository.open(repo), { domain: guest.name, disk: 'vdb', to, at: r.id });
    expect((await sameContent(ref.vdb!, 'raw', to, 'qcow2')).same).toBe(true);
    // Nothing left over: no open pass, no fleecing node or overlay, no unreferenced image.
    expect((await daemon.cliJson(['status', guest.name])).openPasses).toEqual([]);
    expect(await fleeceNodes()).toEqual([]);
    const fleeceDir = '/var/lib/libvirt/qemu/virtcbt-test/fleece';
    expect(readdirSync(join(fleeceDir, encodeURIComponent(guest.name)))).toEqual([]);
    const list = await (await Repository.open(repo)).chain(guest.name, 'nightly');
    const named = new Set(list.flatMap((x) => x.disks.map((d) => d.file)));
    expect(readdirSync(dir).filter((f) => f.endsWith('.qcow2') && !named.has(f))).toEqual([]);
    expect(readdirSync(dir).filter((f) => f.startsWith('.'))).toEqual([]);
    // No qemu-nbd left writing into the repository (a killed daemon's is killed by the next backup).
    const nbds = (await execa('pgrep', ['-af', 'qemu-nbd'], { reject: false })).stdout.split('\n').filter((l) => l.includes(repo));
    expect(nbds).toEqual([]);
  });
});
