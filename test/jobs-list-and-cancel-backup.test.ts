// `virtcbt jobs` lists a running backup with its id and progress; `virtcbt jobs cancel ID` in the
// middle of its copy ends it through the failure path: the backup command says it was cancelled,
// the repository verifies, nothing is left in QEMU, the fleece directory or the repository, and
// the consumer's next backup covers everything since its last good one.
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { callDaemon } from '../src/cli/daemon-client.js';
import type { JobInfo } from '../src/daemon/job-registry.js';
import { Repository, restoreDisk } from '../src/repo/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, backupJson, guestDd, offlineWrite, referenceCopy, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { BIG, backupChild, bigGuest, expectNothingLeft, listJobs, midCopy } from './support/jobs.js';
import { virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let repo: string;

async function consumerLast(): Promise<number | null> {
  return (await daemon.cliJson(['consumer', 'list', guest.name])).consumers.find((c: { name: string }) => c.name === 'nightly').last;
}

beforeAll(async () => {
  // One request in flight: the copy of 1 GiB takes long enough to be seen and cancelled midway.
  daemon = await startTestDaemon({ env: { VIRTCBT_NBD_INFLIGHT: '1' } });
  guest = await bigGuest('jobs');
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  repo = tempDir('repo');
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  // A first good backup while vdb is still empty; then 1 GiB for the next one to copy.
  await backupJson(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
  await offlineWrite(guest.disks.scratch, 0, BIG / 2, 0x5a);
  await offlineWrite(guest.disks.scratch, BIG / 2, BIG / 2, 0xa5);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 100 });
});

describe('virtcbt jobs and jobs cancel', () => {
  it('an unknown job id is exit code 4 with a clear message', async () => {
    const r = await daemon.cli(['jobs', 'cancel', 'b-0000'], { reject: false });
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/no job 'b-0000'/);
    expect(r.stderr).toMatch(/virtcbt jobs/);
  });

  it('cancel in the middle of a backup\'s copy: cancelled, verified, nothing left, the next backup covers it all', async () => {
    const before = await consumerLast();
    const child = backupChild(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    const job = await midCopy(daemon, guest.name, child);
    expect(job).toMatchObject({ kind: 'backup', domain: guest.name, consumer: 'nightly', state: 'running' });
    expect(job.id).toMatch(/^b-[0-9a-f]{4}$/);
    expect(job.progress.total).toBeGreaterThanOrEqual(BIG);
    expect(job.startedAt).toBeDefined();
    // A second backup of the domain waits in its queue; cancelled there, it ends at once.
    const second = backupChild(daemon, [guest.name, '--consumer', 'nightly', '--repo', repo]);
    const queued = await pollUntil(async () => (await callDaemon<{ jobs: JobInfo[] }>(daemon.socket, 'GET', '/v1/jobs')).jobs
      .find((j) => j.domain === guest.name && j.id !== job.id && j.state === 'queued'), 'the second backup to be queued', { timeoutMs: 30_000, intervalMs: 20 });
    const dropped = await callDaemon<JobInfo>(daemon.socket, 'POST', `/v1/jobs/${queued.id}/cancel`);
    expect(dropped).toMatchObject({ state: 'cancelled', cancelReason: 'virtcbt jobs cancel' });
    expect(dropped.startedAt).toBeUndefined();
    const human = await daemon.cli(['jobs']);
    expect(human.stdout).toMatch(new RegExp(`^${job.id}\\s+backup\\s+${guest.name}\\s+nightly\\s+running\\s+copy \\d+%`, 'm'));
    expect(human.stdout).toMatch(new RegExp(`^${queued.id}\\s+backup\\s+${guest.name}\\s+nightly\\s+cancelled\\s`, 'm'));

    const cancel = await daemon.cliJson(['jobs', 'cancel', job.id]);
    expect(cancel).toMatchObject({ id: job.id, state: 'cancelled' });
    // The copy stopped where it was: the cancel did not wait for it to finish.
    expect(cancel.progress.step).toBe('copy');
    expect(cancel.progress.done).toBeLessThan(cancel.progress.total);
    const out = await child;
    expect(out.exitCode).not.toBe(0);
    expect(out.stderr).toMatch(new RegExp(`backup job ${job.id} was cancelled`));
    expect(out.stdout.split('\n').some((l) => l.startsWith('{') && JSON.parse(l).type === 'result')).toBe(false);
    expect(JSON.parse(out.stdout.split('\n')[0]!)).toMatchObject({ type: 'start', job: job.id });
    const secondOut = await second;
    expect(secondOut.exitCode).not.toBe(0);
    expect(secondOut.stderr).toMatch(new RegExp(`backup job ${queued.id} was cancelled`));
    expect((await listJobs(daemon)).find((j) => j.id === job.id)?.state).toBe('cancelled');
    // Cancelled before it ended: the job is over, its snapshot and files gone, the consumer where it was.
    await expectNothingLeft(guest, repo, 'nightly', daemon);
    expect(await consumerLast()).toBe(before);
    expect((await daemon.cli(['verify', '--repo', repo, guest.name])).exitCode).toBe(0);

    // The next backup: the 1 GiB of the cancelled one and a guest write made after it.
    await guestDd(agent, '/dev/vdb', 100 * MiB, 1 * MiB);
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
    expect(vdb.bytes).toBeGreaterThanOrEqual(BIG);
    // The restores of both disks and the verify only read the repository: side by side.
    const [verified] = await Promise.all([
      daemon.cli(['verify', '--repo', repo, guest.name]),
      ...(['vda', 'vdb'] as const).map(async (disk) => {
        const to = `${tempDir('restore')}/${disk}.qcow2`;
        await restoreDisk(await Repository.open(repo), { domain: guest.name, disk, to, at: r.id });
        expect((await sameContent(ref[disk]!, 'raw', to, 'qcow2')).same, disk).toBe(true);
      }),
    ]);
    await expectNothingLeft(guest, repo, 'nightly', daemon);
    expect(verified.exitCode).toBe(0);
  });

  it('a pass export is a job too, done once its exports are up', async () => {
    await daemon.cli(['consumer', 'add', guest.name, 'tool']);
    const pass = await daemon.cliJson(['pass', 'begin', guest.name, '--consumer', 'tool', '--export']);
    try {
      const j = (await listJobs(daemon)).filter((x) => x.kind === 'pass-export' && x.domain === guest.name && x.consumer === 'tool');
      expect(j).toHaveLength(1);
      expect(j[0]!.id).toMatch(/^p-[0-9a-f]{4}$/);
      expect(j[0]!.state).toBe('done');
      expect(j[0]!.startedAt).toBeDefined();
    } finally {
      await daemon.cli(['pass', 'abort', guest.name, '--consumer', 'tool', '--pass', String(pass.pass)]);
      await daemon.cli(['consumer', 'remove', guest.name, 'tool']);
    }
  });

  it('cancel of a job that has ended reports how it ended (exit 1)', async () => {
    const ended = (await listJobs(daemon)).find((j) => j.state === 'done');
    expect(ended).toBeDefined();
    const r = await daemon.cli(['jobs', 'cancel', ended!.id], { reject: false });
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toMatch(/had ended done before the cancel took effect/);
  });
});
