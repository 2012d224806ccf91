// The backup job's progress events, streamed by virtcbtd as JSON lines and rendered by the CLI.

export interface BackupRequest {
  consumer: string;
  repo: string;
  /** Copy every disk whole (allocated extents), starting a new chain. */
  full?: boolean;
  /** Do not freeze the guest's filesystems (crash-consistent backup). */
  noFreeze?: boolean;
}

export interface DiskPlan {
  target: string;
  sizeBytes: number;
  full: boolean;
  reason?: string;
  /** Bytes of the change set (full: the whole disk before narrowing to allocated extents). */
  changedBytes: number;
  file: string;
  backing: string | null;
}

export interface DiskResult {
  target: string;
  full: boolean;
  reason?: string;
  file: string;
  backing: string | null;
  /** Bytes of the extents copied (read from the snapshot; holes inside count). */
  bytes: number;
  /** Bytes written to the repository as data. */
  written: number;
  extents: number;
  sha256: string;
  elapsedMs: number;
  /** Of elapsedMs: making the data durable after the last byte was written (flush, close, fsync). */
  flushMs?: number;
}

export interface StepTiming {
  step: string;
  ms: number;
  /** When the step ended (ms since the epoch): shows jobs that overlapped. */
  at: number;
}

export interface BackupResult {
  domain: string;
  consumer: string;
  id: string;
  kind: 'full' | 'incremental';
  parent: string | null;
  repo: string;
  chainDir: string;
  manifest: string;
  time: string;
  /** The identity of the change log `generation` and `since` belong to. */
  logId: string;
  generation: number;
  since: number | null;
  pass: number;
  running: boolean;
  consistency: 'filesystem' | 'crash';
  consistencyNote?: string;
  freezeWindowMs: number | null;
  /** How long the freeze call took (the guest syncs its filesystems first; writes are held only after). */
  freezeCallMs?: number;
  disks: DiskResult[];
  bytes: number;
  written: number;
  elapsedMs: number;
  steps: StepTiming[];
  /** Leftovers of an interrupted earlier backup that were cleaned up. */
  recovered?: { id: string; pass: number | null; passAborted: boolean; removed: string[] };
  notes: string[];
}

export type BackupEvent =
  | { type: 'start'; domain: string; consumer: string; id: string; running: boolean; disks: { target: string; sizeBytes: number }[] }
  | { type: 'snapshot'; time: string; consistency: 'filesystem' | 'crash'; note?: string; freezeWindowMs: number | null; generation: number; pass: number }
  | { type: 'plan'; disks: DiskPlan[] }
  | { type: 'progress'; disk: string; done: number; total: number; written: number; bytesPerSec: number; etaSec: number | null }
  | { type: 'disk-done'; disk: DiskResult }
  | ({ type: 'result' } & BackupResult);

export type Emit = (ev: BackupEvent) => void;
