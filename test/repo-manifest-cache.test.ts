// A repository's chain is read from parsed manifests kept while their files are unchanged: the same
// file read twice gives the same (frozen) object, a manifest rewritten in place (prune does that)
// or removed is seen at once, and a damaged one is reported naming the file (not served from the cache).
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MANIFEST_FORMAT, Repository, newDigestInfo, writeManifest, type Manifest } from '../src/repo/index.js';

let root: string;
let repo: Repository;
let dir: string;

function manifest(seq: number, extra: Partial<Manifest> = {}): Manifest {
  const id = `nightly-${String(seq).padStart(4, '0')}`;
  return {
    format: MANIFEST_FORMAT, id, domain: 'vm1', uuid: 'u-1', consumer: 'nightly', seq, time: new Date(2026, 0, seq).toISOString(),
    completedAt: new Date(2026, 0, seq).toISOString(), generation: seq, since: seq - 1, pass: seq, parent: seq === 1 ? null : `nightly-${String(seq - 1).padStart(4, '0')}`,
    kind: seq === 1 ? 'full' : 'incremental', running: true, consistency: 'filesystem', freezeWindowMs: 12, digest: newDigestInfo(), domainXml: '<domain/>',
    disks: [{ target: 'vda', sizeBytes: 1 << 20, file: `${id}.vda.qcow2`, backing: seq === 1 ? null : `nightly-${String(seq - 1).padStart(4, '0')}.vda.qcow2`, full: seq === 1, extents: [[0, 65536]], bytes: 65536, written: 65536, sha256: 'a'.repeat(64) }],
    ...extra,
  };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'virtcbt-manifest-cache-'));
  repo = await Repository.open(root, { create: true });
  dir = repo.chainDir('vm1', 'nightly');
  await mkdir(dir, { recursive: true });
  for (const seq of [1, 2, 3]) await writeManifest(dir, manifest(seq));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('manifest cache', () => {
  it('an unchanged manifest is parsed once and handed out frozen', async () => {
    const a = await repo.chain('vm1', 'nightly');
    const b = await repo.chain('vm1', 'nightly');
    expect(a.map((m) => m.id)).toEqual(['nightly-0001', 'nightly-0002', 'nightly-0003']);
    expect(b[1]).toBe(a[1]);
    expect(Object.isFrozen(a[1])).toBe(true);
    expect(Object.isFrozen(a[1]!.disks[0])).toBe(true);
    expect(() => { (a[1]!.disks[0] as { backing: string | null }).backing = 'x'; }).toThrow(TypeError);
  });

  it('a manifest rewritten in place is read again; a removed one is gone', async () => {
    const before = (await repo.chain('vm1', 'nightly'))[2]!;
    await writeManifest(dir, manifest(3, { merged: ['nightly-0002'] }));
    const after = (await repo.chain('vm1', 'nightly'))[2]!;
    expect(after).not.toBe(before);
    expect(after.merged).toEqual(['nightly-0002']);
    await rm(join(dir, 'nightly-0002.json'));
    expect((await repo.chain('vm1', 'nightly')).map((m) => m.id)).toEqual(['nightly-0001', 'nightly-0003']);
  });

  it('a manifest damaged after it was cached is reported naming the file', async () => {
    await repo.chain('vm1', 'nightly');
    await writeFile(join(dir, 'nightly-0001.json'), '{"format": "virtcbt-backup/1", "id": ');
    const s = await repo.chainState('vm1', 'nightly');
    expect(s.points.map((m) => m.id)).not.toContain('nightly-0001');
    expect(s.damaged.map((d) => d.problem).join('\n')).toMatch(/nightly-0001\.json is unreadable/);
  });
});
