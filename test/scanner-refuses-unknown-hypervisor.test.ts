// virtcbt-scanner's API takes jobs only from the hypervisor identities it lists: no client
// certificate and another CA's certificate are refused at the TLS handshake, the same CA's
// certificate for another identity gets 403 and no job runs; a listed DN with an organisation
// matches in the form certificateSubject gives (QEMU's order), not in certtool's reversed one.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { certificateSubject } from '../src/tls/index.js';
import { pollUntil } from '../src/util/abort.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { tempDir } from './support/nbd-servers.js';
import { postScan, scannerWorld, startScanner, type RunningScanner, type ScannerWorld } from './support/scanner.js';
import { makeCa, makeClientDir } from './support/tls-certs.js';

useCleanup();

let w: ScannerWorld;
let scanner: RunningScanner;

beforeAll(async () => {
  const t = tempDir('scanner-authz');
  onCleanup(() => t.remove());
  w = await scannerWorld(t.path);
  scanner = await startScanner(t.path, w.config(), w.ns);
}, 120_000);

// A job that would be accepted if the caller were let in (its disk is never reached: the caller is refused first).
const job = { id: 'j1', domain: 'vm1', disks: [{ target: 'vda', uri: 'nbds://192.0.2.1:10809/x', size: 1048576 }] };

describe('the scanner API', () => {
  it('lets the listed hypervisor in', async () => {
    const r = await postScan(scanner.url, { ...job, disks: [] }, w.hv);
    // In, and then told what is wrong with the job.
    expect(r.status, r.body).toBe(400);
    expect(r.body).toMatch(/disks must be a list/);
  });

  it('refuses a caller without a certificate or with another CA\'s at the handshake', async () => {
    for (const [what, dir] of [['no certificate', w.noCert], ['another CA', w.otherCa]] as const) {
      const err = await postScan(scanner.url, job, dir).then((r) => new Error(`${what}: answered ${r.status} ${r.body}`), (e: Error) => e);
      expect(err.message, what).toMatch(/certificate|alert|ECONNRESET|socket hang up/i);
      expect(err.message, what).not.toMatch(/answered/);
    }
    // The scanner's stderr may reach us a moment after the client gave up.
    await pollUntil(() => /TLS handshake refused/.test(scanner.log()), 'the refusal to be logged', { timeoutMs: 10_000, intervalMs: 20 });
    expect(scanner.log()).not.toMatch(/scan job accepted/);
  });

  it('answers 403 to the same CA\'s certificate for another identity, and runs nothing', async () => {
    const r = await postScan(scanner.url, job, w.intruder);
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body)).toMatchObject({ error: 'identity CN=intruder may not post scan jobs' });
    await pollUntil(() => /warn: refused a client not in allowedClients subject=CN=intruder/.test(scanner.log()), 'the refusal to be logged', { timeoutMs: 10_000, intervalMs: 20 });
    expect(scanner.log()).not.toMatch(/scan job accepted/);
  });

  it('matches a DN with an organisation in certificateSubject\'s order only', async () => {
    const ca = await makeCa(join(w.dir, 'org-ca'), 'org CA');
    const client = await makeClientDir(ca, join(w.dir, 'hv-org'), ca, 'hv2', 'Example Org');
    const { makeServerDir } = await import('./support/tls-certs.js');
    const tls = await makeServerDir(ca, join(w.dir, 'org-scanner-tls'), ca, [w.ns.nsAddress]);
    const subject = await certificateSubject(join(client, 'client-cert.pem'));
    expect(subject).toBe('O=Example Org,CN=hv2');
    const right = await startScanner(w.dir, { ...w.config(), tlsDir: tls, allowedClients: [subject] }, w.ns);
    expect((await postScan(right.url, { ...job, disks: [] }, client)).status).toBe(400);
    const reversed = await startScanner(w.dir, { ...w.config(), tlsDir: tls, allowedClients: ['CN=hv2,O=Example Org'] }, w.ns);
    expect((await postScan(reversed.url, { ...job, disks: [] }, client)).status).toBe(403);
  });
});
