// writeFileAtomically: a state file is replaced whole; one that must be made only once (the
// scanner's secret) is made whole or not at all, and a second maker gets EEXIST and changes nothing.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useCleanup } from './support/cleanup.js';
import { tempDir } from './support/files.js';
import { writeFileAtomically } from '../src/util/atomic-file.js';

useCleanup();

describe('writeFileAtomically', () => {
  it('replaces a file whole, mode 0600, leaving no temp file', async () => {
    const dir = tempDir('atomic');
    const f = join(dir, 'state.json');
    await writeFileAtomically(f, 'one');
    await writeFileAtomically(f, Buffer.from('two'));
    expect(readFileSync(f, 'utf8')).toBe('two');
    expect(statSync(f).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(['state.json']);
  });

  it('exclusive: makes a missing file, and refuses (EEXIST) to replace one that exists, leaving it and no temp file', async () => {
    const dir = tempDir('atomic');
    const f = join(dir, 'secret');
    await writeFileAtomically(f, Buffer.from('first'), { exclusive: true });
    expect(readFileSync(f, 'utf8')).toBe('first');
    expect(statSync(f).mode & 0o777).toBe(0o600);
    await expect(writeFileAtomically(f, Buffer.from('second'), { exclusive: true })).rejects.toMatchObject({ code: 'EEXIST' });
    expect(readFileSync(f, 'utf8')).toBe('first');
    expect(readdirSync(dir)).toEqual(['secret']);
  });

  it('exclusive: of two makers at once, exactly one wins and the file is whole', async () => {
    const dir = tempDir('atomic');
    const f = join(dir, 'secret');
    const contents = Array.from({ length: 8 }, (_, i) => Buffer.alloc(4096, 0x41 + i));
    const results = await Promise.allSettled(contents.map((c) => writeFileAtomically(f, c, { exclusive: true })));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(results.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason.code === 'EEXIST')).toBe(true);
    const won = contents[results.findIndex((r) => r.status === 'fulfilled')]!;
    expect(readFileSync(f).equals(won)).toBe(true);
    expect(readdirSync(dir)).toEqual(['secret']);
  });
});
