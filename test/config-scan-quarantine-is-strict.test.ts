// scan.quarantine, scan.domains and scan.webhook: defaults, and each bad value refused with an
// error that names the setting (a typo must not leave an infected domain un-quarantined).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/index.js';
import { actionFor } from '../src/scan/quarantine.js';

const dir = mkdtempSync(join(tmpdir(), 'virtcbt-config-scan-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const load = (scan: unknown) => {
  const f = join(dir, `c${n++}.json`);
  writeFileSync(f, JSON.stringify({ scan }));
  return loadConfig({ file: f, env: {} });
};

describe('scan quarantine config', () => {
  it('defaults to link-down, no webhook; per-domain actions override', () => {
    const d = loadConfig({ env: {} });
    expect(d.scan).toMatchObject({ quarantine: 'link-down', domains: [], webhook: '' });
    const c = load({ quarantine: 'suspend', domains: [{ domain: 'db1', action: 'command', command: ['/usr/local/bin/isolate', '-x'] }], webhook: 'https://h.example/x' });
    expect(actionFor(c, 'web1')).toEqual({ action: 'suspend' });
    expect(actionFor(c, 'db1')).toEqual({ action: 'command', command: ['/usr/local/bin/isolate', '-x'] });
  });

  it.each([
    [{ quarantine: 'unplug' }, /scan\.quarantine/],
    [{ quarantine: 'command' }, /scan\.quarantine/],
    [{ domains: [{ domain: 'a', action: 'reboot' }] }, /scan\.domains\[0\]\.action must be one of/],
    [{ domains: [{ domain: 'a', action: 'command' }] }, /scan\.domains\[0\]\.command must be a list/],
    [{ domains: [{ domain: 'a', action: 'command', command: 'isolate $DOMAIN' }] }, /scan\.domains\[0\]\.command must be a list/],
    [{ domains: [{ domain: 'a', action: 'command', command: ['isolate'] }] }, /command\[0\] must be an absolute path/],
    [{ domains: [{ domain: 'a', action: 'none', command: ['/bin/true'] }] }, /only for action "command"/],
    [{ domains: [{ domain: 'a', action: 'none' }, { domain: 'a', action: 'suspend' }] }, /'a' is listed twice/],
    [{ domains: [{ domain: 'a', action: 'none', when: 'always' }] }, /unknown key 'when'/],
    [{ webhook: 'ftp://h/x' }, /scan\.webhook must be an http/],
    [{ webhook: 'not a url' }, /scan\.webhook 'not a url' is not a URL/],
    [{ commandTimeoutSeconds: 0 }, /scan\.commandTimeoutSeconds/],
  ])('refuses %j', (scan, message) => {
    expect(() => load(scan)).toThrow(message);
  });
});
