// Image fleecing: a point-in-time, read-only view of a running VM's disks without pausing it.
// A temporary qcow2 overlay backed by the live disk receives, through a `blockdev-backup
// sync=none` job, the old content of every cluster the guest overwrites; reading the overlay
// therefore gives the disk as it was when the job started. The job joins the bitmap rotation
// transaction, so the snapshot and the change set describe the same instant (DESIGN.md).
import { randomBytes } from 'node:crypto';
import { chown, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  QmpCommandError,
  actions,
  blockdevAdd,
  blockdevDel,
  jobCancel,
  queryBlockExports,
  queryJobs,
  queryNamedBlockNodes,
  type BitmapRef,
  type QmpExecutor,
  type TransactionAction,
} from '../qmp/index.js';
import { createQcow2 } from '../qcow2/index.js';
import { addReadOnlyExport, ensureNbdServer, nbdUnixUri, removeExport } from './nbd-server.js';
import { pollUntil } from '../util/abort.js';
import { VirtcbtError, errorMessage } from '../util/errors.js';

/** Every node, job and export virtcbt's fleecing creates starts with this: stale ones are found by it. */
export const FLEECE_PREFIX = 'vcbt-fl-';
/** Null-co nodes that carry a pass's change set as a dirty bitmap (see extent-bitmap.ts). */
export const PASS_MAP_PREFIX = 'vcbt-pm-';

export interface FleeceDisk {
  target: string;
  /** The disk's active format node (the bitmap's node). */
  node: string;
  sizeBytes: number;
}

export interface FleeceOptions {
  qmp: QmpExecutor;
  domain: string;
  /** Directory for the temporary overlays; the QEMU process's user must be able to open files in it. */
  dir: string;
  /** uid/gid the overlay files are given (QEMU under libvirt runs as libvirt-qemu); undefined: leave root's. */
  owner?: { uid: number; gid: number };
  /** Names the nodes, jobs, exports and files; random when not given. At most 8 characters of [a-z0-9]. */
  tag?: string;
  /** Cluster size of the overlays (default 64 KiB, qcow2's). */
  clusterSize?: number;
}

export interface FleeceExport {
  target: string;
  exportName: string;
  uri: string;
  /** The fleecing node read through the export. */
  node: string;
}

export interface ExportOptions {
  /** Export name per disk (default: the node name). */
  name?: (target: string) => string;
  /** Bitmaps to offer as `qemu:dirty-bitmap:NAME` contexts, per disk. */
  bitmaps?: (target: string) => BitmapRef[];
  /** Only these disks (default: all). */
  targets?: string[];
}

/** QEMU node names are at most 31 characters of letters, digits, '-', '.', '_', starting with a letter. */
const NODE_NAME_MAX = 31;

export function fleeceNodeName(tag: string, target: string): string {
  return `${FLEECE_PREFIX}${tag}-${target}`;
}

function tagOf(name: string, prefix: string): string | undefined {
  if (!name.startsWith(prefix)) return undefined;
  const rest = name.slice(prefix.length);
  const dash = rest.indexOf('-');
  return dash > 0 ? rest.slice(0, dash) : undefined;
}

/** The per-domain directory for overlays under the fleecing directory. */
export function domainFleeceDir(dir: string, domain: string): string {
  return join(dir, encodeURIComponent(domain));
}

interface DiskState {
  disk: FleeceDisk;
  node: string;
  job: string;
  file: string;
  added: boolean;
  exportId?: string;
}

/** Fleecing of a set of disks of one QEMU process; `teardown()` undoes every step that was done. */
export class Fleece {
  private readonly states: DiskState[];
  private torn = false;

  private constructor(private readonly o: FleeceOptions, readonly tag: string, disks: FleeceDisk[]) {
    const dir = domainFleeceDir(o.dir, o.domain);
    this.states = disks.map((disk) => {
      const node = fleeceNodeName(tag, disk.target);
      if (node.length + 2 > NODE_NAME_MAX || !/^[A-Za-z][A-Za-z0-9._-]*$/.test(node)) {
        throw new VirtcbtError(`cannot name a fleecing node for disk ${disk.target}: '${node}' is not a valid QEMU node name`, {
          domain: o.domain, disk: disk.target,
        });
      }
      return { disk, node, job: node, file: join(dir, `${tag}-${disk.target}.qcow2`), added: false };
    });
  }

  /**
   * Creates the overlays and attaches them (backing = the disk node). Nothing copies yet: the
   * job starts with `actions()` in the caller's transaction. On failure, undoes what it did.
   */
  static async prepare(o: FleeceOptions, disks: FleeceDisk[]): Promise<Fleece> {
    const f = Fleece.plan(o, disks);
    await f.attach();
    return f;
  }

