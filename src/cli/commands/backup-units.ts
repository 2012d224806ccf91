// systemd units for the backup jobs declared in the config (backup.jobs): a oneshot service that
// runs `virtcbt backup --job NAME` and a timer with the job's calendar, per job.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BackupJobConfig } from '../../config/index.js';

export interface UnitFile {
  path: string;
  mode: number;
  content: string;
}

/** Unit names as systemd sees them: virtcbt-backup@JOB.service / .timer. */
export function backupUnitName(job: string, kind: 'service' | 'timer'): string {
  return `virtcbt-backup@${job}.${kind}`;
}

export async function backupJobUnits(packageRoot: string, jobs: readonly BackupJobConfig[], fill: (s: string) => string): Promise<UnitFile[]> {
  if (jobs.length === 0) return [];
  const service = await readFile(join(packageRoot, 'systemd/virtcbt-backup.service.template'), 'utf8');
  const timer = await readFile(join(packageRoot, 'systemd/virtcbt-backup.timer.template'), 'utf8');
  return jobs.flatMap((j) => {
    const f = (s: string) => fill(s)
      .replaceAll('@JOB@', j.name)
      .replaceAll('@DOMAINS@', j.domains.join(' '))
      .replaceAll('@CALENDAR@', j.calendar)
      .replaceAll('@DELAY@', String(j.randomDelaySec ?? 0));
    return [
      { path: `/etc/systemd/system/${backupUnitName(j.name, 'service')}`, mode: 0o644, content: f(service) },
      { path: `/etc/systemd/system/${backupUnitName(j.name, 'timer')}`, mode: 0o644, content: f(timer) },
    ];
  });
}
