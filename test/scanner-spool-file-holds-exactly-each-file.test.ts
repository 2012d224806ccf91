// A clamd session's spool file is rewritten for every file it carries: after each fill it holds
// exactly that file's bytes (a shorter file after a longer one leaves no tail of the earlier one,
// which clamd would scan as part of it), is readable by its group (clamd), and is gone once removed.
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { SpoolFile } from '../src/scan/scanner/index.js';
import { tempDir } from './support/nbd-servers.js';

const t = tempDir('spool-file');
afterAll(() => t.remove());

async function* pieces(b: Buffer, size: number) {
  for (let at = 0; at < b.length; at += size) yield b.subarray(at, Math.min(b.length, at + size));
}

describe('a spool file', () => {
  it('holds exactly the last file written, whatever came before, mode 0640, and goes away when removed', async () => {
    const f = SpoolFile.create(t.path);
    expect(statSync(f.path).mode & 0o777).toBe(0o640);
    for (const [size, piece] of [[300_000, 65_536], [10, 10], [120_000, 40_000], [0, 1], [5_000, 1_000], [200_000, 200_000]] as const) {
      const b = randomBytes(size);
      expect(await f.fill(pieces(b, piece))).toBe(size);
      expect(readFileSync(f.path).equals(b), `after a file of ${size} bytes`).toBe(true);
    }
    await f.remove();
    expect(readdirSync(t.path)).toEqual([]);
  });
});
