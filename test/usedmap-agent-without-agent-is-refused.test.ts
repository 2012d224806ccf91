// A running domain without a guest agent: the agent's used map (`--map agent`, for usedmap and
// sync) is refused with a clear error that names the domain and the way that works, and changes
// nothing (no target made, no consumer, no snapshot left); the image's map, which needs no agent,
// still works (crash-consistent, and says so).
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';
import { pollUntil } from '../src/util/abort.js';
import { tempDir } from './support/nbd-servers.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let dir: string;

beforeAll(async () => {
  const t = tempDir('no-agent');
  onCleanup(() => t.remove());
  dir = t.path;
  guest = await startLibvirtGuest({ name: 'noagent', scratchFormat: 'qcow2', start: false, noAgentChannel: true });
  daemon = await startTestDaemon();
  await daemon.cli(['enable', guest.name, '--no-agent']);
  // Running is enough: what is refused follows from the domain's definition (no agent channel) and
  // its state, not from the guest inside, and waiting for a guest without its agent port to give up
  // looking for it is most of a boot.
  await virsh(['start', guest.name]);
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
});

it('refuses --map agent naming the domain and the image map, and changes nothing; the image map works without an agent', async () => {
  const usedmap = await daemon.cli(['usedmap', guest.name, '--disk', 'vda', '--map', 'agent'], { reject: false });
  expect(usedmap.exitCode, usedmap.stderr).toBe(2);
  expect(usedmap.stderr).toMatch(/guest agent/);
  expect(usedmap.stderr).toContain(guest.name);
  expect(usedmap.stderr).toMatch(/image map/i);

  const target = join(dir, 'copy.qcow2');
  const sync = await daemon.cli(['sync', guest.name, '--disk', 'vda', '--to', target, '--map', 'agent'], { reject: false });
  expect(sync.exitCode, sync.stderr).toBe(2);
  expect(sync.stderr).toMatch(/guest agent/);
  expect(existsSync(target)).toBe(false);
  const status = await daemon.cliJson(['status', guest.name]);
  expect((status.consumers ?? []).map((c: { name: string }) => c.name).filter((n: string) => n.startsWith('sync.'))).toEqual([]);
  expect(existsSync(join(daemon.stateDir, 'snapshots')) ? readdirSync(join(daemon.stateDir, 'snapshots')) : []).toEqual([]);

  const image = await daemon.cliJson(['usedmap', guest.name, '--disk', 'vda']);
  expect(image.source).toBe('image');
  expect(image.consistency).toBe('crash');
  expect(image.used.length).toBeGreaterThan(0);
});
