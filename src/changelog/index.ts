// The change log room: per-block generations, consumers and passes, persisted in SQLite. Other rooms import only this.
export {
  ChangeLog, ChangeLogCorruptError,
  type BitmapRecord, type BitmapState, type CommitResult, type ConsumerInfo, type DiskChanges, type DiskInfo,
  type DiskSpec, type DiskStatus, type DomainInfo, type DomainStatus, type FoldResult, type NewBitmap, type OpenOptions,
  type PassInfo, type PassState, type RecordableBitmapState, type UpsertDiskResult,
} from './changelog.js';
export { ChangeLogFullError, explainChangeLogError } from './disk-full.js';
export type { ExtentInput } from './extents.js';
export { isLogId, logContinuity, newLogId } from './identity.js';
export { PAGE_BLOCKS } from './page-codec.js';
export { SCHEMA_VERSION } from './schema.js';

/** The change log's file name under the state directory. */
export const CHANGELOG_FILE = 'changelog.db';
