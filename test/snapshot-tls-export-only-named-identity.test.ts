// An export for another host (src/snapshot/remote-export.ts), reached from a network namespace: a
// client with a named identity's certificate reads the whole private unix export (and its allocation
// map) through it; no certificate, another CA's, the same CA's with another identity, or no TLS at
// all is refused; a write is refused; after close(), the deadline and an abort the front end is gone
// and its port closed.
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { pidAlive } from '../src/util/process.js';
import { startRemoteExport, type RemoteExport, type RemoteExportOptions } from '../src/snapshot/remote-export.js';
import { certificateSubject } from '../src/tls/index.js';
import { pollUntil } from '../src/util/abort.js';
import { createLogger } from '../src/util/log.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { makeNetns, type NetNs } from './support/netns.js';
import { qemuIo, tempDir } from './support/nbd-servers.js';
import { startStorageDaemon, type StorageDaemon } from './support/storage-daemon.js';
import { makeCa, makeClientDir, makeServerDir } from './support/tls-certs.js';

useCleanup();

const MiB = 1024 * 1024;

let ns: NetNs;
let dir: string;
let image: string;
let source: StorageDaemon;
let serverDir: string;
const clients: Record<'scanner' | 'orgScanner' | 'intruder' | 'otherCa' | 'noCert', string> = {} as never;

