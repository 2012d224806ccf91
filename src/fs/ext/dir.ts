// Directory blocks: linear entries (htree directories read through their leaves, index blocks are empty entries to skip).
import { crc32cRaw } from '../crc.js';
import { damaged } from '../errors.js';

export interface DirEntry {
  name: string;
  ino: number;
  /** The type stored in the entry (filetype feature): 1 file, 2 dir, 7 symlink ...; 0 when not stored. */
  type: number;
}

/** Parses one directory block (or inline data area) into entries; `.` and `..` are kept. */
export function parseDirBlock(b: Buffer, hasFileType: boolean, where: string, ino: number, out: DirEntry[]): void {
  let at = 0;
  while (at < b.length) {
    if (at + 8 > b.length) throw damaged(where, `directory ${ino}: entry header runs past its block at byte ${at}`);
    const entIno = b.readUInt32LE(at);
    const recLen = b.readUInt16LE(at + 4);
    const nameLen = hasFileType ? b[at + 6] : b.readUInt16LE(at + 6);
    // A 64 KiB block stores its full length as 0 (the kernel's rec_len encoding).
    const len = recLen === 0 && b.length === 65536 && at === 0 ? 65536 : recLen;
    if (len < 8 || len % 4 !== 0 || at + len > b.length || (entIno !== 0 && 8 + nameLen > len)) {
      throw damaged(where, `directory ${ino}: corrupt entry at byte ${at} (record length ${recLen}, name length ${nameLen})`);
    }
    if (entIno !== 0 && nameLen > 0) {
      out.push({ name: b.toString('utf8', at + 8, at + 8 + nameLen), ino: entIno, type: hasFileType ? b[at + 7] : 0 });
    }
    at += len;
  }
}

/**
 * metadata_csum: a leaf block ends in a 12-byte fake entry (inode 0, rec_len 12, type 0xDE)
 * holding crc32c(inode seed, the block before it). htree index blocks carry theirs elsewhere and
 * are not checked here (their entries are skipped anyway).
 */
export function checkDirBlock(b: Buffer, seed: number, where: string, ino: number, block: number): void {
  const t = b.length - 12;
  if (b.readUInt32LE(t) !== 0 || b.readUInt16LE(t + 4) !== 12 || b[t + 6] !== 0 || b[t + 7] !== 0xde) return;
  if (crc32cRaw(seed, b, 0, t) !== b.readUInt32LE(t + 8)) {
    throw damaged(where, `directory ${ino}: block ${block} checksum mismatch`);
  }
}
