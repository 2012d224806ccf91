// A qemu-storage-daemon that dies in the middle of a job on a stopped domain's images (killed, or
// crashed) is named in the job's error with how it ended and what it printed, not left to show as
// a QMP socket "closed by the peer".
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { withStorageDaemon } from '../src/qsd/index.js';

const dir = mkdtempSync(join(tmpdir(), 'virtcbt-qsd-death-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('withStorageDaemon', () => {
  it('names a daemon that was killed during the job, and does not run the job again', async () => {
    const image = join(dir, 'disk.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    let runs = 0;
    const job = withStorageDaemon(dir, 'vm1', [{ target: 'vda', image }], async (s) => {
      runs++;
      process.kill(s.pid, 'SIGKILL');
      // The job's next request finds the socket closed.
      for (;;) await s.qmp.execute('query-named-block-nodes');
    });
    await expect(job).rejects.toThrow(/qemu-storage-daemon on the images of domain vm1 ended during the job \(killed by SIGKILL\)/);
    // SIGKILL is sent by someone (a domain start ends the daemon through its holder file): no second run.
    expect(runs).toBe(1);
  });

  it('runs the job once more on a fresh daemon when the daemon crashed under it', async () => {
    const image = join(dir, 'disk3.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    const pids: number[] = [];
    const crashes: string[] = [];
    const job = withStorageDaemon(dir, 'vm1', [{ target: 'vda', image }], async (s) => {
      pids.push(s.pid);
      if (pids.length === 1) {
        process.kill(s.pid, 'SIGSEGV');
        for (;;) await s.qmp.execute('query-named-block-nodes');
      }
      return (await s.qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes')).map((n) => n['node-name']);
    }, { onCrash: (err) => crashes.push(err.message) });
    await expect(job).resolves.toContain('vcbt-vda');
    expect(pids).toHaveLength(2);
    expect(pids[1]).not.toBe(pids[0]);
    expect(crashes).toEqual([expect.stringMatching(/ended during the job \(killed by SIGSEGV\)/)]);
  });

  it('gives up after a second crash, with the crash named', async () => {
    const image = join(dir, 'disk4.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    let runs = 0;
    const job = withStorageDaemon(dir, 'vm1', [{ target: 'vda', image }], async (s) => {
      runs++;
      process.kill(s.pid, 'SIGABRT');
      for (;;) await s.qmp.execute('query-named-block-nodes');
    });
    await expect(job).rejects.toThrow(/ended during the job \(killed by SIGABRT\)/);
    expect(runs).toBe(2);
  });

  it('leaves a job\'s own failure as it is while the daemon runs', async () => {
    const image = join(dir, 'disk2.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    const job = withStorageDaemon(dir, 'vm1', [{ target: 'vda', image }], async () => { throw new Error('the job\'s own error'); });
    await expect(job).rejects.toThrow(/^the job's own error$/);
  });
});