beforeAll(async () => {
  const t = tempDir('tls-export');
  onCleanup(() => t.remove());
  dir = t.path;
  ns = await makeNetns();
  const ca = await makeCa(join(dir, 'ca'), 'virtcbt test CA');
  const other = await makeCa(join(dir, 'other-ca'), 'some other CA');
  serverDir = await makeServerDir(ca, join(dir, 'server'), ca, [ns.hostAddress]);
  clients.scanner = await makeClientDir(ca, join(dir, 'scanner'), ca, 'scanner');
  clients.orgScanner = await makeClientDir(ca, join(dir, 'org-scanner'), ca, 'scanner-2', 'Example Org');
  clients.intruder = await makeClientDir(ca, join(dir, 'intruder'), ca, 'intruder');
  // Same name as the allowed one, signed by another CA.
  clients.otherCa = await makeClientDir(other, join(dir, 'other-ca-scanner'), ca, 'scanner');
  // Trusts the server, has no certificate of its own.
  clients.noCert = join(dir, 'no-cert');
  await mkdir(clients.noCert);
  await execa('cp', [join(clients.scanner, 'ca-cert.pem'), clients.noCert]);

  image = join(dir, 'disk.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(64 * MiB)]);
  await qemuIo(image, ['write -P 0x61 0 1M', `write -P 0x62 ${20 * MiB} 3M`, `write -P 0x63 ${63 * MiB} 1M`]);
  source = await startStorageDaemon({ image, readOnly: true, nbd: { exportName: 'view' } });
});

async function remote(extra: Partial<RemoteExportOptions> = {}): Promise<RemoteExport> {
  const runDir = join(dir, 'run');
  await mkdir(runDir, { recursive: true });
  const exp = await startRemoteExport({
    source: { socket: source.nbdSocket!, exportName: source.exportName! },
    tlsDir: serverDir,
    identities: ['CN=scanner'],
    bind: { host: ns.hostAddress },
    runDir,
    domain: 'vm1',
    disk: 'vda',
    ...extra,
  });
  onCleanup(() => exp.close());
  return exp;
}

function withCerts(uri: string, certDir: string): string {
  return `${uri}?tls-certificates=${certDir}`;
}

/** Whether anything accepts TCP connections on host:port, asked from inside the namespace. */
async function portOpen(host: string, port: number): Promise<boolean> {
  const r = await ns.exec('bash', ['-c', `exec 3<>/dev/tcp/${host}/${port}`]);
  return r.exitCode === 0;
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

describe('an export for another host over TLS', () => {
  it('a client with a named identity reads the whole export from the other host, equal to the source', async () => {
    const exp = await remote({ identities: ['CN=scanner', await certificateSubject(join(clients.orgScanner, 'client-cert.pem'))] });
    expect(exp.uri).toBe(`nbds://${ns.hostAddress}:${exp.port}/${exp.exportName}`);
    expect(exp.exportName).toMatch(/^[0-9a-f]{32}$/);
    for (const who of ['scanner', 'orgScanner'] as const) {
      const out = join(dir, `read-${who}.raw`);
      const r = await ns.exec('nbdcopy', ['--', withCerts(exp.uri, clients[who]), out]);
      expect(r.exitCode, `${who}: ${r.stderr}`).toBe(0);
      const cmp = await execa('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', out, image], { reject: false });
      expect(cmp.stdout, who).toMatch(/Images are identical/);
    }
    // Block status passes through: the other host can read only what is allocated.
    const map = await ns.exec('nbdinfo', ['--map', withCerts(exp.uri, clients.scanner)]);
    expect(map.exitCode, map.stderr).toBe(0);
    expect(map.stdout).toBe((await execa('nbdinfo', ['--map', source.uri!])).stdout);
    expect(map.stdout).toMatch(/hole,zero/);
  });

  it('refuses a client without a certificate, with another CA\'s, with another identity, or without TLS', async () => {
    const logged: string[] = [];
    const log = createLogger('info', (l) => logged.push(l));
    const exp = await remote({ log });
    const cases = {
      'no certificate': withCerts(exp.uri, clients.noCert),
      'another CA': withCerts(exp.uri, clients.otherCa),
      'another identity': withCerts(exp.uri, clients.intruder),
      'no TLS': exp.uri.replace(/^nbds:/, 'nbd:'),
    };
    for (const [what, uri] of Object.entries(cases)) {
      const r = await ns.exec('nbdinfo', ['--size', uri]);
      expect(r.exitCode, `${what}: ${r.stdout}`).not.toBe(0);
      expect(r.stdout, what).toBe('');
    }
    // The refused identity is logged as the DN an admin would have to allow.
    // (qemu-storage-daemon's stderr may reach us a moment after the client gave up.)
    const refusal = /warn: export for another host: .*TLS x509 authz check for CN=intruder is denied.* domain=vm1 disk=vda/;
    await pollUntil(() => refusal.test(logged.join('\n')), 'the refusal to be logged', { timeoutMs: 10_000, intervalMs: 20 });
    // The refusals were the identity check, not a broken export.
    const ok = await ns.exec('nbdinfo', ['--size', withCerts(exp.uri, clients.scanner)]);
    expect(ok.stdout.trim()).toBe(String(64 * MiB));
  });

  it('refuses a write from the allowed client, even when the private export would take one, and the source is unchanged', async () => {
    // A writable source: the refusal must come from the front end itself.
    const copy = join(dir, 'writable.qcow2');
    await execa('cp', [image, copy]);
    const writable = await startStorageDaemon({ image: copy, nbd: { exportName: 'rw', writable: true } });
    const exp = await remote({ source: { socket: writable.nbdSocket!, exportName: writable.exportName! } });
    const before = await sha256(copy);
    const can = await ns.exec('nbdinfo', ['--can', 'write', withCerts(exp.uri, clients.scanner)]);
    expect(can.exitCode, can.stderr).toBe(2); // 2: "no"
    // qemu-io asks for a writable image: the export is read-only, so it cannot even open it for writing.
    const w = await ns.exec('qemu-io', [
      '--object', `tls-creds-x509,id=tls0,dir=${clients.scanner},endpoint=client`,
      '--image-opts', `driver=nbd,server.type=inet,server.host=${exp.host},server.port=${exp.port},export=${exp.exportName},tls-creds=tls0`,
      '-c', 'write -P 0x55 0 64k',
    ]);
    expect(w.exitCode, w.stdout).not.toBe(0);
    expect(`${w.stdout}\n${w.stderr}`).toMatch(/read.only|not permitted|denied/i);
    expect(await sha256(copy)).toBe(before);
  });

  for (const how of ['close', 'deadline', 'abort'] as const) {
    it(`after ${how === 'close' ? 'close()' : how === 'deadline' ? 'the deadline' : 'an abort of its signal'} the front end is gone and its port closed`, async () => {
      const ctl = new AbortController();
      const exp = await remote(how === 'deadline' ? { deadlineMs: 3000 } : how === 'abort' ? { signal: ctl.signal } : {});
      const runDir = join(dir, 'run');
      expect(readdirSync(runDir)).toContain(`remote-export-${exp.exportName}.pid`);
      expect(await portOpen(exp.host, exp.port)).toBe(true);
      if (how === 'close') await exp.close();
      if (how === 'abort') ctl.abort();
      const ended = await Promise.race([exp.closed, new Promise((resolve) => setTimeout(() => resolve('still serving after 20 s'), 20_000))]);
      expect(ended).toBe(how === 'close' ? 'closed' : how === 'deadline' ? 'deadline' : 'aborted');
      expect(pidAlive(exp.pid)).toBe(false);
      expect(await portOpen(exp.host, exp.port)).toBe(false);
      expect(existsSync(join(runDir, `remote-export-${exp.exportName}.pid`))).toBe(false);
      const r = await ns.exec('nbdinfo', ['--size', withCerts(exp.uri, clients.scanner)]);
      expect(r.exitCode).not.toBe(0);
    });
  }
});
