// Directory blocks: linear entries (htree directories read through their leaves, index blocks are empty entries to skip).
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
