// SIGTERM of virtcbtd while its backup hangs (the VM's QEMU stopped with SIGSTOP, so NBD reads and
// QMP never answer and the cancelled job cannot unwind): virtcbtd still exits within 5 s; once
// QEMU runs again, the next virtcbtd removes the fleecing and the next backup cleans up the rest.
import { readFile } from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { backupJson, offlineWrite, tempDir } from './support/backup.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { BIG, backupChild, bigGuest, expectNothingLeft, fsfreezeStatus, midCopy } from './support/jobs.js';
import { virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let repo: string;

async function waitConnected(): Promise<void> {
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 100 });
}

async function vcbtNodes(): Promise<string[]> {
  const r = await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute: 'query-named-block-nodes', arguments: { flat: true } })]);
  return (JSON.parse(r.stdout).return as { 'node-name': string }[]).map((n) => n['node-name']).filter((n) => n.startsWith('vcbt-'));
}

beforeAll(async () => {
  daemon = await startTestDaemon({ env: { VIRTCBT_NBD_INFLIGHT: '1' } });
  guest = await bigGuest('hang');
  repo = tempDir('repo');
  await offlineWrite(guest.disks.scratch, 0, BIG / 2, 0x5a);
  await offlineWrite(guest.disks.scratch, BIG / 2, BIG / 2, 0xa5);
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  await guest.start();
  await waitConnected();
});

describe('SIGTERM of virtcbtd while a job hangs', () => {
  it('exits within 5 s anyway; the next daemon and backup clean up', async () => {
    const child = backupChild(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    await midCopy(daemon, guest.name, child);
    const qemuPid = Number((await readFile(`/run/libvirt/qemu/${guest.name}.pid`, 'utf8')).trim());
    // Registered before the stop: QEMU must run again whatever happens below.
    onCleanup(() => { try { process.kill(qemuPid, 'SIGCONT'); } catch { /* gone */ } });
    process.kill(qemuPid, 'SIGSTOP');
    const t0 = performance.now();
    const exited = daemon.kill('SIGTERM');
    // A deadline, not a wait for something: QEMU runs again after it whether or not virtcbtd exited.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((r) => { timer = setTimeout(r, 5_000); })]);
    clearTimeout(timer);
    const took = performance.now() - t0;
    process.kill(qemuPid, 'SIGCONT');
    await exited;
    expect(took, daemon.log().slice(-3000)).toBeLessThan(5_000);
    // It says what it left.
    expect(daemon.log()).toMatch(/did not stop in time: exiting anyway/);
    expect((await child).exitCode).not.toBe(0);

    // The next virtcbtd with the default NBD window (64 requests in flight): one request at a time
    // was only there to make the first backup slow enough to stop in its copy.
    await daemon.start({ VIRTCBT_NBD_INFLIGHT: '64' });
    await waitConnected();
    expect(await fsfreezeStatus(guest)).toBe('thawed');
    await pollUntil(async () => (await vcbtNodes()).length === 0, 'the fleecing left by the stopped daemon to be removed', { timeoutMs: 30_000, intervalMs: 100 });
    const r = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    expect(r.kind).toBe('full');
    // Whether the stopped daemon got as far as aborting the pass and removing the partial files (a copy
    // request QEMU never answered keeps the job from its failure path) or this backup did: none is left.
    expect((await daemon.cli(['verify', '--repo', repo, guest.name])).exitCode).toBe(0);
    await expectNothingLeft(guest, repo, 'nightly', daemon);
  });
});