  /**
   * Names the nodes, job and files without touching QEMU: `actions()` can be built at once and
   * `attach()` run alongside other work (a backup freezes the guest meanwhile).
   */
  static plan(o: FleeceOptions, disks: FleeceDisk[]): Fleece {
    const tag = o.tag ?? randomBytes(4).toString('hex');
    if (!/^[a-z0-9]{1,8}$/.test(tag)) throw new VirtcbtError(`fleece tag '${tag}' must be 1 to 8 of [a-z0-9]`, { domain: o.domain });
    return new Fleece(o, tag, disks);
  }

  /** Creates the overlays and attaches them; on failure undoes what it did and throws. */
  async attach(): Promise<void> {
    try {
      await this.attachAll();
    } catch (err) {
      await this.teardown().catch(() => undefined);
      throw err;
    }
  }

  private async attachAll(): Promise<void> {
    const { o } = this;
    const dir = domainFleeceDir(o.dir, o.domain);
    await mkdir(o.dir, { recursive: true, mode: 0o750 });
    await mkdir(dir, { recursive: true, mode: 0o750 });
    if (o.owner) {
      await chown(o.dir, o.owner.uid, o.owner.gid);
      await chown(dir, o.owner.uid, o.owner.gid);
    }
    const cluster = o.clusterSize ?? 65536;
    // Written by virtcbt itself (src/qcow2): a qemu-img process per overlay cost 30-50 ms here.
    await Promise.all(this.states.map(async (s) => {
      try {
        await createQcow2(s.file, { size: s.disk.sizeBytes, clusterSize: cluster, durable: false });
      } catch (err) {
        throw new VirtcbtError(`cannot create the fleecing overlay ${s.file}: ${errorMessage(err)}`, {
          domain: o.domain, disk: s.disk.target, cause: err, hint: 'Check free space and permissions of the fleecing directory (config fleece.dir)',
        });
      }
      if (o.owner) await chown(s.file, o.owner.uid, o.owner.gid);
    }));
    for (const s of this.states) {
      try {
        await blockdevAdd(o.qmp, {
          driver: 'qcow2',
          'node-name': s.node,
          file: { driver: 'file', filename: s.file },
          backing: s.disk.node,
          // The overlay is scratch space: no host page cache for it, no flushes that wait on disk.
          cache: { direct: false, 'no-flush': true },
        });
        s.added = true;
      } catch (err) {
        throw new VirtcbtError(`attaching the fleecing overlay for disk ${s.disk.target} failed: ${errorMessage(err)}`, {
          domain: o.domain, disk: s.disk.target, cause: err,
          hint: 'QEMU must be able to open files in the fleecing directory (config fleece.dir; owner libvirt-qemu, and allowed by AppArmor where it runs)',
        });
      }
    }
  }

  get disks(): FleeceDisk[] {
    return this.states.map((s) => s.disk);
  }

  nodeOf(target: string): string {
    const s = this.states.find((k) => k.disk.target === target);
    if (!s) throw new VirtcbtError(`no fleecing node for disk ${target}`, { domain: this.o.domain, disk: target });
    return s.node;
  }

  /** The `blockdev-backup sync=none` actions that start copy-before-write: join them to the rotation transaction. */
  actions(): TransactionAction[] {
    // The filter node gets our name too: a killed daemon's leftovers are then recognisable in query output.
    return this.states.map((s) => actions.blockdevBackup({ 'job-id': s.job, device: s.disk.node, target: s.node, sync: 'none', 'filter-node-name': `${s.node}-f` }));
  }

  /** Read-only NBD exports of the fleecing nodes on the process's NBD server. Call after the transaction. */
  async export(nbdSocket: string, opts: ExportOptions = {}): Promise<FleeceExport[]> {
    await ensureNbdServer(this.o.qmp, nbdSocket);
    const out: FleeceExport[] = [];
    for (const s of this.states) {
      if (opts.targets && !opts.targets.includes(s.disk.target)) continue;
      const exportName = opts.name?.(s.disk.target) ?? s.node;
      s.exportId = s.node;
      await addReadOnlyExport(this.o.qmp, { id: s.exportId, node: s.node, name: exportName, bitmaps: opts.bitmaps?.(s.disk.target) });
      out.push({ target: s.disk.target, exportName, node: s.node, uri: nbdUnixUri(nbdSocket, exportName) });
    }
    return out;
  }

