// The used-block map room: which byte ranges of a disk the guest's filesystems use at one instant,
// from the image (the filesystem room reads the snapshot) or from the guest (GETFSMAP read in the
// guest while it holds its own freeze). Whatever cannot be mapped counts as used.
export type { UsedMap, UsedRegion } from './types.js';
export { usedMapFromImage, type ImageMapOptions } from './image.js';
export { usedMapFromCapture } from './from-agent.js';
export { complement, freeExtents, isFree, parseFsmap, usedExtents, DADDR_BYTES, FsmapParseError, type FsmapRecord } from './fsmap.js';
export { AgentMapFreezer, agentDiskUsedMap, type AgentFreezerOptions, type FilesystemMap, type FrozenCapture } from './agent.js';
export { guestFilesystems, diskAddressesFromXml, partitionParent, targetOf, type DiskAddressEntry, type GuestFilesystem } from './guest-fs.js';
export { FREEZE_SCRIPT, parseScriptReport, type ScriptReport } from './freeze-script.js';
