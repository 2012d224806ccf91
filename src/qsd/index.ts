// qemu-storage-daemon room: opening a stopped domain's images for QMP and NBD.
export * from './storage-daemon.js';
