// Typed wrappers for the QMP commands virtcbt uses, as free functions over any QmpExecutor, plus finding a disk's node.
import type { ExecuteOptions, QmpExecutor } from './client.js';
import type {
  BitmapRef,
  BlockDeviceInfo,
  BlockDirtyBitmapAddArgs,
  BlockDirtyBitmapArgs,
  BlockDirtyBitmapMergeArgs,
  BlockDirtyInfo,
  BlockExportInfo,
  BlockInfo,
  BlockdevBackupArgs,
  JobInfo,
  SocketAddressLegacy,
  StatusInfo,
} from './types.js';

type Opts = ExecuteOptions | undefined;

// Object literals with optional fields become QMP arguments; `undefined` must not reach the wire as a
// key (JSON.stringify drops it, but a summary in an error would show it), so strip it here.
function args(obj: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined));
}

// ---- block devices and nodes -------------------------------------------------------------

export function queryBlock(qmp: QmpExecutor, opts?: Opts): Promise<BlockInfo[]> {
  return qmp.execute<BlockInfo[]>('query-block', undefined, opts);
}

/** Every node, one entry each (`flat: true`: no nested backing-image chains). */
export function queryNamedBlockNodes(qmp: QmpExecutor, opts?: Opts): Promise<BlockDeviceInfo[]> {
  return qmp.execute<BlockDeviceInfo[]>('query-named-block-nodes', { flat: true }, opts);
}

/** blockdev-add takes the whole BlockdevOptions union; virtcbt passes it through as built by the caller. */
export async function blockdevAdd(
  qmp: QmpExecutor,
  options: { driver: string; 'node-name'?: string; [key: string]: unknown },
  opts?: Opts,
): Promise<void> {
  await qmp.execute('blockdev-add', args(options), opts);
}

export async function blockdevDel(qmp: QmpExecutor, nodeName: string, opts?: Opts): Promise<void> {
  await qmp.execute('blockdev-del', { 'node-name': nodeName }, opts);
}

// ---- dirty bitmaps ----------------------------------------------------------------------

export async function blockDirtyBitmapAdd(qmp: QmpExecutor, a: BlockDirtyBitmapAddArgs, opts?: Opts): Promise<void> {
  await qmp.execute('block-dirty-bitmap-add', args(a), opts);
}

export async function blockDirtyBitmapRemove(qmp: QmpExecutor, a: BlockDirtyBitmapArgs, opts?: Opts): Promise<void> {
  await qmp.execute('block-dirty-bitmap-remove', args(a), opts);
}

export async function blockDirtyBitmapEnable(qmp: QmpExecutor, a: BlockDirtyBitmapArgs, opts?: Opts): Promise<void> {
  await qmp.execute('block-dirty-bitmap-enable', args(a), opts);
}

export async function blockDirtyBitmapDisable(qmp: QmpExecutor, a: BlockDirtyBitmapArgs, opts?: Opts): Promise<void> {
  await qmp.execute('block-dirty-bitmap-disable', args(a), opts);
}

export async function blockDirtyBitmapClear(qmp: QmpExecutor, a: BlockDirtyBitmapArgs, opts?: Opts): Promise<void> {
  await qmp.execute('block-dirty-bitmap-clear', args(a), opts);
}

export async function blockDirtyBitmapMerge(qmp: QmpExecutor, a: BlockDirtyBitmapMergeArgs, opts?: Opts): Promise<void> {
  await qmp.execute('block-dirty-bitmap-merge', args(a), opts);
}

// ---- NBD server and exports ---------------------------------------------------------------

export function unixAddress(path: string): SocketAddressLegacy {
  return { type: 'unix', data: { path } };
}

export function inetAddress(host: string, port: number): SocketAddressLegacy {
  return { type: 'inet', data: { host, port: String(port) } };
}

export interface NbdServerStartArgs {
  /** QEMU 7.2 takes the legacy form here: `{type, data: {...}}`; see unixAddress / inetAddress. */
  addr: SocketAddressLegacy;
  'tls-creds'?: string;
  'tls-authz'?: string;
  'max-connections'?: number;
}

export async function nbdServerStart(qmp: QmpExecutor, a: NbdServerStartArgs, opts?: Opts): Promise<void> {
  await qmp.execute('nbd-server-start', args(a), opts);
}

export async function nbdServerStop(qmp: QmpExecutor, opts?: Opts): Promise<void> {
  await qmp.execute('nbd-server-stop', undefined, opts);
}

/** block-export-add for NBD (BlockExportOptionsNbd). An exported bitmap must be disabled when the export is read-only. */
export interface NbdExportArgs {
  id: string;
  'node-name': string;
  /** Export name clients ask for; defaults to the node name. */
  name?: string;
  description?: string;
  writable?: boolean;
  bitmaps?: BitmapRef[];
  'allocation-depth'?: boolean;
}

export async function blockExportAddNbd(qmp: QmpExecutor, a: NbdExportArgs, opts?: Opts): Promise<void> {
  await qmp.execute('block-export-add', args({ type: 'nbd', ...a }), opts);
}

/** `mode: 'hard'` drops connected clients; 'safe' (QEMU's default) refuses while clients are connected. */
export async function blockExportDel(qmp: QmpExecutor, id: string, mode?: 'safe' | 'hard', opts?: Opts): Promise<void> {
  await qmp.execute('block-export-del', args({ id, mode }), opts);
}

