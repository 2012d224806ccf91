// The reconciler room: folds QEMU's dirty bitmaps into the change log, and recovers after crashes.
export { Reconciler, RECONCILE_STEPS, BITMAP_PREFIX, bitmapName, bitmapSeq, type TrackedDisk, type DirtyExtentReader, type ReconcileStep, type DiskFoldResult, type RotateResult, type FrozenBitmap } from './reconciler.js';
export { libvirtDisks, storageDaemonDisks } from './disks.js';
export { readDirtyExtents } from './read-dirty.js';
export { allocatedExtents } from './allocation.js';
