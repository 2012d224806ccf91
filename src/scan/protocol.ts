// The scanner host's HTTPS API as types: what the hypervisor side sends (POST /v1/scans) and the NDJSON events it reads back.

/** The path a scan job is posted to. */
export const SCAN_PATH = '/v1/scans';
/** The response body's content type: one JSON object per line, the last one of type 'result' (or 'error'). */
export const NDJSON = 'application/x-ndjson';

/** A byte extent as sent on the wire: [offset, length]. */
export type ExtentPair = [number, number];

export interface ScanDisk {
  /** The disk's target name in the domain (vda). */
  target: string;
  /** nbds://HOST:PORT/EXPORT; the scanner reads it with its own client credentials (a tls-certificates parameter here is ignored). */
  uri: string;
  /** The disk's size in bytes (checked against the export's). */
  size: number;
  /** Incremental: the disk's byte extents changed since the scanner's last completed scan. Absent: a full scan of this disk. */
  extents?: ExtentPair[];
}

export interface ScanJob {
  /** The hypervisor's job id (echoed in every event). */
  id: string;
  domain: string;
  disks: ScanDisk[];
  /**
   * For the incremental disks: also scan the regular files whose inode changed at or after this
   * time (Unix seconds, the guest's ctime) though none of their blocks is among the extents (a
   * chmod, a rename, an extent tree pointed at blocks written earlier). Without it, an inode-only
   * change is passed over: a changed 64 KiB of inode table names 256 inodes, most untouched.
   */
  changedSince?: number;
  /**
   * The scanner's owner indexes (which inode owns which block) kept between this hypervisor's
   * scans of the domain, labelled with the states they describe: `next` names this snapshot's
   * state, `base` (incremental) the state the disks' extents start from (virtcbtd: the change
   * log's identity and the scanner consumer's last generation). The scanner brings forward only an
   * index it keeps at `base`, and keeps the result as `next`; any other is dropped and the inode
   * tables are read.
   */
  ownerIndex?: { base?: string; next: string };
}

export interface InfectedFile {
  disk: string;
  /** Partition number (0: a filesystem on the whole disk). */
  partition: number;
  path: string;
  /** The signature name clamd reported. */
  signature: string;
  size: number;
  sha256: string;
}

/** A region the scanner could not read files from: never counted as clean. */
export interface NotScanned {
  disk: string;
  /** Partition number, when the region is one. */
  partition?: number;
  /** Byte range of the region on the disk. */
  offset?: number;
  length?: number;
  /** What is there, as detected: ext4, xfs, lvm, luks, unknown, 'disk' (the export could not be read at all). */
  kind: string;
  /**
   * For a partition table or filesystem the scanner reads (ext2/3/4): 'damaged' (it contradicts
   * itself; it may be whole at the next scan) or 'unsupported' (a feature the scanner lacks).
   */
  problem?: 'damaged' | 'unsupported';
  reason: string;
}

/** Byte ranges of one disk (see ScanResult.unowned), sorted and merged. */
export interface UnownedExtents {
  disk: string;
  extents: ExtentPair[];
}

/**
 * 'clamd limit': clamd itself stopped short of the file's end (a limit of its clamd.conf, reported
 * as Heuristics.Limits.Exceeded.NAME when clamd runs with AlertExceedsMax): not scanned in whole,
 * so neither clean nor infected.
 */
export type SkipReason = 'size limit' | 'count limit' | 'time limit' | 'unreadable' | 'stream limit' | 'clamd limit';

/** A file that was not (fully) scanned, and why. */
export interface SkippedFile {
  disk: string;
  partition: number;
  path: string;
  reason: SkipReason;
  detail?: string;
}

/** The scanner's own limits, or `clamd:NAME` for a limit of clamd's clamd.conf (MaxFileSize, MaxScanSize, ...). */
export type LimitName = 'maxFileBytes' | 'maxFiles' | 'maxSeconds' | 'streamMaxLength' | `clamd:${string}`;

export interface LimitHit {
  limit: LimitName;
  /** The limit's setting; absent for clamd's own (clamd does not tell its configuration). */
  value?: number;
  /** How many files it kept from being scanned. */
  files: number;
}

export interface ScanCounts {
  /** Files whose contents clamd saw in full. */
  files: number;
  /** File bytes streamed to clamd. */
  bytesRead: number;
  /** Bytes read over NBD (metadata and data). */
  nbdBytesRead: number;
  /** Files whose contents were opened (read), scanned or not. */
  filesOpened: number;
}

export interface ScanResult {
  type: 'result';
  id: string;
  domain: string;
  /** 'full' or 'incremental' per disk. */
  modes: Record<string, 'full' | 'incremental'>;
  infected: InfectedFile[];
  scanned: ScanCounts;
  notScanned: NotScanned[];
  skipped: SkippedFile[];
  limitsHit: LimitHit[];
  /** True when everything asked for was read and scanned: no region not scanned, no file skipped. */
  complete: boolean;
  /**
   * Incremental disks: the changed byte ranges inside readable filesystems that no file owned at
   * this snapshot (free blocks; blocks whose owner's metadata was not yet written back). The
   * hypervisor sends them again with the next scan's changes, so a file that comes to own them
   * without their being written again (a crash-consistent snapshot's unreplayed journal, a
   * relinked extent tree) is read then. Absent from older scanners.
   */
  unowned?: UnownedExtents[];
  /**
   * How files reached clamd: by the path of a spool file clamd reads (spooled) or as an INSTREAM
   * stream (streamed), and why not by path when some were streamed. Absent from older scanners.
   */
  clamdHandoff?: { spooled: number; streamed: number; why?: string };
  seconds: number;
}

export type ScanEvent =
  | { type: 'accepted'; id: string; domain: string; disks: number }
  | { type: 'disk'; id: string; disk: string; mode: 'full' | 'incremental'; size: number }
  /**
   * ownersFrom (incremental): whether the changed blocks' owners came from the owner index kept since
   * the last scan, or from reading every inode table; passedOver (with an index): files that only
   * shared changed granules with changed files, their own bytes there unchanged (their digests), not read.
   */
  | { type: 'filesystem'; id: string; disk: string; partition: number; kind: string; files?: number; ownersFrom?: 'owner index' | 'inode tables'; passedOver?: number }
  | { type: 'progress'; id: string; files: number; bytesRead: number; nbdBytesRead: number }
  | { type: 'found'; id: string; file: InfectedFile }
  | ScanResult
  /** The job failed as a whole (bad request after acceptance, clamd gone): no verdict. */
  | { type: 'error'; id: string; message: string; hint?: string };
