// Sync jobs declared in the config (sync.jobs): `virtcbt install` writes virtcbt-sync@JOB.service
// and .timer for each, built from the templates backup jobs use too, filled in and accepted by
// systemd-analyze verify; calendars down to a minute fire at that interval.
import { execa } from 'execa';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = mkdtempSync(join(tmpdir(), 'virtcbt-install-sync-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const cli = (args: string[]) => execa('node', ['dist/src/cli/main.js', ...args], { reject: false, env: { VIRTCBT_ENABLED_DIR: join(root, 'enabled') } });
const config = (name: string, body: unknown) => {
  const p = join(root, name);
  writeFileSync(p, JSON.stringify(body));
  return p;
};

const jobs = [
  { name: 'replica', domain: 'vm1', disk: 'vda', to: '/srv/replica/vm1-vda.qcow2', calendar: '*:0/5' },
  // '%' in a URI would be a systemd specifier in Description=: it must come out escaped.
  { name: 'offsite.db', domain: 'db%1', disk: 'vdb', to: 'nbds://backup-host:10809/vm1%2Fvdb', format: 'raw', discard: true, calendar: 'minutely' },
];

/** The next `n` times systemd would fire `calendar`, as epoch milliseconds. */
async function nextElapses(calendar: string, n: number): Promise<number[]> {
  const r = await execa('systemd-analyze', ['calendar', `--iterations=${n}`, calendar]);
  return [...r.stdout.matchAll(/(?:Next elapse|Iter\. #\d+): \w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC/g)].map((m) => Date.parse(`${m[1]!.replace(' ', 'T')}Z`));
}

describe('sync jobs from the config', () => {
  it('install writes a service and a timer per job that systemd-analyze verify accepts', async () => {
    const backup = { name: 'nightly', domains: ['vm1'], consumer: 'nightly', repo: '/srv/backup', calendar: '*-*-* 02:00' };
    const r = await cli(['--config', config('jobs.json', { backup: { jobs: [backup] }, sync: { jobs } }), 'install', '--root', root]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('systemctl enable --now virtcbt-sync@replica.timer');
    expect(r.stdout).toContain('systemctl enable --now virtcbt-backup@nightly.timer');
    const dir = join(root, 'etc/systemd/system');
    // The backup job's units are still written beside them, from the same timer template.
    expect(readFileSync(join(dir, 'virtcbt-backup@nightly.timer'), 'utf8')).toContain('OnCalendar=*-*-* 02:00');
    for (const j of jobs) {
      const service = join(dir, `virtcbt-sync@${j.name}.service`);
      const timer = join(dir, `virtcbt-sync@${j.name}.timer`);
      expect(existsSync(service) && existsSync(timer)).toBe(true);
      const s = readFileSync(service, 'utf8');
      expect(s).toContain(`ExecStart=${process.execPath} `);
      expect(s).toContain(`sync --job ${j.name}\n`);
      expect(s).toContain('Type=oneshot');
      expect(s).toContain(`Description=virtcbt sync job ${j.name} (${j.domain.replaceAll('%', '%%')} ${j.disk} to ${j.to.replaceAll('%', '%%')})`);
      expect(s).not.toMatch(/@[A-Z]+@/);
      const t = readFileSync(timer, 'utf8');
      expect(t).toContain(`OnCalendar=${j.calendar}\n`);
      expect(t).toContain('AccuracySec=1s\n');
      expect(t).toContain('RandomizedDelaySec=0\n');
      expect(t).not.toMatch(/@[A-Z]+@/);
      const v = await execa('systemd-analyze', ['verify', service, timer], { reject: false });
      expect(v.stderr).toBe('');
      expect(v.exitCode).toBe(0);
    }
    // Down to a minute: the calendars fire every 5 minutes and every minute.
    const every = async (cal: string) => {
      const t = await nextElapses(cal, 4);
      expect(t).toHaveLength(4);
      return new Set(t.slice(1).map((x, i) => (x - t[i]!) / 1000));
    };
    expect(await every('*:0/5')).toEqual(new Set([300]));
    expect(await every('minutely')).toEqual(new Set([60]));
  });

  it('a dry run lists the sync units and writes nothing', async () => {
    const dry = join(root, 'dry');
    const r = await cli(['--config', config('dry.json', { sync: { jobs } }), 'install', '--root', dry, '--dry-run', '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.files).toEqual(expect.arrayContaining(jobs.flatMap((j) => [`/etc/systemd/system/virtcbt-sync@${j.name}.service`, `/etc/systemd/system/virtcbt-sync@${j.name}.timer`])));
    expect(out.written).toEqual([]);
    expect(existsSync(dry)).toBe(false);
  });

  it('sync --job refuses an unknown job, naming the ones there are', async () => {
    const r = await cli(['--config', config('jobs2.json', { sync: { jobs } }), 'sync', '--job', 'hourly']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/no sync job 'hourly'.*replica, offsite\.db/);
  });
});
