// The control API's form of one disk's changes: the change log's extents as the [offset, length]
// pairs the API has always sent (`virtcbt changes --json`, `pass begin --json`), with their total.
import type { DiskChanges } from '../changelog/index.js';
import { toPairs, totalBytes } from '../extent/index.js';
import type { DiskChangesReply } from './api-types.js';

export function diskChangesReply(d: DiskChanges): DiskChangesReply {
  // Key order is the JSON's: scripts may compare the output byte for byte.
  return {
    target: d.target, blockSize: d.blockSize, sizeBytes: d.sizeBytes, full: d.full, reason: d.reason,
    extents: toPairs(d.extents), changedBytes: totalBytes(d.extents),
  };
}
