// The in-progress marker lists the qemu-nbd processes of a backup, for the clean-up after a kill; it is read from the
// repository, which anyone with write access can forge. The clean-up (here the one a prune ends with, the same a
// backup starts with) kills only a qemu-nbd serving files inside that chain's directory: a real qemu-nbd serving a
// file outside the repository (or beside the chain directory), and a process that is no qemu-nbd, survive a forged
// marker naming them, still serving; a qemu-nbd left serving an image of the chain directory is killed.
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ServedImage } from '../src/copy/index.js';
import { INPROGRESS_FILE, pruneChain, serveChain } from '../src/repo/index.js';
import { pidAlive } from '../src/util/process.js';
import { MiB, tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { handmadeRepo } from './support/handmade-repo.js';

useCleanup();

/** A qemu-nbd started as virtcbt starts one (serveChain), killed at teardown if still there. */
async function served(chain: string | string[]): Promise<ServedImage> {
  const img = await serveChain(chain, { runDir: tempDir('nbd') });
  onCleanup(() => img.kill());
  return img;
}

async function qcow2(path: string): Promise<string> {
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(4 * MiB)]);
  return path;
}

/** The image still answers reads (its qemu-nbd is alive and serving). */
async function stillServes(img: ServedImage): Promise<void> {
  expect(pidAlive(img.pid), `qemu-nbd ${img.pid}`).toBe(true);
  const buf = Buffer.alloc(4096);
  await img.endpoint.read(buf, 0);
}

describe('a forged in-progress marker does not make the clean-up kill an unrelated process', () => {
  it('qemu-nbd serving files outside the chain directory and a non-qemu-nbd survive; the chain\'s own leftover qemu-nbd is killed', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 3 } });
    const outside = tempDir('outside');
    // One as a plain image argument, one as the explicit chain (json:) virtcbt uses, one beside the chain directory.
    const victim = await served(await qcow2(join(outside, 'live-vm.qcow2')));
    const victimChain = await served([await qcow2(join(outside, 'live-top.qcow2'))]);
    const beside = await served(await qcow2(join(h.dir, '..', 'beside.qcow2')));
    const sleeper = spawn('sleep', ['600'], { stdio: 'ignore' });
    onCleanup(() => { sleeper.kill('SIGKILL'); });
    // What a killed backup of this chain leaves: its new image, still served.
    const leftover = await served(await qcow2(join(h.dir, `${h.consumer}-0004.vda.qcow2`)));

    const pids = [victim.pid, victimChain.pid, beside.pid, sleeper.pid!, leftover.pid];
    writeFileSync(join(h.dir, INPROGRESS_FILE), JSON.stringify({
      id: `${h.consumer}-0004`, pass: null, generation: 1, files: [], pids, pid: 999_999, startedAt: new Date().toISOString(),
    }));
    await pruneChain(h.repo, h.domain, h.consumer, 2);

    await stillServes(victim);
    await stillServes(victimChain);
    await stillServes(beside);
    expect(pidAlive(sleeper.pid!)).toBe(true);
    expect(pidAlive(leftover.pid), "the chain's leftover qemu-nbd").toBe(false);
  });
});
