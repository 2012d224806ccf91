// Parses what `xfs_io -r -c fsmap MOUNTPOINT` prints (GETFSMAP, ext4 and XFS) into free and used
// byte extents of the filesystem's device.
import { merge, subtract, type Extent } from '../extent/index.js';
import { VirtcbtError } from '../util/errors.js';

/** GETFSMAP reports in 512-byte "daddr" units whatever the filesystem's block size. */
export const DADDR_BYTES = 512;

export interface FsmapRecord {
  /** "major:minor" of the device the record is on (XFS may list a log or realtime device too). */
  device: string;
  /** Byte offset on that device. */
  offset: number;
  length: number;
  /** What xfs_io prints for the owner: "free space", "inodes", "inode 131 0..7", "special 102:1"... */
  owner: string;
}

export class FsmapParseError extends VirtcbtError {}

// xfs_io 6.1 without -v: "\tN: MAJ:MIN [FIRST..LAST]: OWNER LENGTH", FIRST/LAST/LENGTH in daddr.
// (-d/-l/-r are not used: with -d xfs_io asks for XFS's data device number and ext4 answers EINVAL.)
const LINE = /^\s*(\d+): (\d+):(\d+) \[(\d+)\.\.(\d+)\]: (.+) (\d+)$/;

export function parseFsmap(text: string): FsmapRecord[] {
  const out: FsmapRecord[] = [];
  let n = 0;
  for (const raw of text.split('\n')) {
    n++;
    if (raw.trim() === '') continue;
    const m = LINE.exec(raw);
    if (!m) throw new FsmapParseError(`fsmap output line ${n} is not a GETFSMAP record: ${JSON.stringify(raw.slice(0, 120))}`);
    const first = Number(m[4]);
    const last = Number(m[5]);
    const len = Number(m[7]);
    // The printed length must agree with the range, or the line is not what this parser thinks it is.
    if (!Number.isSafeInteger(first * DADDR_BYTES) || last < first || last - first + 1 !== len) {
      throw new FsmapParseError(`fsmap output line ${n} has a range that does not match its length: ${JSON.stringify(raw.slice(0, 120))}`);
    }
    out.push({ device: `${m[2]}:${m[3]}`, offset: first * DADDR_BYTES, length: len * DADDR_BYTES, owner: m[6] });
  }
  return out;
}

export const isFree = (r: FsmapRecord): boolean => r.owner === 'free space';

/** Free byte extents of `device`, merged. */
export function freeExtents(records: readonly FsmapRecord[], device: string): Extent[] {
  return merge(records.filter((r) => r.device === device && isFree(r)));
}

/**
 * Used byte extents of a device of `size` bytes: everything the map does not call free, so space
 * the map leaves out (past the filesystem's end, a record GETFSMAP skipped) counts as used.
 */
export function usedExtents(records: readonly FsmapRecord[], device: string, size: number): Extent[] {
  return complement(freeExtents(records, device), size);
}

/** [0, size) minus `extents`. */
export function complement(extents: readonly Extent[], size: number): Extent[] {
  return subtract([{ offset: 0, length: size }], merge(extents));
}
