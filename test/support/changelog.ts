// Test helpers for the change log: a fresh log in a temp dir, a pinned clock, and "the guest wrote these extents"
// (record a frozen bitmap for the current generation and fold it, as the reconciler would after a rotation).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChangeLog, type DiskChanges, type ExtentInput, type FoldResult } from '../../src/changelog/index.js';
import { toPairs, type ExtentPair } from '../../src/extent/index.js';

export interface TempLog {
  dir: string;
  path: string;
  log: ChangeLog;
  /** Set the pinned clock. */
  setNow(iso: string): void;
  cleanup(): void;
}

export function tempLog(prefix = 'virtcbt-changelog-'): TempLog {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const path = join(dir, 'changelog.db');
  let now = new Date('2026-01-01T00:00:00.000Z');
  const log = ChangeLog.open(path, { now: () => now });
  return {
    dir, path, log,
    setNow(iso) { now = new Date(iso); },
    cleanup() { log.close(); rmSync(dir, { recursive: true, force: true }); },
  };
}

let seq = 0;
/** The guest wrote `extents` during the current generation; the reconciler rotated and folded the bitmap. */
export function guestWrote(log: ChangeLog, domain: string, target: string, extents: readonly ExtentInput[]): FoldResult & { bitmap: string } {
  const bitmap = `test-${++seq}`;
  log.recordBitmap(domain, target, bitmap, log.currentGeneration(domain), 'frozen');
  return { ...log.fold(domain, target, bitmap, extents), bitmap };
}

/** A disk's changes with its extents as `[offset, length]` pairs, the form the assertions write. */
export type PairedDiskChanges = Omit<DiskChanges, 'extents'> & { extents: ExtentPair[] };

/** The change log's answer with its extents as pairs. */
export function asPairs(disks: DiskChanges[]): PairedDiskChanges[] {
  return disks.map((d) => ({ ...d, extents: toPairs(d.extents) }));
}

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
