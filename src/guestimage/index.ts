// The test guest: a Debian cloud kernel, a busybox initramfs running qemu-ga, and base disks.
// Used by the test rig (test/support) and by `npm run demo`.
export { buildGuestImages, defaultGuestCacheDir, repoRoot, GUEST_APPEND, RECIPE_VERSION, type GuestImages } from './build.js';
export { READY_MARKER, ERROR_MARKER, AGENT_PORT_NAME, DATA_LABEL, XFS_LABEL } from './initramfs.js';
export { DATA_FILES, DATA_SIZE, XFS_SIZE, SCRATCH_SIZE, patternBuffer } from './disks.js';
export { guestDomainXml, QEMU_NS, type GuestDiskSpec, type GuestDomainSpec } from './domain.js';
