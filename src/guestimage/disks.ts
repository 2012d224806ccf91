// Makes the test guest's base disks: an ext4 qcow2 with a few known files, an empty xfs qcow2
// and a zeroed raw scratch disk. Tests copy these before use; the cached originals stay pristine.
import { execa } from 'execa';
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DATA_LABEL, XFS_LABEL } from './initramfs.js';

const MiB = 1024 * 1024;
export const DATA_SIZE = 256 * MiB;
/** mkfs.xfs refuses filesystems smaller than 300 MiB. */
export const XFS_SIZE = 320 * MiB;
export const SCRATCH_SIZE = 64 * MiB;

/** Files put on the ext4 data disk, by path under /mnt/data in the guest. */
export const DATA_FILES: Record<string, string | Buffer> = {
  'hello.txt': 'hello from the virtcbt test guest\n',
  'docs/readme.txt': 'A small directory so file walks have something to walk.\n',
  'docs/numbers.txt': Array.from({ length: 1000 }, (_, i) => `${i}\n`).join(''),
  // 1 MiB of a fixed pseudo-random pattern: spans many 64 KiB clusters, does not compress away.
  'blob.bin': patternBuffer(MiB, 0x5eed),
};

export interface BaseDisks {
  dataExt4: string;
  dataXfs: string;
  scratchRaw: string;
}

export async function buildBaseDisks(dir: string, work: string): Promise<BaseDisks> {
  const content = join(work, 'data-content');
  for (const [rel, body] of Object.entries(DATA_FILES)) {
    const p = join(content, rel);
    await mkdir(join(p, '..'), { recursive: true });
    await writeFile(p, body);
  }

  const ext4Raw = join(work, 'data-ext4.raw');
  await sparseFile(ext4Raw, DATA_SIZE);
  // -E root_owner so files are root's in the guest whatever uid built the image.
  await execa('mkfs.ext4', ['-q', '-F', '-b', '4096', '-L', DATA_LABEL, '-E', 'root_owner=0:0', '-d', content, ext4Raw]);
  const dataExt4 = join(dir, 'data-ext4.qcow2');
  await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', ext4Raw, dataExt4]);
  await rm(ext4Raw);

  const xfsRaw = join(work, 'data-xfs.raw');
  await sparseFile(xfsRaw, XFS_SIZE);
  await execa('mkfs.xfs', ['-q', '-f', '-L', XFS_LABEL, xfsRaw]);
  const dataXfs = join(dir, 'data-xfs.qcow2');
  await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', xfsRaw, dataXfs]);
  await rm(xfsRaw);

  const scratchRaw = join(dir, 'scratch.raw');
  await sparseFile(scratchRaw, SCRATCH_SIZE);
  return { dataExt4, dataXfs, scratchRaw };
}

async function sparseFile(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

/** Deterministic bytes (xorshift32) so tests can recompute the expected content. */
export function patternBuffer(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i + 4 <= size; i += 4) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b.writeUInt32LE(x, i);
  }
  return b;
}
