// `virtcbt install --root DIR`: the hook and units land with this installation's paths, the unit
// passes systemd-analyze verify, and the installed hook spools an event fast.
import { execa } from 'execa';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = mkdtempSync(join(tmpdir(), 'virtcbt-install-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const cli = (args: string[], env: Record<string, string> = {}) =>
  execa('node', ['dist/src/cli/main.js', ...args], { reject: false, env });

describe('virtcbt install', () => {
  const enabledDir = join(root, 'enabled');
  const spoolDir = join(root, 'spool');
  const env = { VIRTCBT_ENABLED_DIR: enabledDir };

  it('writes the hook, unit and wrappers under --root', async () => {
    const configFile = join(root, 'empty.json');
    writeFileSync(configFile, '{}');
    const r = await cli(['--config', configFile, 'install', '--root', root, '--json'], env);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    const hook = join(root, 'etc/libvirt/hooks/qemu.d/virtcbt');
    expect(statSync(hook).mode & 0o111).not.toBe(0);
    expect(readFileSync(hook, 'utf8')).toContain(`enabled_dir=\${VIRTCBT_ENABLED_DIR:-${enabledDir}}`);
    const unit = readFileSync(join(root, 'etc/systemd/system/virtcbtd.service'), 'utf8');
    expect(unit).toContain(`ExecStart=${process.execPath} `);
    expect(unit).not.toContain('@');
  });

  it('installs a unit that systemd-analyze verify accepts', async () => {
    const v = await execa('systemd-analyze', ['verify', join(root, 'etc/systemd/system/virtcbtd.service')], { reject: false });
    expect(v.stderr).toBe('');
    expect(v.exitCode).toBe(0);
  });

  it('the installed hook spools events of tracked domains only, in well under 100 ms', async () => {
    const hook = join(root, 'etc/libvirt/hooks/qemu.d/virtcbt');
    mkdirSync(enabledDir, { recursive: true });
    mkdirSync(spoolDir, { recursive: true });
    writeFileSync(join(enabledDir, 'vm1'), `${spoolDir}\n`);
    const t0 = process.hrtime.bigint();
    const r = await execa(hook, ['vm1', 'started', 'begin', '-'], { input: '<domain/>', env: {} });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    expect(r.stdout).toBe('');
    expect(ms).toBeLessThan(100);
    await execa(hook, ['vm2', 'started', 'begin', '-'], { input: '<domain/>' });
    const files = readdirSync(spoolDir);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^\d+-\d+-started-begin\.event$/);
    expect(readFileSync(join(spoolDir, files[0]), 'utf8')).toBe('domain=vm1\nop=started\nsub=begin\nextra=-\n\n<domain/>');
  });
});
