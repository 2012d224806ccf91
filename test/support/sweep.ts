// Removes what crashed test runs left in the temp directory: rig directories whose owning test
// process is gone, and the QEMU or storage daemon still running from them.
import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pidAlive } from '../../src/util/process.js';

/** Prefixes of the per-resource directories the rig creates under os.tmpdir(). */
export const RIG_PREFIXES = ['virtcbt-qemu-', 'virtcbt-qsd-'];
/** File in a rig directory holding the pid of the test process that owns it. */
export const OWNER_FILE = 'owner.pid';
/** File in a rig directory holding the pid of the process it runs (QEMU's -pidfile). */
export const CHILD_PID_FILE = 'child.pid';

export { pidAlive };

async function readPid(path: string): Promise<number | undefined> {
  const n = Number((await readFile(path, 'utf8').catch(() => '')).trim());
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

export async function sweepStaleRigDirs(base = tmpdir()): Promise<string[]> {
  const swept: string[] = [];
  for (const name of await readdir(base).catch(() => [] as string[])) {
    if (!RIG_PREFIXES.some((p) => name.startsWith(p))) continue;
    const dir = join(base, name);
    const owner = await readPid(join(dir, OWNER_FILE));
    if (owner !== undefined && pidAlive(owner)) continue;
    if (owner === undefined && !existsSync(join(dir, CHILD_PID_FILE))) continue; // being set up right now, or not ours
    const child = await readPid(join(dir, CHILD_PID_FILE));
    if (child !== undefined && pidAlive(child)) {
      // Only kill a process that really was started from this directory (pids get reused).
      const cmdline = await readFile(`/proc/${child}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(dir)) {
        try { process.kill(child, 'SIGKILL'); } catch { /* gone meanwhile */ }
      }
    }
    await rm(dir, { recursive: true, force: true });
    swept.push(dir);
  }
  return swept;
}
