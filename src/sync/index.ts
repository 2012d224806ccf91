// The sync room (patent US8694746): keep a second copy of a disk up to date with only the blocks
// modified since its last sync and in use by the guest's filesystems now.
export { runSync, type SyncContext, type SyncDeps, type SyncEvent, type SyncRequest, type SyncResult } from './sync.js';
export { planSync, type SyncPlan, type SyncPlanInput } from './plan.js';
export { SyncRecords, type SyncRecord } from './record.js';
export { sweepInterruptedSyncs } from './interrupted.js';
export { syncStatus, type ConfiguredSync, type SyncTargetStatus } from './status.js';
export { describeTarget, displayUri, identityChange, isSyncConsumer, parseTarget, seedPinName, seedPinOwner, syncConsumerName, targetKey, type SyncTarget, type TargetIdentity } from './target.js';
export { serveSyncTarget, imageHolders, type SyncTarget as ServedSyncTarget, type SyncTargetOptions } from './receiver.js';
