// The filesystem room's error: a disk whose partition table or filesystem cannot be read as it claims to be.
import { VirtcbtError, type ErrorContext } from '../util/errors.js';

/**
 * `damaged`: the structures contradict themselves or point outside the disk (a used map or a file
 * list from them would be wrong); `unsupported`: valid, but a format or feature this reader does
 * not know. Callers treat both as "not mapped": every byte counts as used, nothing as scanned.
 */
export type FilesystemProblem = 'damaged' | 'unsupported';

export class FilesystemError extends VirtcbtError {
  constructor(
    readonly problem: FilesystemProblem,
    message: string,
    ctx: ErrorContext = {},
  ) {
    super(message, {
      hint:
        problem === 'damaged'
          ? 'check the image with e2fsck -fn (or the partition table with sfdisk -V); virtcbt counts all of it as used until then'
          : 'virtcbt counts all of it as used and scans none of it',
      ...ctx,
    });
  }
}

export function damaged(where: string, what: string, cause?: unknown): FilesystemError {
  return new FilesystemError('damaged', `${where}: ${what}`, cause === undefined ? {} : { cause });
}

export function unsupported(where: string, what: string): FilesystemError {
  return new FilesystemError('unsupported', `${where}: ${what}`);
}
