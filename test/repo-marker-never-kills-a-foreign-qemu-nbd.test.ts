// The in-progress marker lies in the repository, which is untrusted: the qemu-nbd pids it lists are
// killed by the next backup or prune only when that process serves an image of this chain
// directory. Before, any qemu-nbd on the host whose pid a tampered (or restored-from-offsite)
// marker named was SIGKILLed — by prune run as root on an offsite repository, by virtcbtd's backup.
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pidAlive } from '../src/repo/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, tempDir } from './support/backup.js';
import { onCleanup, trackChild, useCleanup } from './support/cleanup.js';
import { handmadeRepo } from './support/handmade-repo.js';

useCleanup();

/** A qemu-nbd serving `image` (read-only, persistent) until the test ends. */
async function qemuNbd(image: string): Promise<number> {
  const sock = join(tempDir('nbd-sock'), 's');
  const child = spawn('qemu-nbd', ['-k', sock, '-r', '--persistent', '-f', 'qcow2', image], { stdio: 'ignore' });
  const untrack = trackChild(child.pid!);
  onCleanup(() => { child.kill('SIGKILL'); untrack(); });
  await pollUntil(() => existsSync(sock), 'qemu-nbd to listen', { timeoutMs: 10_000 });
  return child.pid!;
}

function plantMarker(dir: string, pids: number[]): void {
  writeFileSync(join(dir, '.inprogress.json'), JSON.stringify({
    id: 'nightly-0003', pass: null, generation: 1, files: [], pids, pid: 999_999_999, startedAt: new Date().toISOString(),
  }));
}

describe('the marker\'s qemu-nbd pids', () => {
  it('a qemu-nbd serving a file outside the chain directory is left running by the clean-up (prune)', async () => {
    const h = await handmadeRepo({ points: 2 });
    const sandbox = tempDir('sandbox');
    const image = join(sandbox, 'live.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(16 * MiB)]);
    const foreign = await qemuNbd(image);
    plantMarker(h.dir, [foreign]);
    const r = await h.repo.cleanupLeftovers(h.domain, h.consumer);
    expect(r.interrupted?.pids).toEqual([foreign]);
    expect(pidAlive(foreign), 'a qemu-nbd of another chain (here: of a live image outside the repository) was killed').toBe(true);
  });

  it('a qemu-nbd left serving an image of this chain is still killed', async () => {
    const h = await handmadeRepo({ points: 2 });
    const own = await qemuNbd(join(h.dir, 'nightly-0002.vda.qcow2'));
    plantMarker(h.dir, [own]);
    await h.repo.cleanupLeftovers(h.domain, h.consumer);
    expect(pidAlive(own)).toBe(false);
  });
});
