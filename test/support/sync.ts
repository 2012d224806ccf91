// What the sync tests compare: the guest's files (sha256 through the agent) and the files in a
// target image as e2fsprogs alone sees them (e2fsck -fn clean, then debugfs rdump), so a sync is
// judged by the copy itself, not by virtcbt's own numbers.
import { execa } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { expect } from 'vitest';
import type { GuestAgent } from '../../src/guest/index.js';

/** sha256 of every regular file under /mnt/data in the guest, by path relative to it. */
export async function guestHashes(agent: GuestAgent): Promise<Record<string, string>> {
  const r = await agent.exec('/bin/sh', ['-c', 'cd /mnt/data && find . -type f | while read f; do sha256sum "$f"; done'], { timeoutMs: 60_000 });
  expect(r.exitCode, r.stderr).toBe(0);
  const out: Record<string, string> = {};
  for (const l of r.stdout.trim().split('\n').filter(Boolean)) {
    const [h, ...p] = l.split(/\s+/);
    out[p.join(' ').replace(/^\.\//, '')] = h!;
  }
  return out;
}

/** sha256 of every regular file under `root`, by relative path. */
export function hashTree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out[relative(root, p)] = createHash('sha256').update(readFileSync(p)).digest('hex');
    }
  };
  walk(root);
  return out;
}

/** A raw ext filesystem image checked by e2fsprogs alone: e2fsck -fn clean, and its files' hashes (debugfs rdump into `scratch`). */
export async function fsHashes(raw: string, what: string, scratch: string): Promise<Record<string, string>> {
  const fsck = await execa('e2fsck', ['-fn', raw], { reject: false });
  expect(fsck.exitCode, `e2fsck of ${what}:\n${fsck.stdout}${fsck.stderr}`).toBe(0);
  const out = join(scratch, `rdump-${randomBytes(3).toString('hex')}`);
  mkdirSync(out);
  await execa('debugfs', ['-R', `rdump / ${out}`, raw]);
  const h = hashTree(out);
  await rm(out, { recursive: true, force: true });
  return h;
}

/** The files of a qcow2 target image, through a raw copy in `scratch` (removed after). */
export async function targetHashes(target: string, scratch: string): Promise<Record<string, string>> {
  const raw = join(scratch, `check-${randomBytes(3).toString('hex')}.raw`);
  await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', target, raw]);
  try {
    return await fsHashes(raw, `the target ${target}`, scratch);
  } finally {
    await rm(raw, { force: true });
  }
}
