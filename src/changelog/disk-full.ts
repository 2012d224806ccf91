// SQLite's bare "database or disk is full" (SQLITE_FULL) turned into an error that names the
// change log's file and the admin's next step.
import { dirname } from 'node:path';
import { VirtcbtError } from '../util/errors.js';

export class ChangeLogFullError extends VirtcbtError {}

/** `err` itself, unless it (or a cause of it) is SQLITE_FULL: then a ChangeLogFullError naming `path`. */
export function explainChangeLogError(err: unknown, path: string): unknown {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code !== 'SQLITE_FULL') continue;
    const dir = dirname(path);
    const ctx = err instanceof VirtcbtError ? { domain: err.domain, disk: err.disk } : {};
    return new ChangeLogFullError(`the change log ${path} cannot grow: the filesystem holding it is full (${(err as Error).message})`, {
      ...ctx,
      hint: `Free space on the filesystem of ${dir} (see \`df -h ${dir}\`), then retry; the failed write changed nothing in the change log, and QEMU's dirty bitmaps keep recording meanwhile`,
      cause: err,
    });
  }
  return err;
}
