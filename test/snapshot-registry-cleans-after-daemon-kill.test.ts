// The registry of live snapshots after a `kill -9` of virtcbtd: a restarted virtcbtd removes the
// snapshot of the job that died (fleecing node, job, export, overlay file and record) at once,
// takes over the snapshot of a pass export whose pass is still open (a tool may be reading it),
// and leaves junk in the registry directory alone.
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, guestDd, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let repo: string;
let pause: string;

const fleeceDir = () => join('/var/lib/libvirt/qemu/virtcbt-test/fleece', encodeURIComponent(guest.name));
const registryDir = () => join(daemon.stateDir, 'snapshots');

async function qmp(cmd: string): Promise<any[]> {
  return JSON.parse((await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute: cmd })])).stdout).return;
}

/** Fleecing tags present in QEMU (nodes, jobs, exports). */
async function tagsInQemu(): Promise<Set<string>> {
  const tags = new Set<string>();
  const add = (name: unknown) => {
    const m = /^vcbt-(?:fl|pm)-([a-z0-9]+)-/.exec(String(name ?? ''));
    if (m) tags.add(m[1]!);
  };
  for (const n of await qmp('query-named-block-nodes')) add(n['node-name']);
  for (const j of await qmp('query-block-jobs')) add(j.device);
  for (const e of await qmp('query-block-exports')) { add(e.id); add(e['node-name']); }
  return tags;
}

beforeAll(async () => {
  const dir = tempDir('snapreg');
  pause = join(dir, 'release');
  daemon = await startTestDaemon({ env: { VIRTCBT_PAUSE_BACKUP: `nightly:copied:${pause}` } });
  guest = await startLibvirtGuest({ name: 'snapreg', scratchFormat: 'qcow2', start: false });
  repo = tempDir('snapreg-repo');
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  await daemon.cli(['consumer', 'add', guest.name, 'tool']);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
  await guestDd(new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' })), '/dev/vdb', 0, 4 * MiB);
});

it('a restarted virtcbtd removes the dead backup\'s snapshot, keeps the open pass export\'s, and skips junk', async () => {
  // A pass export held open for a third-party tool, and a backup that dies holding its snapshot.
  const pass = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'tool', '--export']);
  expect(pass.exports.length).toBe(2);
  const backup = daemon.cli(['backup', guest.name, '--consumer', 'nightly', '--repo', repo, '--json'], { reject: false });
  await pollUntil(() => existsSync(`${pause}.reached`), 'the backup to hold its snapshot', { timeoutMs: 120_000, intervalMs: 50 });
  const before = await tagsInQemu();
  expect(before.size).toBe(2);
  expect(readdirSync(registryDir()).filter((f) => f.endsWith('.json')).length).toBe(2);
  writeFileSync(join(registryDir(), 'junk.json'), '{"not": "a record"}');

  await daemon.kill('SIGKILL');
  expect((await backup).exitCode).not.toBe(0);
  // Still there: nobody has cleaned up yet.
  expect((await tagsInQemu()).size).toBe(2);

  await daemon.start();
  const passTag = [...before].find((t) => readdirSync(registryDir()).some((f) => f.endsWith(`.${t}.json`) && JSON.parse(readFileSync(join(registryDir(), f), 'utf8')).pass === pass.pass));
  expect(passTag).toBeDefined();
  // Only the pass export's snapshot is left, in QEMU, in the fleecing directory and in the registry.
  await pollUntil(async () => (await tagsInQemu()).size === 1, 'the dead backup\'s snapshot to be removed', { timeoutMs: 60_000, intervalMs: 100 });
  expect([...(await tagsInQemu())]).toEqual([passTag]);
  expect(readdirSync(fleeceDir()).every((f) => f.startsWith(`${passTag}-`))).toBe(true);
  expect(readdirSync(registryDir()).sort()).toEqual([`${encodeURIComponent(guest.name)}.${passTag}.json`, 'junk.json'].sort());
  expect(daemon.log()).toContain('not snapshot records');

  // The pass's end removes the rest.
  await daemon.cli(['pass', 'abort', guest.name, '--consumer', 'tool', '--pass', String(pass.pass)]);
  await pollUntil(async () => (await tagsInQemu()).size === 0, 'the pass export to be removed', { timeoutMs: 30_000, intervalMs: 100 });
  expect(readdirSync(fleeceDir())).toEqual([]);
  expect(readdirSync(registryDir())).toEqual(['junk.json']);
  // The next backup works.
  writeFileSync(pause, '');
  const next = await daemon.cli(['backup', guest.name, '--consumer', 'nightly', '--repo', repo, '--json']);
  expect(next.exitCode).toBe(0);
});
