// A UsedMap of one disk from the guest agent's capture (agent.ts): the free space GETFSMAP
// reported for the filesystems on that disk, everything else used; a filesystem that could not be
// mapped or placed is named with why.
import type { FrozenCapture } from './agent.js';
import { agentDiskUsedMap } from './agent.js';
import type { UsedMap, UsedRegion } from './types.js';

export function usedMapFromCapture(capture: FrozenCapture, disk: { target: string; sizeBytes: number }, elapsedMs = 0): UsedMap {
  const m = agentDiskUsedMap(capture, { target: disk.target, size: disk.sizeBytes });
  const regions: UsedRegion[] = capture.filesystems
    .filter((f) => f.target === disk.target)
    .map((f) => ({ offset: f.offset, length: f.size, what: `${f.type} at ${f.mountpoint} (${f.device})`, mapped: f.mapped, why: f.reason ?? f.problem }));
  for (const u of m.unmapped) {
    if (!regions.some((r) => r.what.includes(` at ${u.mountpoint} `))) regions.push({ offset: 0, length: 0, what: u.mountpoint, mapped: false, why: u.reason });
  }
  if (regions.length === 0) regions.push({ offset: 0, length: disk.sizeBytes, what: 'whole disk', mapped: false, why: 'the guest has no mounted filesystem on this disk' });
  return { sizeBytes: disk.sizeBytes, used: m.used, regions, source: 'agent', elapsedMs };
}
