// Shapes of the control API's requests and replies, shared by virtcbtd and the CLI.
import type { ExtentPair } from '../extent/index.js';

export interface DiskChangesReply {
  target: string;
  blockSize: number;
  sizeBytes: number;
  /** True when the consumer gets everything: new consumer, or the floor was raised since its last pass. */
  full: boolean;
  reason?: string;
  /** [offset, length] in bytes, sorted, merged (the change log's extents, as pairs on the wire). */
  extents: ExtentPair[];
  changedBytes: number;
}

export interface ChangesReply {
  domain: string;
  /** The identity of the domain's change log: `since` and `upTo` are generations of this log only. */
  logId: string;
  consumer: string;
  /** Generation of the consumer's last completed pass (null: never). */
  since: number | null;
  upTo: number;
  disks: DiskChangesReply[];
}

export interface PassReply extends ChangesReply {
  pass: number;
  generation: number;
  /** With --export: an NBD URI per disk, valid until commit or abort. */
  /** uri: the private unix export; remoteUri: the export for another host (nbds://, `--export-to`). */
  exports?: { target: string; uri: string; bitmap?: string; remoteUri?: string }[];
}

export interface ConsumerInfo {
  name: string;
  last: number | null;
  lastPassAt?: string | null;
}

export interface OpenPassInfo {
  id: number;
  consumer: string;
  generation: number;
  startedAt: string;
}

export interface DiskStatus {
  target: string;
  format?: string;
  source?: string;
  node?: string;
  blockSize: number;
  sizeBytes: number;
  floor: number;
  floorReason?: string | null;
  activeBitmap?: string | null;
  bitmaps: { name: string; state: string; generation: number }[];
}

export interface DomainStatusReply {
  domain: string;
  state: string;
  /** Whether virtcbtd holds a QMP connection to the domain's dedicated monitor. */
  connected: boolean;
  /** Set when the dedicated monitor takes effect only after the next restart. */
  pendingRestart?: boolean;
  /** The identity of the domain's change log (new at every enable; generations compare only within one). */
  logId: string;
  /** Set while libvirt cannot be reached: why (`virtcbt status` then exits non-zero). */
  libvirtError?: string;
  generation: number;
  lastFoldAt?: string | null;
  lastError?: string | null;
  disks: DiskStatus[];
  consumers: ConsumerInfo[];
  openPasses: OpenPassInfo[];
}

export interface LibvirtStatus {
  uri: string;
  reachable: boolean;
  /** Why not, when unreachable. */
  error?: string;
}

export interface StatusReply {
  daemon: { pid: number; startedAt: string; version: string };
  /** Absent from daemons older than this field. */
  libvirt?: LibvirtStatus;
  domains: DomainStatusReply[];
}

export interface ReconcileReply {
  domain: string;
  disks: { target: string; bitmap?: string; dirtyBytes: number; floorRaised?: string }[];
  elapsedMs: number;
}

export interface EnableRequest {
  exclude?: string[];
  noAgent?: boolean;
}

export interface EnableReply {
  domain: string;
  disks: { target: string; source?: string; sizeBytes: number }[];
  qmpSocket: string;
  running: boolean;
  notes: string[];
}
