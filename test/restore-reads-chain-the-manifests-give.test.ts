// An image's header is not trusted: restore, verify and the explicit chain spec read exactly the
// files the manifests name. A header pointing outside the repository (at a root-only file) or an
// external data file is refused, naming the image; nothing of the outside file comes out.
import { execa } from 'execa';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { chainSpec, restoreDisk, serveChain, verifyRepo } from '../src/repo/index.js';
import { MiB, sameContent, tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { handmadeRepo } from './support/handmade-repo.js';

useCleanup();

const SECRET = 'ROOT-ONLY-SECRET-';

/** A raw file outside the repository, 16 MiB of a recognisable string, readable by root only. */
function secretFile(): string {
  const p = join(tempDir('outside'), 'shadow.raw');
  writeFileSync(p, Buffer.alloc(16 * MiB, SECRET), { mode: 0o600 });
  return p;
}

function leaks(file: string): boolean {
  return existsSync(file) && readFileSync(file).includes(SECRET);
}

describe('a header that names another backing file than the manifests', () => {
  it('restore refuses it, naming the image, and writes nothing', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 3 } });
    const secret = secretFile();
    const top = join(h.dir, h.points[2]!.manifest.disks[0]!.file);
    await execa('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', secret, '-F', 'raw', top]);
    const out = join(tempDir('out'), 'vda.raw');
    const err = await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: out, format: 'raw' }).then(() => undefined, (e: Error) => e);
    expect(leaks(out), 'the outside file came out in the restored disk').toBe(false);
    expect(err?.message).toContain(top);
    expect(err?.message).toMatch(/backed by "[^"]*shadow\.raw" in its header/);
    expect(existsSync(out)).toBe(false);
  });

  it('verify reports it and reads nothing through it', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 2 } });
    const top = join(h.dir, h.points[1]!.manifest.disks[0]!.file);
    // The header points at a faithful copy of the real base outside the repository: still wrong.
    const copy = join(tempDir('outside'), 'base-copy.qcow2');
    await execa('cp', [join(h.dir, h.points[0]!.manifest.disks[0]!.file), copy]);
    await execa('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', copy, '-F', 'qcow2', top]);
    const v = await verifyRepo(h.repo, h.domain);
    expect(v.ok).toBe(false);
    const bad = v.disks.find((d) => d.id === h.points[1]!.id)!;
    expect(bad.problems.join('; ')).toContain('base-copy.qcow2');
  });

  it('an image whose data lives in an external file outside the repository is refused', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 1 } });
    const secret = secretFile();
    const base = join(h.dir, h.points[0]!.manifest.disks[0]!.file);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${secret},data_file_raw=on`, base, String(16 * MiB)]);
    // qemu-img create zeroed the data file: the secret goes back in, as an attacker's file would be.
    writeFileSync(secret, Buffer.alloc(16 * MiB, SECRET));
    const out = join(tempDir('out'), 'vda.raw');
    const err = await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: out, format: 'raw' }).then(() => undefined, (e: Error) => e);
    expect(leaks(out), 'the outside file came out in the restored disk').toBe(false);
    expect(err?.message).toContain(base);
    expect(err?.message).toContain('external file');
    const v = await verifyRepo(h.repo, h.domain);
    expect(v.ok).toBe(false);
  });
});

describe('the explicit chain', () => {
  it('opens exactly the files given, whatever the top header names (qemu-nbd and qemu-img compare agree)', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 3 }, refs: true });
    const secret = secretFile();
    const files = [2, 1, 0].map((i) => join(h.dir, h.points[i]!.manifest.disks[0]!.file));
    await execa('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', secret, '-F', 'raw', files[0]!]);
    const ref = h.points[2]!.refs.vda!;
    expect((await sameContent(ref, 'raw', chainSpec(files), 'qcow2')).same).toBe(true);
    // Through qemu-nbd as restore and verify read it.
    const img = await serveChain(files, { runDir: tempDir('run') });
    try {
      const buf = Buffer.alloc(img.endpoint.size);
      await img.endpoint.read(buf, 0);
      expect(buf.equals(readFileSync(ref))).toBe(true);
    } finally {
      await img.close();
    }
  });

  it('restore of an intact chain equals the point', async () => {
    const h = await handmadeRepo({ consumers: { nightly: 3 }, refs: true });
    for (const p of h.points) {
      const out = join(tempDir('out'), `${p.id}.qcow2`);
      await restoreDisk(h.repo, { domain: h.domain, disk: 'vda', to: out, at: p.id });
      expect((await sameContent(p.refs.vda!, 'raw', out, 'qcow2')).same, p.id).toBe(true);
    }
    expect((await verifyRepo(h.repo, h.domain)).ok).toBe(true);
  });
});
