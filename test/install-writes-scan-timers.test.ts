// Scan jobs declared in the config (scan.jobs): `virtcbt install` writes virtcbt-scan@JOB.service
// and .timer for each from the shared templates, accepted by systemd-analyze verify; the service
// runs `virtcbt scan --job JOB` and counts exit 10 (malware found) as a result, not a failure.
import { execa } from 'execa';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';

const root = mkdtempSync(join(tmpdir(), 'virtcbt-install-scan-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const cli = (args: string[]) => execa('node', ['dist/src/cli/main.js', ...args], { reject: false, env: { VIRTCBT_ENABLED_DIR: join(root, 'enabled') } });

it('install writes a service and a timer per scan job', async () => {
  const cfg = join(root, 'scan.json');
  writeFileSync(cfg, JSON.stringify({ scan: { jobs: [{ name: 'hourly-scan', domains: ['vm1', 'vm2'], scanner: 's1', calendar: 'hourly' }] } }));
  const r = await cli(['--config', cfg, 'install', '--root', root]);
  expect(r.exitCode, r.stderr).toBe(0);
  expect(r.stdout).toContain('systemctl enable --now virtcbt-scan@hourly-scan.timer');
  const dir = join(root, 'etc/systemd/system');
  const service = join(dir, 'virtcbt-scan@hourly-scan.service');
  const timer = join(dir, 'virtcbt-scan@hourly-scan.timer');
  const s = readFileSync(service, 'utf8');
  expect(s).toContain('scan --job hourly-scan\n');
  expect(s).toContain('SuccessExitStatus=10');
  expect(s).toContain('Description=virtcbt scan job hourly-scan (vm1 vm2)');
  expect(readFileSync(timer, 'utf8')).toContain('OnCalendar=hourly\n');
  const v = await execa('systemd-analyze', ['verify', service, timer], { reject: false });
  expect(v.stderr).toBe('');
  expect(v.exitCode).toBe(0);
});

it('a bad scan job is refused, naming the setting, and nothing is written', async () => {
  const cfg = join(root, 'bad.json');
  writeFileSync(cfg, JSON.stringify({ scan: { jobs: [{ name: 'x', domains: [], calendar: 'hourly' }] } }));
  const r = await cli(['--config', cfg, 'install', '--root', join(root, 'bad-root')]);
  expect(r.exitCode).toBe(2);
  expect(r.stderr).toMatch(/scan\.jobs\[0\]\.domains/);
});
