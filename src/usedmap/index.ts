// The used-block map room: which byte ranges of a disk the guest's filesystems use at one instant.
// Here: the guest-agent way (GETFSMAP run in the guest while it holds its own freeze).
export { complement, freeExtents, isFree, parseFsmap, usedExtents, DADDR_BYTES, FsmapParseError, type FsmapRecord } from './fsmap.js';
