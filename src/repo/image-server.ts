// The repository's rules for the qemu-nbd processes that serve its images (the copy room's serveImage): a chain is
// opened as the manifests give it, a leftover qemu-nbd is killed only when it serves files of its chain directory,
// and restores and verifies keep their sockets in private temp directories the next run can sweep.
import { mkdtemp, readdir, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { qemuNbdFiles, serveImage, type ServeOptions, type ServedImage } from '../copy/index.js';
import { pollUntil } from '../util/abort.js';
import { pidAlive } from '../util/process.js';
import { chainSpec } from './chain.js';

/**
 * Kills a qemu-nbd left behind by a killed backup or prune of the chain directory `chainDir`. The pid comes from the
 * repository's in-progress marker, which anyone who can write the repository can forge: only a qemu-nbd (or the
 * setpriv about to exec one) whose command line serves files inside `chainDir` alone is killed. Says what it did.
 */
export async function killStaleQemuNbd(pid: number, chainDir: string): Promise<{ killed: boolean; why: string }> {
  const files = await qemuNbdFiles(pid);
  if (files === undefined) return { killed: false, why: `process ${pid} is not a qemu-nbd` };
  const dir = await realpath(chainDir).catch(() => undefined);
  if (!dir || files.length === 0) return { killed: false, why: `qemu-nbd ${pid} serves no file of ${chainDir}` };
  for (const f of files) {
    // The image itself may be gone (removed as a leftover); its directory says where it was.
    const where = isAbsolute(f) ? await realpath(dirname(f)).catch(() => undefined) : undefined;
    if (where !== dir) return { killed: false, why: `qemu-nbd ${pid} serves ${f}, which is not in ${chainDir}: left alone` };
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return { killed: false, why: `qemu-nbd ${pid} has exited` };
    throw err;
  }
  await pollUntil(() => !pidAlive(pid), `qemu-nbd ${pid} to exit`, { timeoutMs: 10_000, intervalMs: 10 });
  return { killed: true, why: `killed qemu-nbd ${pid}, left serving ${files.join(', ')}` };
}

/**
 * Serves a repository image with the copy room's qemu-nbd endpoint. Given a list of files (top
 * first, see chain.ts), exactly those are opened as the chain, whatever their headers name.
 */
export function serveChain(chain: string | readonly string[], o: ServeOptions): Promise<ServedImage> {
  return serveImage(typeof chain === 'string' ? chain : chainSpec(chain), { ...o, format: 'qcow2' });
}

/** Private temp directories for qemu-nbd sockets: `virtcbt-KIND-PID-XXXXXX`, so that the next run can tell whose they are. */
const RUN_DIR = /^virtcbt-(restore|verify)-(\d+)-[A-Za-z0-9]{6}$/;

export async function makeRunDir(kind: 'restore' | 'verify'): Promise<string> {
  return mkdtemp(join(tmpdir(), `virtcbt-${kind}-${process.pid}-`));
}

/**
 * Removes the temp directories of restores and verifies that were killed (their process is gone);
 * a directory of a live process is left alone. Returns what was removed.
 */
export async function sweepStaleRunDirs(base = tmpdir()): Promise<string[]> {
  const removed: string[] = [];
  for (const e of await readdir(base, { withFileTypes: true }).catch(() => [])) {
    const m = RUN_DIR.exec(e.name);
    if (!m || !e.isDirectory() || pidAlive(Number(m[2]))) continue;
    await rm(join(base, e.name), { recursive: true, force: true }).then(() => removed.push(e.name), () => undefined);
  }
  return removed;
}
