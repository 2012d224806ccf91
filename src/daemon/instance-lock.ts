// One virtcbtd per state directory: an exclusive lock held for the daemon's lifetime, so that a
// second one started on the same configuration refuses to start instead of taking over its socket.
import Database from 'better-sqlite3';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { VirtcbtError } from '../util/errors.js';

/** Another virtcbtd holds the lock (or answers on the socket): this one must not start. */
export class AlreadyRunningError extends VirtcbtError {}

export interface InstanceLock {
  /** The pid file beside the lock, for the admin and for the refusal message. */
  pidFile: string;
  release(): void;
}

/**
 * Takes `STATE_DIR/virtcbtd.lock`. Node has no flock(); SQLite's exclusive lock is a POSIX
 * record lock the kernel drops when the process dies, however it dies, so a lock left by a
 * killed daemon is never stale and needs no takeover logic, and two daemons starting at the
 * same instant cannot both win. The lock file holds no data.
 */
export function takeInstanceLock(stateDir: string, socket: string): InstanceLock {
  const file = join(stateDir, 'virtcbtd.lock');
  const pidFile = join(stateDir, 'virtcbtd.pid');
  const db = new Database(file, { timeout: 0 });
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    // The first write takes the exclusive lock; EXCLUSIVE mode keeps it until the file is closed.
    db.exec('BEGIN EXCLUSIVE');
  } catch (cause) {
    db.close();
    if ((cause as { code?: string }).code !== 'SQLITE_BUSY') {
      throw new VirtcbtError(`cannot take the daemon lock ${file}: ${(cause as Error).message}`, {
        cause, hint: 'Check that the state directory is writable by virtcbtd',
      });
    }
    const pid = readPid(pidFile);
    throw new AlreadyRunningError(`another virtcbtd${pid ? ` (pid ${pid})` : ''} is running on this configuration (it holds ${file})`, {
      cause, hint: `Use that one (its socket is ${socket}), or stop it first`,
    });
  }
  writeFileSync(pidFile, `${process.pid}\n`);
  return {
    pidFile,
    release: () => {
      // Only our own pid file goes; the lock goes with the connection.
      if (readPid(pidFile) === process.pid) writeFileSync(pidFile, '');
      db.close();
    },
  };
}

function readPid(file: string): number | undefined {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}
