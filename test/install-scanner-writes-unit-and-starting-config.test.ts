// `virtcbt install --scanner --root DIR` on a scanner host: virtcbt-scanner's unit and wrapper land
// with this installation's paths (the unit passes systemd-analyze verify), a starting config that
// virtcbt-scanner's own loader accepts is written once and never overwritten, and no hypervisor
// configuration is read.
import { execa } from 'execa';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadScannerConfig } from '../src/scan/scanner/config.js';
import { SCANNER_NODE_FLAGS } from '../src/scan/scanner/node-flags.js';

const ROOT = resolve(import.meta.dirname, '..');
const roots: string[] = [];
afterAll(() => { for (const r of roots) rmSync(r, { recursive: true, force: true }); });

async function install(extra: string[] = []) {
  const root = mkdtempSync(join(tmpdir(), 'virtcbt-install-scanner-'));
  roots.push(root);
  // A hypervisor config that does not load: --scanner must not read it.
  const broken = join(root, 'broken.json');
  writeFileSync(broken, '{ not json');
  const r = await execa('node', [join(ROOT, 'dist/src/cli/main.js'), '--config', broken, 'install', '--scanner', '--root', root, ...extra], { reject: false });
  return { root, r, unit: join(root, 'etc/systemd/system/virtcbt-scanner.service'), wrapper: join(root, 'usr/local/sbin/virtcbt-scanner'), conf: join(root, 'etc/virtcbt-scanner/config.json') };
}

describe('virtcbt install --scanner', () => {
  it('writes the unit and wrapper with this installation\'s paths; systemd-analyze verify accepts the unit', async () => {
    const { r, unit, wrapper } = await install();
    expect(r.exitCode, r.stderr).toBe(0);
    const text = readFileSync(unit, 'utf8');
    expect(text).not.toMatch(/@NODE@|@PREFIX@|@SCANNER_NODE_FLAGS@/);
    // With the scanner's Node flags (a larger initial old space: far fewer full collections).
    const flags = SCANNER_NODE_FLAGS.join(' ');
    expect(flags).toMatch(/--initial-old-space-size=\d+/);
    expect(text).toContain(`ExecStart=${process.execPath} ${flags} ${join(ROOT, 'dist/src/scan/scanner/main.js')} --config /etc/virtcbt-scanner/config.json`);
    // clamd.spoolDir's default: a runtime directory of its own, group-readable.
    expect(text).toMatch(/^RuntimeDirectory=virtcbt-scanner$/m);
    expect(text).toMatch(/^RuntimeDirectoryMode=0750$/m);
    expect(text).toMatch(/^User=virtcbt-scanner$/m);
    expect(statSync(wrapper).mode & 0o111).not.toBe(0);
    expect(readFileSync(wrapper, 'utf8')).toContain(`exec ${process.execPath} ${flags} ${join(ROOT, 'dist/src/scan/scanner/main.js')} "$@"`);
    const v = await execa('systemd-analyze', ['verify', unit], { reject: false });
    expect(v.stderr).toBe('');
    expect(v.exitCode).toBe(0);
    expect(r.stdout).toMatch(/next: `useradd --system/);
    expect(r.stdout).toMatch(/usermod -aG virtcbt-scanner clamav/);
  });

  it('writes a starting config the scanner accepts, once: an edited one is kept', async () => {
    const { r, root, conf } = await install(['--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).written).toContain(conf);
    expect(loadScannerConfig({ file: conf, env: {} }).allowedClients).toEqual(['CN=hv1']);
    writeFileSync(conf, JSON.stringify({ ...JSON.parse(readFileSync(conf, 'utf8')), allowedClients: ['CN=edited'] }));
    const again = await execa('node', [join(ROOT, 'dist/src/cli/main.js'), 'install', '--scanner', '--root', root, '--json'], { reject: false });
    expect(again.exitCode, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout).written).not.toContain(conf);
    expect(loadScannerConfig({ file: conf, env: {} }).allowedClients).toEqual(['CN=edited']);
  });

  it('--dry-run writes nothing', async () => {
    const { r, unit, conf } = await install(['--dry-run']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/would write .*virtcbt-scanner\.service/);
    expect(() => statSync(unit)).toThrow();
    expect(() => statSync(conf)).toThrow();
  });
});
