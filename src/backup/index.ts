// The backup room: the backup job virtcbtd runs for a domain and consumer, and its events.
export { runBackup, BACKUP_STEPS, type BackupContext, type BackupDeps, type BackupStep } from './backup.js';

export type { BackupEvent, BackupRequest, BackupResult, DiskPlan, DiskResult, Emit, StepTiming } from './events.js';
export { isNoSpace } from '../copy/index.js';
