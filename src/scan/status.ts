// `virtcbt scan status`: per tracked domain and configured scanner, when the last completed scan
// ended and what it found, when the next full scan is due (scan.fullEveryHours), how much the
// guest has modified since (what the next incremental scan covers, as folded so far), and whether
// the domain is quarantined.
import type { ChangeLog } from '../changelog/index.js';
import { totalBytes } from '../extent/index.js';
import { NotFoundError } from '../util/errors.js';
import { quarantineStatus } from './quarantine.js';
import { scanConsumerName } from './names.js';
import { readScanRecord, type LastScan } from './scan.js';

export interface ScanStatus {
  domain: string;
  scanner: string;
  /** The change-log consumer of this scanner (each has its own history). */
  consumer: string;
  /** When the last completed scan ended, and what it found; absent: none completed. */
  lastScanAt?: string;
  last?: LastScan;
  lastFullAt?: string;
  /** When the next scan will be full: 'next scan' (none yet, or due), a time, or 'only with --full' (scan.fullEveryHours 0). */
  nextFull: string;
  /** The record is not one virtcbtd wrote: the next scan is full. */
  recordProblem?: string;
  /** Bytes modified since this scanner's last completed scan, as folded so far; `full`: everything (no history). */
  modifiedSince?: { bytes: number; full: boolean };
  quarantine: 'quarantined' | 'released' | 'clean';
}

export async function scanStatus(stateDir: string, log: ChangeLog, scanners: readonly { name: string }[], fullEveryMs: number, domain?: string): Promise<ScanStatus[]> {
  const domains = log.listDomains().map((d) => d.name).filter((d) => domain === undefined || d === domain);
  if (domain !== undefined && domains.length === 0) {
    throw new NotFoundError(`domain ${domain} is not tracked`, { domain, hint: `virtcbt enable ${domain} first; scans use its change log` });
  }
  const out: ScanStatus[] = [];
  for (const d of domains.sort()) {
    const q = (await quarantineStatus(d, stateDir)).state;
    for (const s of scanners) {
      const consumer = scanConsumerName(s.name);
      const rec = await readScanRecord(stateDir, d, s.name);
      // As runScan decides: full without a full scan on record (or a record it cannot trust), else when due.
      const due = rec.lastFullAt && !rec.unreadable ? Date.parse(rec.lastFullAt) + fullEveryMs : undefined;
      const e: ScanStatus = {
        domain: d, scanner: s.name, consumer, quarantine: q,
        nextFull: due === undefined ? 'next scan' : fullEveryMs === 0 ? 'only with --full' : due <= Date.now() ? 'next scan' : new Date(due).toISOString(),
        ...(rec.lastScanAt ? { lastScanAt: rec.lastScanAt } : {}), ...(rec.last ? { last: rec.last } : {}), ...(rec.lastFullAt ? { lastFullAt: rec.lastFullAt } : {}),
        ...(rec.unreadable ? { recordProblem: 'the record is not one virtcbtd wrote: the next scan is full' } : {}),
      };
      try {
        const changes = log.changes(d, consumer);
        e.modifiedSince = { bytes: changes.reduce((n, c) => n + (c.full ? c.sizeBytes : totalBytes(c.extents)), 0), full: changes.some((c) => c.full) };
      } catch { /* this scanner has never scanned the domain: no consumer yet */ }
      out.push(e);
    }
  }
  return out;
}