export function queryBlockExports(qmp: QmpExecutor, opts?: Opts): Promise<BlockExportInfo[]> {
  return qmp.execute<BlockExportInfo[]>('query-block-exports', undefined, opts);
}

// ---- jobs ---------------------------------------------------------------------------------

/** Starts a backup job; completion is reported by events (JOB_STATUS_CHANGE, BLOCK_JOB_COMPLETED) and query-jobs. */
export async function blockdevBackup(qmp: QmpExecutor, a: BlockdevBackupArgs, opts?: Opts): Promise<void> {
  await qmp.execute('blockdev-backup', args(a), opts);
}

export function queryJobs(qmp: QmpExecutor, opts?: Opts): Promise<JobInfo[]> {
  return qmp.execute<JobInfo[]>('query-jobs', undefined, opts);
}

export async function jobCancel(qmp: QmpExecutor, id: string, opts?: Opts): Promise<void> {
  await qmp.execute('job-cancel', { id }, opts);
}

export async function jobDismiss(qmp: QmpExecutor, id: string, opts?: Opts): Promise<void> {
  await qmp.execute('job-dismiss', { id }, opts);
}

// ---- QOM objects (TLS credentials, authz) ---------------------------------------------------

/** object-add is flat in QEMU 7.2: properties sit beside `qom-type` and `id`. */
export async function objectAdd(
  qmp: QmpExecutor,
  object: { 'qom-type': string; id: string; [prop: string]: unknown },
  opts?: Opts,
): Promise<void> {
  await qmp.execute('object-add', args(object), opts);
}

export async function objectDel(qmp: QmpExecutor, id: string, opts?: Opts): Promise<void> {
  await qmp.execute('object-del', { id }, opts);
}

// ---- run state, network link, lifetime ------------------------------------------------------

export function queryStatus(qmp: QmpExecutor, opts?: Opts): Promise<StatusInfo> {
  return qmp.execute<StatusInfo>('query-status', undefined, opts);
}

/** Pauses the guest's vCPUs (STOP event). */
export async function stop(qmp: QmpExecutor, opts?: Opts): Promise<void> {
  await qmp.execute('stop', undefined, opts);
}

/** Resumes the guest's vCPUs (RESUME event). */
export async function cont(qmp: QmpExecutor, opts?: Opts): Promise<void> {
  await qmp.execute('cont', undefined, opts);
}

/** Sets a NIC's link up or down; `name` is the device id or the netdev id. */
export async function setLink(qmp: QmpExecutor, name: string, up: boolean, opts?: Opts): Promise<void> {
  await qmp.execute('set_link', { name, up }, opts);
}

/** Asks QEMU to exit; it answers, then closes the connection. */
export async function quit(qmp: QmpExecutor, opts?: Opts): Promise<void> {
  await qmp.execute('quit', undefined, opts);
}

/** HMP through QMP, for the few things QMP lacks; the output is free text meant for humans. */
export function humanMonitorCommand(qmp: QmpExecutor, commandLine: string, opts?: Opts): Promise<string> {
  return qmp.execute<string>('human-monitor-command', { 'command-line': commandLine }, opts);
}

// ---- finding a disk -----------------------------------------------------------------------

/** A disk of a running QEMU as virtcbt addresses it. */
export interface DiskNode {
  /** The node attached to the device: the format node (libvirt: `libvirt-N-format`) of the active layer. */
  node: string;
  /** The device path, e.g. `/machine/peripheral/virtio-disk0/virtio-backend`; '' if QEMU reports none. */
  qdev: string;
  /** The legacy drive name; '' with -blockdev. */
  device: string;
  format: string;
  virtualSize: number;
  bitmaps: BlockDirtyInfo[];
  info: BlockInfo;
}

/** The device id in a qdev path: `/machine/peripheral/vda/virtio-backend` → `vda`. */
export function qdevId(qdev: string): string | undefined {
  const m = /^\/machine\/peripheral(?:-anon)?\/([^/]+)/.exec(qdev);
  return m ? m[1] : undefined;
}

/**
 * Finds a disk in query-block output by, in order: device id (the `id=` of -device, libvirt's
 * alias such as `virtio-disk0`), full qdev path, legacy drive name, or node name. With -blockdev
 * `device` is empty, so the qdev is what identifies a disk. Returns undefined when no disk
 * matches or the disk has no medium.
 */
export function findDisk(blocks: BlockInfo[], disk: string): DiskNode | undefined {
  const matchers: ((b: BlockInfo) => boolean)[] = [
    (b) => !!b.qdev && qdevId(b.qdev) === disk,
    (b) => b.qdev === disk,
    (b) => b.device !== '' && b.device === disk,
    (b) => b.inserted?.['node-name'] === disk,
  ];
  for (const m of matchers) {
    const b = blocks.find(m);
    if (!b) continue;
    const ins = b.inserted;
    if (!ins || !ins['node-name']) return undefined;
    return {
      node: ins['node-name'],
      qdev: b.qdev ?? '',
      device: b.device,
      format: ins.drv,
      virtualSize: ins.image['virtual-size'],
      bitmaps: ins['dirty-bitmaps'] ?? [],
      info: b,
    };
  }
  return undefined;
}

/** query-block, then findDisk. */
export async function queryDisk(qmp: QmpExecutor, disk: string, opts?: Opts): Promise<DiskNode | undefined> {
  return findDisk(await queryBlock(qmp, opts), disk);
}
