// A stopped domain's point-in-time view that outlives its job: a read-only qemu-storage-daemon on
// the images, kept until released (a pass export waits for its commit or abort). While it runs the
// images are locked and the domain cannot start; that is the price of an export of a stopped VM.
import { readFile } from 'node:fs/promises';
import { withStorageDaemon, type QsdImage, type QsdSession } from '../qsd/index.js';

/** A storage daemon kept running after the call returns, until `release()`. */
export function holdStorageDaemon(runDir: string, domain: string, images: QsdImage[]): Promise<{ s: QsdSession; release: () => Promise<void> }> {
  return new Promise((resolve, reject) => {
    let letGo!: () => void;
    const released = new Promise<void>((r) => { letGo = r; });
    let started = false;
    const done: Promise<void> = withStorageDaemon(runDir, domain, images, async (s) => {
      started = true;
      resolve({ s, release: async () => { letGo(); await done; } });
      await released;
    });
    done.catch((err) => { if (!started) reject(err); });
  });
}

/**
 * Kills a process a dead virtcbtd recorded as serving one of its snapshots, only if it is still a
 * QEMU NBD server started under `runDir` (a pid may have been reused by anything since).
 */
export async function killFrontEnd(pid: number, runDir: string): Promise<boolean> {
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  const prog = argv.find((a) => /(^|\/)(qemu-nbd|qemu-storage-daemon)$/.test(a));
  if (!prog || !argv.some((a) => a.includes(runDir))) return false;
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}
