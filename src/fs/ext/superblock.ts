// The ext2/3/4 superblock: geometry, feature words (unknown incompatible features are refused by name), checksum.
import { crc32cRaw } from '../crc.js';
import { extKind } from '../detect.js';
import { damaged, unsupported } from '../errors.js';

export const COMPAT = {
  dir_prealloc: 0x1, imagic_inodes: 0x2, has_journal: 0x4, ext_attr: 0x8, resize_inode: 0x10, dir_index: 0x20,
  lazy_bg: 0x40, exclude_bitmap: 0x100, sparse_super2: 0x200, fast_commit: 0x400, stable_inodes: 0x800, orphan_file: 0x1000,
} as const;
export const INCOMPAT = {
  compression: 0x1, filetype: 0x2, needs_recovery: 0x4, journal_dev: 0x8, meta_bg: 0x10, extent: 0x40, '64bit': 0x80,
  mmp: 0x100, flex_bg: 0x200, ea_inode: 0x400, dirdata: 0x1000, metadata_csum_seed: 0x2000, large_dir: 0x4000,
  inline_data: 0x8000, encrypt: 0x10000, casefold: 0x20000,
} as const;
export const RO_COMPAT = {
  sparse_super: 0x1, large_file: 0x2, btree_dir: 0x4, huge_file: 0x8, uninit_bg: 0x10, dir_nlink: 0x20, extra_isize: 0x40,
  snapshot: 0x80, quota: 0x100, bigalloc: 0x200, metadata_csum: 0x400, replica: 0x800, read_only: 0x1000, project: 0x2000,
  shared_blocks: 0x4000, verity: 0x8000, orphan_present: 0x10000,
} as const;

/** Incompatible features this reader knows how to read (the others change the on-disk layout in ways it does not follow). */
const INCOMPAT_READ =
  INCOMPAT.filetype | INCOMPAT.needs_recovery | INCOMPAT.meta_bg | INCOMPAT.extent | INCOMPAT['64bit'] | INCOMPAT.mmp |
  INCOMPAT.flex_bg | INCOMPAT.ea_inode | INCOMPAT.metadata_csum_seed | INCOMPAT.large_dir | INCOMPAT.inline_data |
  INCOMPAT.encrypt | INCOMPAT.casefold;
/**
 * Read-only-compatible features whose meaning for the block bitmaps this reader knows: an unknown
 * one (or bigalloc, whose bitmaps count clusters, or a next3 snapshot) could make a block it
 * calls free hold data, so they are refused too.
 */
const RO_COMPAT_READ =
  RO_COMPAT.sparse_super | RO_COMPAT.large_file | RO_COMPAT.btree_dir | RO_COMPAT.huge_file | RO_COMPAT.uninit_bg |
  RO_COMPAT.dir_nlink | RO_COMPAT.extra_isize | RO_COMPAT.quota | RO_COMPAT.metadata_csum | RO_COMPAT.read_only |
  RO_COMPAT.project | RO_COMPAT.shared_blocks | RO_COMPAT.verity | RO_COMPAT.orphan_present;

export function featureNames(table: Record<string, number>, word: number): string[] {
  const out: string[] = [];
  let rest = word >>> 0;
  for (const [name, bit] of Object.entries(table)) {
    if (rest & bit) {
      out.push(name);
      rest &= ~bit;
    }
  }
  for (let bit = 0; bit < 32; bit++) if ((rest >>> bit) & 1) out.push(`unknown bit 0x${(2 ** bit).toString(16)}`);
  return out;
}

export interface Superblock {
  kind: 'ext2' | 'ext3' | 'ext4';
  blockSize: number;
  blocksCount: number;
  freeBlocksCount: number;
  inodesCount: number;
  firstDataBlock: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  inodeSize: number;
  firstIno: number;
  groupCount: number;
  descSize: number;
  reservedGdtBlocks: number;
  firstMetaBg: number;
  /** sparse_super2: the only two groups with backups (0 when none). */
  backupBgs: [number, number];
  compat: number;
  incompat: number;
  roCompat: number;
  features: string[];
  uuid: Buffer;
  label: string;
  /** Seed of every metadata_csum checksum: crc32c(~0, uuid) or the stored seed. */
  csumSeed: number;
  /** The journal was not replayed (a crash-consistent copy of a mounted filesystem): newer metadata may sit in the journal. */
  needsRecovery: boolean;
  journalInum: number;
  /** s_min_extra_isize: used to tell an inode's extra fields apart. */
  wantExtraIsize: number;
}

export function has(word: number, bit: number): boolean {
  return (word & bit) !== 0;
}

