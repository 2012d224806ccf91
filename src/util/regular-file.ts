// Reading a file that someone else may have put in our way (a repository, the hook spool): never
// through a symlink at its name, never blocking on a FIFO, never a file too big to hold, and the
// kind of whatever stands there instead, said the same way everywhere.
import { constants, type BigIntStats, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';

/** "a symlink", "a directory", ...: what stands at a path instead of a regular file. */
export function fileKind(st: Stats | BigIntStats): string {
  if (st.isFile()) return 'a regular file';
  if (st.isSymbolicLink()) return 'a symlink';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

/** What is at the path instead of a readable regular file: `what` says it ("a symlink", "a file of N bytes"). */
export class NotRegularFileError extends Error {
  constructor(readonly path: string, readonly what: string) {
    super(`${path} is ${what}, not a regular file virtcbt wrote`);
  }
}

/**
 * The text of the regular file at `path` and the stat of what was read: opened without following
 * a symlink and without blocking, then fstat'ed (the open file must be a regular file of at most
 * `maxBytes`). Anything else is a NotRegularFileError; a missing file is the usual ENOENT.
 */
export async function readRegularFile(path: string, maxBytes: number): Promise<{ text: string; stat: BigIntStats }> {
  const { bytes, stat } = await readRegularFileBytes(path, maxBytes);
  return { text: bytes.toString('utf8'), stat };
}

/** As readRegularFile, the bytes. */
export async function readRegularFileBytes(path: string, maxBytes: number): Promise<{ bytes: Buffer; stat: BigIntStats }> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw new NotRegularFileError(path, 'a symlink (never followed)');
    throw err;
  }
  try {
    const st = await fh.stat({ bigint: true });
    if (!st.isFile()) throw new NotRegularFileError(path, fileKind(st));
    if (st.size > BigInt(maxBytes)) throw new NotRegularFileError(path, `a file of ${st.size} bytes (more than ${maxBytes})`);
    return { bytes: await fh.readFile(), stat: st };
  } finally {
    await fh.close();
  }
}
