// Backup jobs declared in the config: `virtcbt install` writes virtcbt-backup@JOB.service and
// .timer for each, filled in and accepted by systemd-analyze verify; bad job entries are refused.
import { execa } from 'execa';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/index.js';

const root = mkdtempSync(join(tmpdir(), 'virtcbt-install-jobs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const cli = (args: string[]) => execa('node', ['dist/src/cli/main.js', ...args], { reject: false, env: { VIRTCBT_ENABLED_DIR: join(root, 'enabled') } });
const config = (name: string, body: unknown) => {
  const p = join(root, name);
  writeFileSync(p, JSON.stringify(body));
  return p;
};

const jobs = [
  { name: 'nightly', domains: ['vm1', 'vm2'], consumer: 'nightly', repo: '/srv/backup', keep: 7, calendar: '*-*-* 02:00', randomDelaySec: 900 },
  { name: 'weekly-offsite', domains: ['vm1'], consumer: 'offsite', repo: '/mnt/offsite', calendar: 'Sun 03:30' },
];

describe('backup jobs from the config', () => {
  it('install writes a service and a timer per job that systemd-analyze verify accepts', async () => {
    const r = await cli(['--config', config('jobs.json', { backup: { jobs } }), 'install', '--root', root]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('systemctl enable --now virtcbt-backup@nightly.timer');
    const dir = join(root, 'etc/systemd/system');
    for (const j of jobs) {
      const service = join(dir, `virtcbt-backup@${j.name}.service`);
      const timer = join(dir, `virtcbt-backup@${j.name}.timer`);
      expect(existsSync(service) && existsSync(timer)).toBe(true);
      const s = readFileSync(service, 'utf8');
      expect(s).toContain(`ExecStart=${process.execPath} `);
      expect(s).toContain(`backup --job ${j.name}`);
      expect(s).not.toContain('@JOB@');
      const t = readFileSync(timer, 'utf8');
      expect(t).toContain(`OnCalendar=${j.calendar}`);
      expect(t).toContain(`RandomizedDelaySec=${j.randomDelaySec ?? 0}`);
      const v = await execa('systemd-analyze', ['verify', service, timer], { reject: false });
      expect(v.stderr).toBe('');
      expect(v.exitCode).toBe(0);
      // The calendar expression is one systemd understands.
      expect((await execa('systemd-analyze', ['calendar', j.calendar], { reject: false })).exitCode).toBe(0);
    }
  });

  it('refuses malformed jobs, naming the entry', () => {
    const bad = [
      [{ ...jobs[0], name: 'no spaces' }, /backup\.jobs\[0\]\.name/],
      [{ ...jobs[0], domains: [] }, /backup\.jobs\[0\]\.domains/],
      [{ ...jobs[0], repo: 'relative' }, /absolute path/],
      [{ ...jobs[0], keep: -1 }, /keep/],
      [{ ...jobs[0], calendar: '' }, /calendar/],
      [{ ...jobs[0], extra: 1 }, /unknown key 'extra'/],
    ] as const;
    for (const [job, msg] of bad) {
      expect(() => loadConfig({ file: config('bad.json', { backup: { jobs: [job] } }), env: {} })).toThrow(msg);
    }
    expect(() => loadConfig({ file: config('dup.json', { backup: { jobs: [jobs[0], jobs[0]] } }), env: {} })).toThrow(/used twice/);
  });

  it('backup --job refuses an unknown job and extra arguments', async () => {
    const file = config('jobs2.json', { backup: { jobs } });
    const r = await cli(['--config', file, 'backup', '--job', 'hourly']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/no backup job 'hourly'.*nightly, weekly-offsite/);
    expect((await cli(['--config', file, 'backup', '--job', 'nightly', 'vm3'])).exitCode).toBe(2);
  });
});
