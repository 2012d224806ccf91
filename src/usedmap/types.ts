// The shape of a used-block map, whichever way it was made (the image's filesystems read by
// src/fs, or the guest's own GETFSMAP through the agent): byte extents of the disk in use, and
// per region how it was mapped. What could not be mapped counts as used, never as free.
import type { Extent } from '../extent/index.js';

export interface UsedRegion {
  offset: number;
  length: number;
  /** 'ext4 (partition 1)', 'partition table', 'gap before partition 2', 'xfs (partition 2)', ... */
  what: string;
  /** True when the region's used blocks are known; false: the whole region counts as used. */
  mapped: boolean;
  /** Why an unmapped region could not be mapped. */
  why?: string;
}

export interface UsedMap {
  sizeBytes: number;
  /** Sorted, merged byte extents in use (unmapped regions whole). */
  used: Extent[];
  regions: UsedRegion[];
  /** How the map was made. */
  source: 'image' | 'agent';
  elapsedMs: number;
}
