// `stateDir/frozen/DOMAIN` exists while virtcbtd has the guest's filesystems frozen: a virtcbtd
// killed in that window finds it at start and thaws the guest.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FreezeMarker } from '../snapshot/index.js';

/** The file operations, replaceable by a test that needs a slow one. */
export interface MarkerFs {
  write(dir: string, file: string, content: string): Promise<void>;
  remove(file: string): Promise<void>;
}

const realFs: MarkerFs = {
  write: async (dir, file, content) => {
    await mkdir(dir, { recursive: true, mode: 0o750 });
    await writeFile(file, content);
  },
  remove: (file) => rm(file, { force: true }),
};

/**
 * The freeze markers of one virtcbtd. Per domain, writes and removals run in the order they were
 * asked for: a removal nobody waits for (after a thaw) never lands after the next freeze's write.
 */
export class FreezeMarkers {
  private readonly last = new Map<string, Promise<void>>();

  constructor(private readonly stateDir: string, private readonly fs: MarkerFs = realFs) {}

  get dir(): string {
    return join(this.stateDir, 'frozen');
  }

  fileOf(domain: string): string {
    return join(this.dir, encodeURIComponent(domain));
  }

  for(domain: string): FreezeMarker {
    const file = this.fileOf(domain);
    return {
      set: () => this.inOrder(domain, () => this.fs.write(this.dir, file, `${process.pid}\n`)),
      clear: () => this.inOrder(domain, () => this.fs.remove(file)),
    };
  }

  private inOrder(domain: string, op: () => Promise<void>): Promise<void> {
    const p = (this.last.get(domain) ?? Promise.resolve()).then(op);
    const tail = p.catch(() => undefined);
    this.last.set(domain, tail);
    void tail.then(() => {
      if (this.last.get(domain) === tail) this.last.delete(domain);
    });
    return p;
  }
}
