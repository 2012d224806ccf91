// QEMU runs one NBD server per process; virtcbt keeps it on a private unix socket per domain and
// adds short-lived read-only exports to it (bitmap reads, fleecing, pass exports). The server is
// started on demand and released once per job (the tracker's domain jobs call releaseNbdServer
// at their end), not after each export: exports of one job may come and go side by side.
import { existsSync } from 'node:fs';
import { pollUntil } from '../util/abort.js';
import { VirtcbtError } from '../util/errors.js';
import {
  QmpCommandError,
  blockExportAddNbd,
  blockExportDel,
  nbdServerStart,
  nbdServerStop,
  queryBlockExports,
  unixAddress,
  type QmpExecutor,
} from '../qmp/index.js';

/** Export ids virtcbt uses (bitmap reads, fleecing, backups, pass exports); any other is someone else's. */
function isOurExport(id: string): boolean {
  return id.startsWith('virtcbt-') || id.startsWith('vcbt-');
}

/**
 * Starts QEMU's NBD server on `socketPath`, or adopts the one a previous virtcbtd started there.
 * The server is QEMU's only one: while another tool uses it (a libvirt backup job, e.g.
 * virtnbdbackup's) it is left alone and the caller gets an error to retry later.
 */
export async function ensureNbdServer(qmp: QmpExecutor, socketPath: string): Promise<void> {
  try {
    await nbdServerStart(qmp, { addr: unixAddress(socketPath) });
  } catch (err) {
    if (!(err instanceof QmpCommandError) || !/already running/i.test(err.desc)) throw err;
    const foreign = (await queryBlockExports(qmp)).filter((e) => !isOurExport(e.id));
    if (foreign.length > 0) {
      throw new VirtcbtError(`QEMU's NBD server is in use by another tool (exports ${foreign.map((e) => e.id).join(', ')}, e.g. a libvirt backup job)`, {
        hint: 'Run again once that backup has finished; virtcbt never stops another tool\'s NBD server',
      });
    }
    // Ours from before a daemon restart when the socket is where we put it; otherwise restart it.
    if (existsSync(socketPath)) return;
    await nbdServerStop(qmp);
    await nbdServerStart(qmp, { addr: unixAddress(socketPath) });
  }
}

/**
 * Stops the NBD server once no export is left on it, so that other tools that need QEMU's one
 * NBD server (libvirt's backup jobs) find it free between virtcbt's jobs. Leaves a server alone
 * that still has exports (a pass export held open, or another tool's).
 */
export async function releaseNbdServer(qmp: QmpExecutor): Promise<void> {
  if ((await queryBlockExports(qmp)).length > 0) return;
  try {
    await nbdServerStop(qmp);
  } catch (err) {
    if (!(err instanceof QmpCommandError) || !/not running/i.test(err.desc)) throw err;
  }
}

export interface ExportSpec {
  id: string;
  node: string;
  name: string;
  bitmaps?: (string | { node: string; name: string })[];
}

/** Adds a read-only export, replacing a stale one with the same id (left by a killed daemon). */
export async function addReadOnlyExport(qmp: QmpExecutor, spec: ExportSpec): Promise<void> {
  const existing = await queryBlockExports(qmp);
  if (existing.some((e) => e.id === spec.id)) await blockExportDel(qmp, spec.id, 'hard');
  await blockExportAddNbd(qmp, {
    id: spec.id,
    'node-name': spec.node,
    name: spec.name,
    writable: false,
    bitmaps: spec.bitmaps,
  });
}

/**
 * Removes an export and waits until QEMU has let go of it: block-export-del only starts the
 * removal, and the exported bitmap stays busy (cannot be removed) until it completes. Polling
 * query-block-exports works through any executor, the BLOCK_EXPORT_DELETED event only on ours.
 */
export async function removeExport(qmp: QmpExecutor, id: string, timeoutMs = 30_000): Promise<void> {
  try {
    await blockExportDel(qmp, id, 'hard');
  } catch (err) {
    if (!(err instanceof QmpCommandError) || !/not found|no export|cannot find|doesn't exist/i.test(err.desc)) throw err;
  }
  await pollUntil(async () => !(await queryBlockExports(qmp)).some((e) => e.id === id), `removing NBD export ${id}`, {
    timeoutMs,
    intervalMs: 10,
  });
}

export function nbdUnixUri(socketPath: string, exportName: string): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${encodeURIComponent(socketPath)}`;
}
