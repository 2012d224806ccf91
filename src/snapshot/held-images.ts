// A stopped domain's point-in-time view that outlives its job: a read-only qemu-storage-daemon on
// the images, kept until released (a pass export waits for its commit or abort). While it runs the
// images are locked and the domain cannot start; that is the price of an export of a stopped VM.
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
    }, { retryOnCrash: false });
    done.catch((err) => { if (!started) reject(err); });
  });
}
