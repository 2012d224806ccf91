// A scan job whose time limit runs out before a disk's filesystems are read (a slow export, a busy
// scanner host) reports every partition it did not read as not scanned, for the time limit, and the
// result is not complete: it must never read as a clean scan of nothing.
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint, type Endpoint } from '../src/copy/index.js';
import { ClamdClient, runScanJob } from '../src/scan/scanner/index.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { makeFs, MiB } from './support/ext-images.js';
import { tempDir } from './support/nbd-servers.js';

useCleanup();

let dir: string;
let image: string;

beforeAll(async () => {
  const t = tempDir('scanner-time-before-read');
  onCleanup(() => t.remove());
  dir = t.path;
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  for (let i = 0; i < 8; i++) writeFileSync(join(tree, `f${i}`), Buffer.alloc(4096 * (i + 1), i));
  image = join(dir, 'fs.img');
  await makeFs(image, 16 * MiB, ['mkfs.ext4'], tree);
});

const MAX_SECONDS = 0.05;

/** Opens the image only once the job's time limit has run out, as a slow export would. */
async function lateOpen(): Promise<Endpoint> {
  await new Promise((r) => setTimeout(r, MAX_SECONDS * 1000 + 100));
  const ep = await FileEndpoint.open(image);
  onCleanup(() => ep.close());
  return ep;
}

describe('a time limit that runs out before the disk is read', () => {
  for (const mode of ['full', 'incremental'] as const) {
    it(`${mode}: each disk's filesystem is reported not scanned for the time limit, and the scan is not complete`, async () => {
      const size = statSync(image).size;
      const disk = (target: string) => ({ target, uri: 'nbd://unused', size, ...(mode === 'incremental' ? { extents: [[0, size]] as [number, number][] } : {}) });
      const result = await runScanJob({ id: `late-${mode}`, domain: 'vm1', disks: [disk('vda'), disk('vdb')] }, {
        // No clamd behind this socket: nothing may be sent to it.
        clamd: new ClamdClient(join(dir, 'no-clamd.sock'), 1_000), nbdTlsDir: '/nonexistent', emit: () => {}, open: lateOpen,
        limits: { maxFileBytes: 64 * MiB, maxFiles: 1000, maxSeconds: MAX_SECONDS, streamMaxLength: 64 * MiB, concurrency: 2 },
      });
      expect(result.complete).toBe(false);
      expect(result.scanned.files).toBe(0);
      expect(result.limitsHit).toEqual([expect.objectContaining({ limit: 'maxSeconds', value: MAX_SECONDS })]);
      expect(result.notScanned.map((n) => [n.disk, n.reason])).toEqual([
        ['vda', `time limit (maxSeconds ${MAX_SECONDS}) reached before it was read`],
        ['vdb', `time limit (maxSeconds ${MAX_SECONDS}) reached before it was read`],
      ]);
    });
  }
});
