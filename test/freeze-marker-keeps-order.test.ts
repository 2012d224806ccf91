// virtcbtd's freeze marker (a file per domain while the guest is frozen): the removal after a thaw
// is not waited for, so the marker must keep its writes and removals in order; a marker written
// ahead of the freeze is removed when no freeze took it.
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { presetMarker } from '../src/snapshot/index.js';
import { FreezeMarkers, type MarkerFs } from '../src/daemon/freeze-marker.js';
import { useCleanup } from './support/cleanup.js';
import { tempDir } from './support/files.js';

useCleanup();

/** The real file operations, with each removal held until the test lets it go. */
function slowRemovals(): { fs: MarkerFs; release: () => void; started: () => number } {
  let gate!: () => void;
  const held = new Promise<void>((r) => { gate = r; });
  let n = 0;
  return {
    fs: {
      write: async (dir, file, content) => {
        await mkdir(dir, { recursive: true });
        await writeFile(file, content);
      },
      remove: async (file) => {
        n++;
        await held;
        await rm(file, { force: true });
      },
    },
    release: gate,
    started: () => n,
  };
}

describe('freeze markers', () => {
  it('set writes the file with the daemon\'s pid; clear removes it', async () => {
    const markers = new FreezeMarkers(tempDir('state'));
    const m = markers.for('vm/with slash');
    await m.set();
    expect(readFileSync(markers.fileOf('vm/with slash'), 'utf8')).toBe(`${process.pid}\n`);
    await m.clear();
    expect(existsSync(markers.fileOf('vm/with slash'))).toBe(false);
  });

  it('a removal not waited for never lands after the next freeze\'s write', async () => {
    const slow = slowRemovals();
    const markers = new FreezeMarkers(tempDir('state'), slow.fs);
    const m = markers.for('vm');
    await m.set();
    const cleared = m.clear(); // after a thaw: nobody waits for it
    const next = m.set(); // the next backup's freeze
    // The write waits for the removal asked before it.
    await new Promise((r) => setImmediate(r));
    expect(slow.started()).toBe(1);
    slow.release();
    await Promise.all([cleared, next]);
    expect(existsSync(markers.fileOf('vm'))).toBe(true);
  });

  it('another domain\'s marker does not wait for this one\'s removal', async () => {
    const slow = slowRemovals();
    const markers = new FreezeMarkers(tempDir('state'), slow.fs);
    await markers.for('a').set();
    const cleared = markers.for('a').clear();
    await markers.for('b').set();
    expect(existsSync(markers.fileOf('b'))).toBe(true);
    slow.release();
    await cleared;
    expect(existsSync(markers.fileOf('a'))).toBe(false);
  });

  it('a marker written ahead and taken by no freeze is removed; one a freeze took is left to it', async () => {
    const markers = new FreezeMarkers(tempDir('state'));
    const unused = presetMarker(markers.for('x'));
    await unused.dropIfUnused();
    expect(existsSync(markers.fileOf('x'))).toBe(false);

    const taken = presetMarker(markers.for('y'));
    await taken.marker.set();
    await taken.dropIfUnused();
    expect(existsSync(markers.fileOf('y'))).toBe(true);
    await taken.marker.clear();
    expect(existsSync(markers.fileOf('y'))).toBe(false);
  });

  it('a marker that could not be written fails the freeze that takes it', async () => {
    const failing: MarkerFs = { write: () => Promise.reject(new Error('EROFS: read-only file system')), remove: () => Promise.resolve() };
    const p = presetMarker(new FreezeMarkers('/state', failing).for('z'));
    await expect(p.marker.set()).rejects.toThrow(/EROFS/);
  });
});
