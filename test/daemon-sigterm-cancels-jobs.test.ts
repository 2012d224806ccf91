// SIGTERM of virtcbtd in the middle of a 1 GiB backup: it cancels the backup, which unwinds (pass
// aborted, fleecing removed, partial files gone, guest thawed), and exits within 5 s instead of
// waiting for the copy; the backup's client is told why; a restarted daemon's next backup works.
import { beforeAll, describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { backupJson, offlineWrite, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { BIG, backupChild, bigGuest, expectNothingLeft, fsfreezeStatus, midCopy } from './support/jobs.js';
import type { LibvirtGuest } from './support/libvirt.js';

useCleanup();

/** What the issue asks of a stop: within a few seconds, whatever a job is doing. */
const EXIT_WITHIN_MS = 5_000;

let daemon: TestDaemon;
let guest: LibvirtGuest;
let repo: string;

async function waitConnected(): Promise<void> {
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 100 });
}

beforeAll(async () => {
  daemon = await startTestDaemon({ env: { VIRTCBT_NBD_INFLIGHT: '1' } });
  guest = await bigGuest('sigterm');
  repo = tempDir('repo');
  await offlineWrite(guest.disks.scratch, 0, BIG / 2, 0x5a);
  await offlineWrite(guest.disks.scratch, BIG / 2, BIG / 2, 0xa5);
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  await guest.start();
  await waitConnected();
});

describe('SIGTERM of virtcbtd during a backup', () => {
  it('exits within 5 s, the guest thawed and nothing left; the next daemon backs up', async () => {
    // The consumer's first backup: full, the 1 GiB of vdb with it.
    const child = backupChild(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    const job = await midCopy(daemon, guest.name, child);
    const t0 = performance.now();
    await daemon.kill('SIGTERM');
    const took = performance.now() - t0;
    expect(took, daemon.log().slice(-3000)).toBeLessThan(EXIT_WITHIN_MS);
    expect(daemon.log()).not.toMatch(/did not stop in time/);
    const out = await child;
    expect(out.exitCode).not.toBe(0);
    expect(out.stderr).toMatch(new RegExp(`backup job ${job.id} was cancelled \\(virtcbtd is stopping \\(SIGTERM\\)\\)`));

    // What the stopped daemon left, before a new one could clean anything up.
    expect(await fsfreezeStatus(guest)).toBe('thawed');
    await expectNothingLeft(guest, repo, 'nightly');
    // The next virtcbtd with the default NBD window (64 requests in flight): one request at a time
    // was only there to make the first backup slow enough to stop in its copy.
    await daemon.start({ VIRTCBT_NBD_INFLIGHT: '64' });
    await waitConnected();
    expect((await daemon.cliJson(['status', guest.name])).openPasses).toEqual([]);
    expect((await daemon.cliJson(['consumer', 'list', guest.name])).consumers[0].last).toBeNull();

    const r = await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    expect(r.kind).toBe('full');
    expect(r.disks.find((d: { target: string }) => d.target === 'vdb').bytes).toBeGreaterThanOrEqual(BIG);
    expect((await daemon.cli(['verify', '--repo', repo, guest.name])).exitCode).toBe(0);
    await expectNothingLeft(guest, repo, 'nightly', daemon);
  });
});
