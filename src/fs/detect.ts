// Names the filesystem (or volume format) at an offset by its magic, so callers can say "not readable (XFS)".
import type { Endpoint } from '../copy/index.js';
import { DiskReader } from './reader.js';

export type FilesystemKind = 'ext2' | 'ext3' | 'ext4' | 'xfs' | 'btrfs' | 'vfat' | 'ntfs' | 'swap' | 'lvm' | 'luks' | 'unknown';

// Feature bits that make blkid call an ext filesystem ext4 rather than ext3/ext2 (its "ext3 supported" sets).
const EXT3_INCOMPAT_OK = 0x0002 | 0x0004 | 0x0010; // filetype, recover, meta_bg
const EXT3_RO_COMPAT_OK = 0x0001 | 0x0002 | 0x0004; // sparse_super, large_file, btree_dir
const COMPAT_HAS_JOURNAL = 0x0004;
const INCOMPAT_JOURNAL_DEV = 0x0008;

/** ext2/ext3/ext4 from the superblock's feature words, as blkid names them. */
export function extKind(compat: number, incompat: number, roCompat: number): 'ext2' | 'ext3' | 'ext4' {
  if ((incompat & ~EXT3_INCOMPAT_OK) !== 0 || (roCompat & ~EXT3_RO_COMPAT_OK) !== 0) return 'ext4';
  return compat & COMPAT_HAS_JOURNAL ? 'ext3' : 'ext2';
}

/** The first 68 KiB hold every magic looked for here (btrfs's superblock is at 64 KiB). */
const PROBE = 68 * 1024;

export async function detectFilesystem(endpoint: Endpoint | DiskReader, offset = 0): Promise<FilesystemKind> {
  const reader = endpoint instanceof DiskReader ? endpoint : new DiskReader(endpoint);
  const n = Math.min(PROBE, reader.length - offset);
  if (n < 512) return 'unknown';
  const b = await reader.read(offset, n, 'filesystem probe');
  return detectBytes(b);
}

export function detectBytes(b: Buffer): FilesystemKind {
  const ascii = (at: number, s: string) => b.length >= at + s.length && b.toString('latin1', at, at + s.length) === s;
  if (b.length >= 2048 && b.readUInt16LE(1024 + 56) === 0xef53) {
    const compat = b.readUInt32LE(1024 + 92);
    const incompat = b.readUInt32LE(1024 + 96);
    const roCompat = b.readUInt32LE(1024 + 100);
    // An external journal device carries the ext magic but holds no files.
    if (!(incompat & INCOMPAT_JOURNAL_DEV)) return extKind(compat, incompat, roCompat);
  }
  if (ascii(0, 'XFSB')) return 'xfs';
  if (ascii(0, 'LUKS\xba\xbe') || ascii(0, 'SKUL\xba\xbe')) return 'luks';
  for (let s = 0; s < 4; s++) if (ascii(s * 512, 'LABELONE') && ascii(s * 512 + 24, 'LVM2 001')) return 'lvm';
  // Swap's signature ends its first page; pages of 4 KiB and 64 KiB are the ones in use.
  for (const page of [4096, 8192, 16384, 65536]) {
    if (ascii(page - 10, 'SWAPSPACE2') || ascii(page - 10, 'SWAP-SPACE')) return 'swap';
  }
  if (ascii(64 * 1024 + 64, '_BHRfS_M')) return 'btrfs';
  if (ascii(3, 'NTFS    ')) return 'ntfs';
  if (b.readUInt16LE(510) === 0xaa55 && (ascii(54, 'FAT') || ascii(82, 'FAT32'))) return 'vfat';
  return 'unknown';
}
