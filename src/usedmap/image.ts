// The used-block map of a disk read from its image (a snapshot's export, or a stopped domain's
// image) by the filesystem room's whole-disk map (src/fs/disk-map.ts): ext2/3/4 by their bitmaps,
// every other region (partition tables, gaps, swap, XFS, LVM, damaged filesystems) used, with why.
import type { Endpoint } from '../copy/index.js';
import { diskUsedMap } from '../fs/index.js';
import type { UsedMap } from './types.js';

export interface ImageMapOptions {
  /** For messages: "domain vm1, disk vda". */
  label?: string;
  /** The image was not frozen when taken (a stopped domain that crashed): trust bitmaps whose journal needs replay. */
  trustUnreplayedJournal?: boolean;
}

export async function usedMapFromImage(endpoint: Endpoint, o: ImageMapOptions = {}): Promise<UsedMap> {
  const t0 = performance.now();
  const m = await diskUsedMap(endpoint, { label: o.label, trustUnreplayedJournal: o.trustUnreplayedJournal });
  return {
    sizeBytes: endpoint.size,
    used: m.used,
    regions: m.regions.map((r) => ({
      offset: r.offset, length: r.length, mapped: r.mapped, why: r.reason,
      what: `${r.kind}${r.partition === undefined ? '' : r.partition === 0 ? ' (whole disk)' : ` (partition ${r.partition})`}`,
    })),
    source: 'image',
    elapsedMs: Math.round(performance.now() - t0),
  };
}
