// A whole disk's used map: every readable ext2/3/4 filesystem by its bitmaps, everything else (tables, gaps, other filesystems, damage) used, with the reason.
import type { Endpoint } from '../copy/index.js';
import { merge, type Extent } from '../extent/index.js';
import { errorMessage } from '../util/errors.js';
import { detectFilesystem, type FilesystemKind } from './detect.js';
import { FilesystemError } from './errors.js';
import { ExtFilesystem } from './ext/index.js';
import { readPartitions, type Partition, type PartitionTable } from './partitions.js';
import { DiskReader } from './reader.js';

export interface DiskRegion extends Extent {
  /** The partition (0: the whole disk without a table); absent for space outside every partition. */
  partition?: number;
  kind: FilesystemKind | 'partition table' | 'outside partitions' | 'extended';
  /** True when only its used blocks count; false when every byte counts as used. */
  mapped: boolean;
  /** Why an unmapped region counts as used. */
  reason?: string;
}

export interface DiskUsedMap {
  /** Byte extents of the disk that count as used, sorted and merged. */
  used: Extent[];
  regions: DiskRegion[];
  table?: PartitionTable;
}

export interface DiskMapOptions {
  /** Passed to usedExtents(): accept a filesystem whose journal needs recovery (a copy taken without a freeze). */
  trustUnreplayedJournal?: boolean;
  /** For messages: "vm1 vda" and the like. */
  label?: string;
}

/**
 * The used map of a whole disk. Nothing is ever guessed free: a region is mapped only when an
 * ext2/3/4 filesystem there reads cleanly; a table that cannot be read makes the whole disk used.
 */
export async function diskUsedMap(endpoint: Endpoint, opts: DiskMapOptions = {}): Promise<DiskUsedMap> {
  const disk = new DiskReader(endpoint, 0, endpoint.size, opts.label ?? endpoint.name);
  const regions: DiskRegion[] = [];
  const used: Extent[] = [];
  let table: PartitionTable;
  try {
    table = await readPartitions(disk);
  } catch (err) {
    if (!(err instanceof FilesystemError)) throw err;
    const whole = { offset: 0, length: disk.length };
    regions.push({ ...whole, kind: 'partition table', mapped: false, reason: `partition table not readable: ${errorMessage(err)}` });
    return { used: [whole], regions };
  }
  const parts = table.partitions.filter((p) => !p.extended);
  for (const p of parts) {
    const r = await mapPartition(disk, p, table, opts);
    regions.push(...r.regions);
    used.push(...r.used);
  }
  // Everything no partition covers: the table itself, boot loader gaps, unpartitioned space, EBRs.
  const covered = merge(parts.map((p) => ({ offset: p.offset, length: p.length })));
  let at = 0;
  for (const c of [...covered, { offset: disk.length, length: 0 }]) {
    if (c.offset > at) {
      const gap = { offset: at, length: c.offset - at };
      regions.push({ ...gap, kind: at === 0 ? 'partition table' : 'outside partitions', mapped: false, reason: 'outside every partition (partition table, boot loader, unallocated space): kept as it is' });
      used.push(gap);
    }
    at = Math.max(at, c.offset + c.length);
  }
  regions.sort((a, b) => a.offset - b.offset);
  return { used: merge(used), regions, table };
}

/** How the reasons name volume formats (as their tools do): "LVM physical volume is not readable". */
const SHOWN: Partial<Record<FilesystemKind, string>> = { lvm: 'LVM physical volume (LVM2)', luks: 'LUKS container', xfs: 'XFS', btrfs: 'Btrfs', ntfs: 'NTFS', vfat: 'FAT' };

async function mapPartition(disk: DiskReader, p: Partition, table: PartitionTable, opts: DiskMapOptions): Promise<{ regions: DiskRegion[]; used: Extent[] }> {
  const where = table.scheme === 'none' ? disk.label : `${disk.label}, partition ${p.number}`;
  const whole = { offset: p.offset, length: p.length };
  const all = (kind: DiskRegion['kind'], reason: string) => ({ regions: [{ ...whole, partition: p.number, kind, mapped: false, reason }], used: [whole] });
  const part = disk.sub(p.offset, p.length, where);
  const kind = await detectFilesystem(part);
  if (kind !== 'ext2' && kind !== 'ext3' && kind !== 'ext4') {
    return all(kind, kind === 'unknown' ? 'no filesystem virtcbt recognises: kept whole' : `${SHOWN[kind] ?? kind} is not readable by virtcbt: kept whole`);
  }
  try {
    const fs = await ExtFilesystem.open(part, { label: where });
    const extents = await fs.usedExtents({ trustUnreplayedJournal: opts.trustUnreplayedJournal });
    const used = extents.map((e) => ({ offset: e.offset + p.offset, length: e.length }));
    const regions: DiskRegion[] = [{ offset: p.offset, length: fs.byteLength, partition: p.number, kind, mapped: true }];
    // A filesystem smaller than its partition (not grown after the partition was): its tail is not its to map.
    if (fs.byteLength < p.length) {
      const tail = { offset: p.offset + fs.byteLength, length: p.length - fs.byteLength };
      regions.push({ ...tail, partition: p.number, kind: 'outside partitions', mapped: false, reason: `past the end of the ${kind} filesystem in this partition: kept as it is` });
      used.push(tail);
    }
    return { regions, used };
  } catch (err) {
    if (!(err instanceof FilesystemError)) throw err;
    return all(kind, `${kind} not mapped: ${errorMessage(err)}`);
  }
}
