// systemd units for the scheduled jobs declared in the config (backup.jobs, sync.jobs): per job a
// oneshot service that runs `virtcbt backup|sync --job NAME` and a timer with the job's calendar.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BackupJobConfig, ScanJobConfig, SyncJobConfig } from '../../config/index.js';

export interface UnitFile {
  path: string;
  mode: number;
  content: string;
}

export type JobKind = 'backup' | 'sync' | 'scan';

/** Unit names as systemd sees them: virtcbt-backup@JOB.service, virtcbt-sync@JOB.timer, ... */
export function jobUnitName(kind: JobKind, job: string, unit: 'service' | 'timer'): string {
  return `virtcbt-${kind}@${job}.${unit}`;
}

/** What a job fills into its kind's service template and the shared timer template. */
interface ScheduledJob {
  name: string;
  calendar: string;
  /** RandomizedDelaySec. */
  delaySec: number;
  /** AccuracySec: how late systemd may fire to coalesce wake-ups (its default is 1min). */
  accuracy: string;
  /** Human text for Description= (any '%' is escaped here: systemd would read it as a specifier). */
  summary: string;
  /** Further @NAME@ placeholders of the service template (job names and calendars are checked by the config schema). */
  vars?: Record<string, string>;
}

const descriptionText = (s: string) => s.replaceAll('%', '%%').replace(/[\r\n]+/g, ' ');

async function jobUnits(packageRoot: string, kind: JobKind, jobs: readonly ScheduledJob[], fill: (s: string) => string): Promise<UnitFile[]> {
  if (jobs.length === 0) return [];
  const service = await readFile(join(packageRoot, `systemd/virtcbt-${kind}.service.template`), 'utf8');
  const timer = await readFile(join(packageRoot, 'systemd/virtcbt-job.timer.template'), 'utf8');
  return jobs.flatMap((j) => {
    const f = (s: string) => {
      let out = fill(s)
        .replaceAll('@KIND@', kind)
        .replaceAll('@JOB@', j.name)
        .replaceAll('@SUMMARY@', descriptionText(j.summary))
        .replaceAll('@CALENDAR@', j.calendar)
        .replaceAll('@DELAY@', String(j.delaySec))
        .replaceAll('@ACCURACY@', j.accuracy);
      for (const [k, v] of Object.entries(j.vars ?? {})) out = out.replaceAll(`@${k}@`, v);
      return out;
    };
    return [
      { path: `/etc/systemd/system/${jobUnitName(kind, j.name, 'service')}`, mode: 0o644, content: f(service) },
      { path: `/etc/systemd/system/${jobUnitName(kind, j.name, 'timer')}`, mode: 0o644, content: f(timer) },
    ];
  });
}

export function backupJobUnits(packageRoot: string, jobs: readonly BackupJobConfig[], fill: (s: string) => string): Promise<UnitFile[]> {
  return jobUnits(packageRoot, 'backup', jobs.map((j) => ({
    name: j.name, calendar: j.calendar, delaySec: j.randomDelaySec ?? 0, accuracy: '1min', summary: j.domains.join(' '),
  })), fill);
}

/**
 * Sync jobs run as often as every minute ("*:0/5"): their timers fire within a second of the
 * calendar (AccuracySec=1s) and without a random delay, so a replica is as recent as scheduled.
 */
export function syncJobUnits(packageRoot: string, jobs: readonly SyncJobConfig[], fill: (s: string) => string): Promise<UnitFile[]> {
  return jobUnits(packageRoot, 'sync', jobs.map((j) => ({
    name: j.name, calendar: j.calendar, delaySec: 0, accuracy: '1s', summary: `${j.domain} ${j.disk} to ${j.to}`,
  })), fill);
}

/** Scan jobs: a scan of each of the job's domains, one after the other (scans are light on the hypervisor). */
export function scanJobUnits(packageRoot: string, jobs: readonly ScanJobConfig[], fill: (s: string) => string): Promise<UnitFile[]> {
  return jobUnits(packageRoot, 'scan', jobs.map((j) => ({
    name: j.name, calendar: j.calendar, delaySec: 0, accuracy: '1min', summary: j.domains.join(' '),
  })), fill);
}
