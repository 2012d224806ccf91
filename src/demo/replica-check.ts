// The demo judges a sync by the copy itself, as an admin would: the replica image converted to
// raw, checked by e2fsprogs alone (e2fsck -fn, then debugfs rdump of every file) and each file's
// sha256 compared with the guest's own (sha256sum in the guest, through the agent).
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { join, relative } from 'node:path';
import type { LabDomain } from './lab.js';

async function hashTree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out[relative(root, p)] = createHash('sha256').update(await readFile(p)).digest('hex');
    }
  };
  await walk(root);
  return out;
}

/** Files of the guest's /mnt/data by path, as sha256 sums. */
async function guestFiles(lab: LabDomain): Promise<Record<string, string>> {
  const text = await lab.exec('/bin/sh', ['-c', 'cd /mnt/data && find . -type f | while read f; do sha256sum "$f"; done']);
  const out: Record<string, string> = {};
  for (const line of text.trim().split('\n').filter(Boolean)) {
    const [hash, ...path] = line.split(/\s+/);
    out[path.join(' ').replace(/^\.\//, '')] = hash!;
  }
  return out;
}

/** Checks the qcow2 replica against the guest; resolves to how many files matched, throws on the first difference. */
export async function checkReplica(replica: string, lab: LabDomain, scratch: string): Promise<{ files: number; bytes: number }> {
  const dir = await mkdtemp(join(scratch, 'replica-check-'));
  try {
    const raw = join(dir, 'replica.raw');
    await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', replica, raw]);
    const fsck = await execa('e2fsck', ['-fn', raw], { reject: false });
    if (fsck.exitCode !== 0) throw new Error(`e2fsck -fn of the replica found problems:\n${fsck.stdout}${fsck.stderr}`);
    const files = join(dir, 'files');
    await execa('mkdir', [files]);
    await execa('debugfs', ['-R', `rdump / ${files}`, raw]);
    const mine = await hashTree(files);
    const theirs = await guestFiles(lab);
    for (const [path, hash] of Object.entries(theirs)) {
      if (mine[path] !== hash) throw new Error(`the replica's ${path} ${mine[path] ? 'differs from' : 'is missing, unlike'} the guest's`);
    }
    const extra = Object.keys(mine).filter((p) => !(p in theirs));
    if (extra.length > 0) throw new Error(`the replica has files the guest does not: ${extra.join(', ')}`);
    const { stdout } = await execa('du', ['-sb', files]);
    return { files: Object.keys(theirs).length, bytes: Number(stdout.split(/\s+/)[0]) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
