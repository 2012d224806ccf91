// virtcbt-scanner's configuration: a file with every setting loads; no allowed hypervisor, a
// certtool-style non-DN, a relative credentials path, an unknown key, a zero limit, a bad owner-index budget or spool directory are refused
// with the file and the setting named.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadScannerConfig } from '../src/scan/scanner/index.js';
import { UsageError } from '../src/util/errors.js';
import { tempDir } from './support/nbd-servers.js';

const t = tempDir('scanner-config');
afterAll(() => t.remove());

const good = {
  listen: { host: '192.0.2.20', port: 8443 },
  tlsDir: '/etc/virtcbt-scanner/tls',
  allowedClients: ['CN=hv1', 'O=Example,CN=hv2'],
  nbdTlsDir: '/etc/virtcbt-scanner/nbd-client',
  clamd: { socket: '/run/clamav/clamd.ctl', timeoutSeconds: 300, spoolDir: '/run/virtcbt-scanner', spoolMaxFileBytes: 1000 },
  limits: { maxFileBytes: 1000, maxFiles: 10, maxSeconds: 60, streamMaxLength: 1000, concurrency: 2 },
  maxJobs: 1,
  ownerIndex: { maxMiB: 64 },
};

function file(v: object): string {
  const p = join(t.path, `${Math.random().toString(16).slice(2)}.json`);
  writeFileSync(p, JSON.stringify(v));
  return p;
}

describe('the scanner configuration', () => {
  it('loads a complete file, variables overriding it', () => {
    const cfg = loadScannerConfig({ file: file(good), env: { VIRTCBT_SCANNER_PORT: '9443' } });
    expect(cfg).toMatchObject({ ...good, listen: { host: '192.0.2.20', port: 9443 }, log: { level: 'info' } });
  });

  it.each([
    ['no allowed hypervisor', { allowedClients: [] }, /allowedClients is empty/],
    ['a name that is not a DN', { allowedClients: ['hv1'] }, /allowedClients: "hv1" is not a subject DN/],
    ['a relative credentials path', { nbdTlsDir: 'certs' }, /nbdTlsDir must be an absolute path/],
    ['an unknown key', { scanEverything: true }, /scanEverything/],
    ['a zero limit', { limits: { ...good.limits, concurrency: 0 } }, /limits.concurrency must be a positive whole number/],
    ['owner-index memory that is not whole MiB', { ownerIndex: { maxMiB: 1.5 } }, /ownerIndex.maxMiB must be a whole number of MiB/],
    ['negative owner-index memory', { ownerIndex: { maxMiB: -1 } }, /ownerIndex.maxMiB must be a whole number of MiB/],
    ['a relative save directory', { ownerIndex: { maxMiB: 64, saveDir: 'state' } }, /ownerIndex.saveDir must be an absolute path, or empty for none/],
    ['a relative spool directory', { clamd: { ...good.clamd, spoolDir: 'spool' } }, /clamd.spoolDir must be an absolute path without control characters, or empty for none/],
    ['a spool directory with a newline (clamd reads a path up to one)', { clamd: { ...good.clamd, spoolDir: '/run/x\nSHUTDOWN' } }, /clamd.spoolDir must be an absolute path without control characters/],
    ['a zero spool file size', { clamd: { ...good.clamd, spoolMaxFileBytes: 0 } }, /clamd.spoolMaxFileBytes must be a positive whole number/],
    ['a save interval that is not whole seconds', { ownerIndex: { maxMiB: 64, saveEverySeconds: 0.5 } }, /ownerIndex.saveEverySeconds must be a whole number of seconds/],
  ])('refuses %s', (_what, change, message) => {
    const p = file({ ...good, ...change });
    let err: unknown;
    try {
      loadScannerConfig({ file: p, env: {} });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).toContain(p);
  });
});
