// Replacing a small state file so that a reader, a kill or a power cut finds the old one or the new
// one, never half of either: a temp file beside it (named with a leading dot, which readers of those
// directories skip), fsynced, renamed over it, and the directory fsynced so the rename lasts. A file
// that must be made only once (a secret) is linked into place instead: whoever comes second gets
// EEXIST, and nobody ever sees it half written.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { link, mkdir, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Writes `text` (or bytes) to `path` atomically and durably, mode 0600; the directory is made (mode
 * 0700) when missing. `exclusive`: fails with EEXIST when `path` exists rather than replacing it.
 */
export async function writeFileAtomically(path: string, text: string | Uint8Array, opts: { exclusive?: boolean } = {}): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.${basename(path)}.${randomBytes(4).toString('hex')}`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  if (opts.exclusive) {
    try {
      await link(tmp, path);
    } finally {
      await rm(tmp, { force: true });
    }
  } else {
    await rename(tmp, path);
  }
  const d = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