  /**
   * Removes exports, cancels the jobs, detaches the overlays and deletes their files. Safe to
   * call more than once and after a partial prepare; every step runs even if an earlier one
   * failed, and the first failure is thrown at the end.
   */
  async teardown(): Promise<void> {
    if (this.torn) return;
    this.torn = true;
    await teardownTag(this.o.qmp, this.o.dir, this.o.domain, this.tag, this.states.map((s) => s.disk.target));
  }
}

/**
 * Tears down every fleecing artefact with `tag` in a QEMU process (exports, jobs, nodes, pass
 * maps) and its files: used by Fleece.teardown and to clean up after a daemon that was killed.
 */
export async function teardownTag(qmp: QmpExecutor, dir: string, domain: string, tag: string, targets?: string[]): Promise<void> {
  const errors: unknown[] = [];
  const step = async (fn: () => Promise<unknown>) => {
    try {
      await fn();
    } catch (err) {
      errors.push(err);
    }
  };
  const mine = (name: string | undefined, prefix = FLEECE_PREFIX) => !!name && tagOf(name, prefix) === tag;
  await step(async () => {
    for (const e of await queryBlockExports(qmp)) {
      if (mine(e.id) || mine(e['node-name']) || mine(e['node-name'], PASS_MAP_PREFIX)) await removeExport(qmp, e.id);
    }
  });
  await step(async () => {
    const jobs = (await queryJobs(qmp)).filter((j) => mine(j.id));
    for (const j of jobs) {
      try {
        await jobCancel(qmp, j.id);
      } catch (err) {
        if (!(err instanceof QmpCommandError) || !/not found|no job/i.test(err.desc)) throw err;
      }
    }
    if (jobs.length > 0) {
      // job-cancel only starts the cancel; the overlay stays in use until the job is gone.
      await pollUntil(async () => !(await queryJobs(qmp)).some((j) => mine(j.id)), `cancelling fleecing jobs of ${domain}`, { timeoutMs: 30_000, intervalMs: 5 });
    }
  });
  await step(async () => {
    for (const n of await queryNamedBlockNodes(qmp)) {
      const name = n['node-name'];
      if (mine(name) || mine(name, PASS_MAP_PREFIX)) await delNode(qmp, name!);
    }
  });
  await step(async () => {
    const d = domainFleeceDir(dir, domain);
    const files = targets ? targets.map((t) => `${tag}-${t}.qcow2`) : (await readdir(d).catch(() => [] as string[])).filter((f) => f.startsWith(`${tag}-`));
    for (const f of files) await rm(join(d, f), { force: true });
  });
  if (errors.length > 0) {
    throw new VirtcbtError(`cleaning up fleecing ${tag} failed: ${errors.map(errorMessage).join('; ')}`, {
      domain, cause: errors[0], hint: 'Run the backup again: it removes what is left of earlier ones',
    });
  }
}

async function delNode(qmp: QmpExecutor, node: string): Promise<void> {
  try {
    await blockdevDel(qmp, node);
  } catch (err) {
    if (err instanceof QmpCommandError && /not found|cannot find/i.test(err.desc)) return;
    throw err;
  }
}

/** Tags of fleecing artefacts present in the QEMU process or the directory. */
export async function fleeceTags(qmp: QmpExecutor, dir: string, domain: string): Promise<Set<string>> {
  const tags = new Set<string>();
  const add = (name: string | undefined) => {
    if (!name) return;
    const t = tagOf(name, FLEECE_PREFIX) ?? tagOf(name, PASS_MAP_PREFIX);
    if (t) tags.add(t);
  };
  for (const e of await queryBlockExports(qmp)) { add(e.id); add(e['node-name']); }
  for (const j of await queryJobs(qmp)) add(j.id);
  for (const n of await queryNamedBlockNodes(qmp)) add(n['node-name']);
  for (const f of await readdir(domainFleeceDir(dir, domain)).catch(() => [] as string[])) {
    const m = /^([a-z0-9]{1,8})-.*\.qcow2$/.exec(f);
    if (m) tags.add(m[1]);
  }
  return tags;
}

/**
 * Removes what killed jobs left behind: every fleecing artefact whose tag is not in `keep` (tags
 * of pass exports still open). Returns the tags removed.
 */
export async function cleanupStaleFleeces(qmp: QmpExecutor, dir: string, domain: string, keep: ReadonlySet<string> = new Set()): Promise<string[]> {
  const stale = [...(await fleeceTags(qmp, dir, domain))].filter((t) => !keep.has(t));
  for (const t of stale) await teardownTag(qmp, dir, domain, t);
  return stale;
}