/** Parses the 1024 bytes at byte 1024 of the filesystem. */
export function parseSuperblock(b: Buffer, where: string, fsBytes: number): Superblock {
  if (b.readUInt16LE(56) !== 0xef53) throw damaged(where, 'no ext2/3/4 superblock (magic 0xEF53 missing at byte 1080)');
  const compat = b.readUInt32LE(92);
  const incompat = b.readUInt32LE(96);
  const roCompat = b.readUInt32LE(100);
  const badIncompat = incompat & ~INCOMPAT_READ;
  if (badIncompat) {
    throw unsupported(where, `ext filesystem with incompatible features this reader does not know: ${featureNames(INCOMPAT, badIncompat).join(', ')}`);
  }
  const badRo = roCompat & ~RO_COMPAT_READ;
  if (badRo) {
    throw unsupported(where, `ext filesystem with features whose block bitmaps this reader cannot interpret: ${featureNames(RO_COMPAT, badRo).join(', ')}`);
  }
  if (has(roCompat, RO_COMPAT.metadata_csum)) {
    const sum = b.readUInt32LE(0x3fc);
    if (b[0x175] !== 1) throw unsupported(where, `unknown metadata checksum type ${b[0x175]}`);
    if (crc32cRaw(0xffffffff, b, 0, 0x3fc) !== sum) throw damaged(where, 'superblock checksum mismatch');
  }
  const logBlock = b.readUInt32LE(24);
  if (logBlock > 6) throw damaged(where, `impossible block size 1024<<${logBlock}`);
  const blockSize = 1024 << logBlock;
  const is64 = has(incompat, INCOMPAT['64bit']);
  const blocksCount = b.readUInt32LE(4) + (is64 ? b.readUInt32LE(0x150) * 2 ** 32 : 0);
  const freeBlocksCount = b.readUInt32LE(12) + (is64 ? b.readUInt32LE(0x158) * 2 ** 32 : 0);
  const firstDataBlock = b.readUInt32LE(20);
  const blocksPerGroup = b.readUInt32LE(32);
  const inodesPerGroup = b.readUInt32LE(40);
  const inodesCount = b.readUInt32LE(0);
  const rev = b.readUInt32LE(76);
  const inodeSize = rev === 0 ? 128 : b.readUInt16LE(88);
  const firstIno = rev === 0 ? 11 : b.readUInt32LE(84);
  const descSize = is64 ? b.readUInt16LE(0xfe) : 32;
  const bad = (what: string) => damaged(where, `superblock: ${what}`);
  if (blocksPerGroup === 0 || blocksPerGroup > blockSize * 8) throw bad(`impossible blocks per group ${blocksPerGroup}`);
  if (inodesPerGroup === 0 || inodesPerGroup > blockSize * 8) throw bad(`impossible inodes per group ${inodesPerGroup}`);
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) throw bad(`impossible inode size ${inodeSize}`);
  if (is64 && (descSize < 32 || descSize > 1024 || (descSize & (descSize - 1)) !== 0)) throw bad(`impossible group descriptor size ${descSize}`);
  if (firstDataBlock !== (blockSize === 1024 ? 1 : 0)) throw bad(`first data block ${firstDataBlock} does not fit block size ${blockSize}`);
  if (blocksCount <= firstDataBlock) throw bad(`impossible block count ${blocksCount}`);
  if (blocksCount * blockSize > fsBytes) {
    throw damaged(where, `the filesystem claims ${blocksCount * blockSize} bytes but only ${fsBytes} are there (truncated image or partition)`);
  }
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  if (inodesCount !== groupCount * inodesPerGroup) throw bad(`inode count ${inodesCount} is not ${groupCount} groups x ${inodesPerGroup}`);
  const uuid = Buffer.from(b.subarray(104, 120));
  let label = b.toString('latin1', 120, 136);
  const nul = label.indexOf('\0');
  if (nul >= 0) label = label.slice(0, nul);
  const csumSeed = has(incompat, INCOMPAT.metadata_csum_seed) ? b.readUInt32LE(0x270) : crc32cRaw(0xffffffff, uuid);
  return {
    kind: extKind(compat, incompat, roCompat),
    blockSize,
    blocksCount,
    freeBlocksCount,
    inodesCount,
    firstDataBlock,
    blocksPerGroup,
    inodesPerGroup,
    inodeSize,
    firstIno,
    groupCount,
    descSize,
    reservedGdtBlocks: b.readUInt16LE(0xce),
    firstMetaBg: b.readUInt32LE(0x104),
    backupBgs: [b.readUInt32LE(0x24c), b.readUInt32LE(0x250)],
    compat,
    incompat,
    roCompat,
    features: [...featureNames(COMPAT, compat), ...featureNames(INCOMPAT, incompat), ...featureNames(RO_COMPAT, roCompat)],
    uuid,
    label,
    csumSeed,
    needsRecovery: has(incompat, INCOMPAT.needs_recovery),
    journalInum: b.readUInt32LE(0xe0),
    wantExtraIsize: b.readUInt16LE(0x15c),
  };
}
