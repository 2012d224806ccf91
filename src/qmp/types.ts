// QAPI shapes of QEMU 7.2 that virtcbt reads or sends (qapi/block-core.json, block-export.json, job.json, run-state.json).

/** job.json JobStatus. */
export type JobStatus =
  | 'undefined'
  | 'created'
  | 'running'
  | 'paused'
  | 'ready'
  | 'standby'
  | 'waiting'
  | 'pending'
  | 'aborting'
  | 'concluded'
  | 'null';

/** job.json JobInfo, as query-jobs returns it. */
export interface JobInfo {
  id: string;
  type: string;
  status: JobStatus;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/** block-core.json BlockDirtyInfo. `count` is in bytes, not bits. */
export interface BlockDirtyInfo {
  name?: string;
  count: number;
  granularity: number;
  recording: boolean;
  busy: boolean;
  persistent: boolean;
  /** Set after QEMU stopped without saving the bitmap (a crash): its content proves nothing. */
  inconsistent?: boolean;
}

/** block-core.json ImageInfo (the fields virtcbt reads; QEMU sends more). */
export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'cluster-size'?: number;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'backing-image'?: ImageInfo;
  [key: string]: unknown;
}

/** block-core.json BlockDeviceInfo: one node (query-named-block-nodes) or a device's inserted medium (query-block). */
export interface BlockDeviceInfo {
  file: string;
  'node-name'?: string;
  ro: boolean;
  drv: string;
  backing_file?: string;
  backing_file_depth: number;
  encrypted: boolean;
  image: ImageInfo;
  'dirty-bitmaps'?: BlockDirtyInfo[];
  [key: string]: unknown;
}

/** block-core.json BlockInfo, one entry of query-block. With -blockdev, `device` is "" and `qdev` names the disk. */
export interface BlockInfo {
  device: string;
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  inserted?: BlockDeviceInfo;
  tray_open?: boolean;
  'io-status'?: 'ok' | 'failed' | 'nospace';
}

/** block-export.json BlockExportInfo. */
export interface BlockExportInfo {
  id: string;
  type: string;
  'node-name': string;
  'shutting-down': boolean;
}

/** run-state.json StatusInfo. */
export interface StatusInfo {
  running: boolean;
  singlestep?: boolean;
  status: string;
}

/** block-core.json BlockDirtyBitmapOrStr: a bitmap on the same node by name, or on any node. */
export type BitmapRef = string | { node: string; name: string };

/** sockets.json SocketAddressLegacy, the form nbd-server-start takes in QEMU 7.2 (`data` is required). */
export type SocketAddressLegacy =
  | { type: 'unix'; data: { path: string } }
  | { type: 'inet'; data: { host: string; port: string } }
  | { type: 'fd'; data: { str: string } };

/** block-dirty-bitmap-remove / -enable / -disable / -clear arguments (BlockDirtyBitmap). */
export interface BlockDirtyBitmapArgs {
  node: string;
  name: string;
}

/** block-dirty-bitmap-add arguments (BlockDirtyBitmapAdd). Persistent bitmaps need a qcow2 node. */
export interface BlockDirtyBitmapAddArgs extends BlockDirtyBitmapArgs {
  /** Bytes per bit, a power of two; QEMU's default is the cluster size (64 KiB for qcow2). */
  granularity?: number;
  persistent?: boolean;
  disabled?: boolean;
}

/** block-dirty-bitmap-merge arguments (BlockDirtyBitmapMerge): OR `bitmaps` into `target` on `node`. */
export interface BlockDirtyBitmapMergeArgs {
  node: string;
  target: string;
  bitmaps: BitmapRef[];
}

/** blockdev-backup arguments (BlockdevBackup). */
export interface BlockdevBackupArgs {
  'job-id'?: string;
  device: string;
  target: string;
  sync: 'top' | 'full' | 'none' | 'incremental' | 'bitmap';
  speed?: number;
  bitmap?: string;
  'bitmap-mode'?: 'on-success' | 'never' | 'always';
  compress?: boolean;
  'on-source-error'?: 'report' | 'ignore' | 'enospc' | 'stop';
  'on-target-error'?: 'report' | 'ignore' | 'enospc' | 'stop';
  'auto-finalize'?: boolean;
  'auto-dismiss'?: boolean;
  'filter-node-name'?: string;
}
