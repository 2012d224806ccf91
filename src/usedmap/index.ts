// The used-block map room: which byte ranges of a disk the guest's filesystems use at one instant.
// Here: the guest-agent way (GETFSMAP read in the guest while it holds its own freeze).
export { complement, freeExtents, isFree, parseFsmap, usedExtents, DADDR_BYTES, FsmapParseError, type FsmapRecord } from './fsmap.js';
export { AgentMapFreezer, diskUsedMap, type AgentFreezerOptions, type FilesystemMap, type FrozenCapture } from './agent.js';
export { guestFilesystems, diskAddressesFromXml, partitionParent, targetOf, type DiskAddressEntry, type GuestFilesystem } from './guest-fs.js';
export { FREEZE_SCRIPT, parseScriptReport, type ScriptReport } from './freeze-script.js';
