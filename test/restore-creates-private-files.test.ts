// Disk images hold the guest's secrets: a restored disk, raw or qcow2, and its `.part` file while
// the restore runs, are readable by their owner only (0600), whatever the umask, also when
// --force replaces a file that was readable by all.
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { partName, restoreDisk } from '../src/repo/index.js';
import { tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { handmadeRepo } from './support/handmade-repo.js';

useCleanup();

function mode(path: string): string {
  return (statSync(path).mode & 0o777).toString(8);
}

describe('restored disks are private', () => {
  it.each(['qcow2', 'raw'] as const)('%s: the .part file and the restored disk are 0600 under umask 022', async (format) => {
    const old = process.umask(0o022);
    onCleanup(() => process.umask(old));
    const h = await handmadeRepo({ consumers: { nightly: 2 } });
    const to = join(tempDir('out'), `vda.${format}`);
    const partModes = new Set<string>();
    await restoreDisk(h.repo, {
      domain: h.domain, disk: 'vda', to, format,
      // Progress comes while the copy runs: the part file exists then.
      onProgress: () => { partModes.add(mode(partName(to))); },
    });
    expect([...partModes]).toEqual(['600']);
    expect(mode(to)).toBe('600');
  });

  it('--force over a file readable by all leaves a 0600 file', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 } });
    const to = join(tempDir('out'), 'vda.qcow2');
    writeFileSync(to, 'old', { mode: 0o644 });
    await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to, force: true });
    expect(mode(to)).toBe('600');
  });
});
