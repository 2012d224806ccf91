// Test helpers for the scanner host: a private clamd with a custom signature database, ext images
// served over NBD with TLS for one identity, virtcbt-scanner started (in a network namespace) and
// scan jobs posted to it over HTTPS with a client certificate.
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClamdClient, SCANNER_NODE_FLAGS } from '../../src/scan/scanner/index.js';
import type { ScanEvent, ScanJob, ScanResult } from '../../src/scan/protocol.js';
import { startRemoteExport, type RemoteExport } from '../../src/snapshot/remote-export.js';
import { pollUntil } from '../../src/util/abort.js';
import { onCleanup, trackChild } from './cleanup.js';
import type { NetNs } from './netns.js';
import { startStorageDaemon } from './storage-daemon.js';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..');
export const SCANNER_MAIN = join(ROOT, 'dist', 'src', 'scan', 'scanner', 'main.js');

/** The EICAR test string, put together here so this source file is not itself "infected". */
export const EICAR = ['X5O!P%@AP[4\\PZX54(P^)7CC)7}$', 'EICAR-STANDARD-ANTIVIRUS', '-TEST-FILE!$H+H*'].join('');
/** An .ndb body signature on EICAR's middle part; clamd names a match from a custom database NAME.UNOFFICIAL. */
export const SIGNATURE = 'Virtcbt.Test.EICAR';
const NDB = `${SIGNATURE}:0:*:${Buffer.from('EICAR-STANDARD-ANTIVIRUS-TEST-FILE').toString('hex')}\n`;

export interface Clamd {
  socket: string;
  streamMaxLength: number;
  stop(): Promise<void>;
}

/**
 * Starts clamd in the foreground on a private socket with only our signature; resolves once it
 * answers PING. `conf`: more clamd.conf lines (limits such as MaxFileSize, AlertExceedsMax).
 */
export async function startClamd(dir: string, o: { threads?: number; streamMaxLength?: number; wrap?: string[]; conf?: string[] } = {}): Promise<Clamd> {
  mkdirSync(join(dir, 'db'), { recursive: true });
  writeFileSync(join(dir, 'db', 'virtcbt-test.ndb'), NDB);
  const socket = join(dir, 'clamd.sock');
  const streamMaxLength = o.streamMaxLength ?? 16 * 1024 * 1024;
  const conf = join(dir, 'clamd.conf');
  writeFileSync(conf, [
    `LocalSocket ${socket}`, `DatabaseDirectory ${join(dir, 'db')}`, 'Foreground yes', `LogFile ${join(dir, 'clamd.log')}`,
    `MaxThreads ${o.threads ?? 4}`, `StreamMaxLength ${streamMaxLength}`, `TemporaryDirectory ${dir}`, 'SelfCheck 0', ...(o.conf ?? []),
  ].join('\n') + '\n');
  // wrap: a command clamd runs under (e.g. in a mount namespace of its own).
  const cmd = [...(o.wrap ?? []), 'clamd', '-c', conf];
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
  const untrack = trackChild(child.pid!);
  const exited = new Promise<void>((r) => child.once('close', () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    untrack();
  };
  onCleanup(stop);
  const client = new ClamdClient(socket, 5_000);
  await pollUntil(async () => {
    if (child.exitCode !== null) throw new Error(`clamd exited: ${stderr}${existsSync(join(dir, 'clamd.log')) ? readFileSync(join(dir, 'clamd.log'), 'utf8') : ''}`);
    return existsSync(socket) && (await client.command('PING').catch(() => '')) === 'PONG';
  }, 'clamd to answer PING', { timeoutMs: 60_000, intervalMs: 50 });
  return { socket, streamMaxLength, stop };
}

/** Serves a raw image read-only through a private unix export and a TLS front end that lets only `identities` in. */
export async function serveOverTls(image: string, o: { serverDir: string; host: string; runDir: string; identities: string[] }): Promise<RemoteExport> {
  const qsd = await startStorageDaemon({ image, format: 'raw', readOnly: true, nbd: { exportName: 'disk' } });
  onCleanup(() => qsd.stop());
  mkdirSync(o.runDir, { recursive: true });
  const exp = await startRemoteExport({
    source: { socket: qsd.nbdSocket!, exportName: qsd.exportName! },
    tlsDir: o.serverDir, identities: o.identities, bind: { host: o.host }, runDir: o.runDir, domain: 'vm1', disk: 'vda',
  });
  onCleanup(() => exp.close());
  return exp;
}

export interface RunningScanner {
  url: string;
  pid: number;
  log(): string;
  stop(): Promise<void>;
}

/**
 * An unprivileged user must reach the built scanner: a checkout in a private directory (`mktemp -d`
 * makes it 0700) gets search permission for others on the directories above it that lack it (no
 * listing, no reading), as an installed copy under /usr/local has.
 */
function letOthersReach(file: string): void {
  for (let d = dirname(file); ; d = dirname(d)) {
    const mode = statSync(d).mode & 0o7777;
    if (!(mode & 0o001)) {
      chmodSync(d, mode | 0o001);
      console.error(`test rig: gave others search permission on ${d} (the scanner runs unprivileged from the build in it)`);
    }
    if (d === dirname(d)) break;
  }
}

/** Runs the built virtcbt-scanner with `config` (listen.port 0), inside `ns` when given; resolves with its address once it listens. */
export async function startScanner(dir: string, config: object, ns?: NetNs, asUser?: string): Promise<RunningScanner> {
  const file = join(dir, `scanner-${Math.random().toString(16).slice(2)}.json`);
  // Nothing saved across restarts unless a test asks (ownerIndex.saveDir): the default is the host's /var/lib.
  const ownerIndex = { saveDir: '', ...(config as { ownerIndex?: object }).ownerIndex };
  // Nor a spool in the host's /run (the default) unless a test names one (clamd.spoolDir).
  const clamd = { spoolDir: '', ...(config as { clamd?: object }).clamd };
  writeFileSync(file, JSON.stringify({ ...config, ownerIndex, clamd }), { mode: 0o644 });
  // As the unit runs it: an unprivileged user with no capabilities and no supplementary groups.
  if (asUser) letOthersReach(SCANNER_MAIN);
  // With the flags the unit gives it.
  const node = [...(asUser ? ['setpriv', `--reuid=${asUser}`, `--regid=${asUser === 'nobody' ? 'nogroup' : asUser}`, '--clear-groups', '--inh-caps=-all', '--', process.execPath] : [process.execPath]), ...SCANNER_NODE_FLAGS];
  const cmd = ns ? ['ip', ['netns', 'exec', ns.name, ...node, SCANNER_MAIN, '--config', file]] as const
    : [node[0]!, [...node.slice(1), SCANNER_MAIN, '--config', file]] as const;
  const child = spawn(cmd[0], [...cmd[1]], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, VIRTCBT_SCANNER_CONFIG: undefined } });
  let log = '';
  child.stderr!.on('data', (c: Buffer) => { log += c.toString(); });
  const untrack = trackChild(child.pid!);
  const exited = new Promise<void>((r) => child.once('close', () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    untrack();
  };
  onCleanup(stop);
  const port = await pollUntil(() => {
    if (child.exitCode !== null) throw new Error(`virtcbt-scanner exited ${child.exitCode}: ${log}`);
    return /info: listening host=\S+ port=(\d+)/.exec(log)?.[1];
  }, 'virtcbt-scanner to listen', { timeoutMs: 30_000, intervalMs: 20 });
  const host = (config as { listen: { host: string } }).listen.host;
  return { url: `https://${host}:${port}`, pid: child.pid!, log: () => log, stop };
}

export interface PostResult {
  status: number;
  events: ScanEvent[];
  result?: ScanResult;
  body: string;
}

/** GET /v1/status of a scanner with the client credentials in `certDir`: the body, or a rejection for a status other than 200. */
export function getScannerStatus(certDir: string, url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(new URL('/v1/status', url), {
      ca: readFileSync(join(certDir, 'ca-cert.pem')), cert: readFileSync(join(certDir, 'client-cert.pem')), key: readFileSync(join(certDir, 'client-key.pem')),
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`status ${res.statusCode}: ${body}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

/** POSTs a job (or anything) to the scanner with the client credentials in `certDir` (ca-cert.pem, and client-cert/key.pem when there). */
export function postScan(url: string, job: ScanJob | object, certDir: string, path = '/v1/scans', o: { signal?: AbortSignal; onEvent?: (e: ScanEvent) => void } = {}): Promise<PostResult> {
  const certFile = join(certDir, 'client-cert.pem');
  const withCert = existsSync(certFile);
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, url), {
      method: 'POST',
      ca: readFileSync(join(certDir, 'ca-cert.pem')),
      ...(withCert ? { cert: readFileSync(certFile), key: readFileSync(join(certDir, 'client-key.pem')) } : {}),
      headers: { 'content-type': 'application/json' },
      signal: o.signal,
    }, (res) => {
      let body = '';
      let seen = 0;
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
        const lines = body.split('\n');
        for (; seen < lines.length - 1; seen++) if (lines[seen]) o.onEvent?.(JSON.parse(lines[seen]!) as ScanEvent);
      });
      res.on('end', () => {
        const events = res.headers['content-type'] === 'application/x-ndjson' ? body.split('\n').filter(Boolean).map((l) => JSON.parse(l) as ScanEvent) : [];
        const result = events.find((e): e is ScanResult => e.type === 'result');
        resolve({ status: res.statusCode ?? 0, events, result, body });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(JSON.stringify(job));
  });
}

export interface ScannerWorld {
  dir: string;
  ns: NetNs;
  clamd: Clamd;
  /** The hypervisor's export credentials (server, on ns.hostAddress) and the scanner's NBD client credentials (CN=scanner). */
  exportServerDir: string;
  scannerNbdDir: string;
  /** The scanner's HTTPS credentials (server, on ns.nsAddress; trusts the hypervisors' CA). */
  scannerTlsDir: string;
  /** Hypervisor client credentials: allowed (CN=hv1), same CA other identity (CN=intruder), another CA (CN=hv1), no certificate. */
  hv: string;
  intruder: string;
  otherCa: string;
  noCert: string;
  /** A scanner config for this world (listen on the namespace's address, port 0). */
  config(extra?: { limits?: Record<string, number> }): object;
  /** Serves an image for the scanner's identity. */
  serve(image: string): Promise<RemoteExport>;
  /** A full-scan job `id` of domain vm1 whose disk vda is `image`, served for the scanner's identity. */
  job(image: string, id: string): Promise<ScanJob>;
}

/** Everything a scanner test needs: namespace, one CA for all, clamd; registered for teardown. */
export async function scannerWorld(dir: string): Promise<ScannerWorld> {
  const { makeNetns } = await import('./netns.js');
  const { makeCa, makeClientDir, makeServerDir } = await import('./tls-certs.js');
  const { copyFileSync } = await import('node:fs');
  const ns = await makeNetns();
  const ca = await makeCa(join(dir, 'ca'), 'virtcbt test CA');
  const other = await makeCa(join(dir, 'other-ca'), 'some other CA');
  const exportServerDir = await makeServerDir(ca, join(dir, 'export-server'), ca, [ns.hostAddress]);
  const scannerNbdDir = await makeClientDir(ca, join(dir, 'scanner-nbd'), ca, 'scanner');
  const scannerTlsDir = await makeServerDir(ca, join(dir, 'scanner-tls'), ca, [ns.nsAddress]);
  const hv = await makeClientDir(ca, join(dir, 'hv1'), ca, 'hv1');
  const intruder = await makeClientDir(ca, join(dir, 'intruder'), ca, 'intruder');
  const otherCa = await makeClientDir(other, join(dir, 'other-ca-hv1'), ca, 'hv1');
  const noCert = join(dir, 'no-cert');
  mkdirSync(noCert);
  copyFileSync(join(hv, 'ca-cert.pem'), join(noCert, 'ca-cert.pem'));
  const clamd = await startClamd(join(dir, 'clamd'));
  // The scanner runs as nobody in the tests (as its own user in the unit): it reaches its
  // credentials, its config and clamd's socket, and nothing else of this test.
  const { chmodSync, chownSync } = await import('node:fs');
  const { execa } = await import('execa');
  const uid = Number((await execa('id', ['-u', 'nobody'])).stdout);
  const gid = Number((await execa('id', ['-g', 'nobody'])).stdout);
  chmodSync(dir, 0o711);
  chmodSync(join(dir, 'clamd'), 0o711);
  // The scanner's spool (clamd.spoolDir): its own, as the unit's RuntimeDirectory is; clamd (root here) reads it.
  const spoolDir = join(dir, 'spool');
  mkdirSync(spoolDir, { mode: 0o750 });
  chownSync(spoolDir, uid, gid);
  for (const d of [scannerNbdDir, scannerTlsDir]) {
    chownSync(d, uid, gid);
    for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem', 'server-cert.pem', 'server-key.pem']) {
      if (existsSync(join(d, f))) chownSync(join(d, f), uid, gid);
    }
  }
  const serve = (image: string) => serveOverTls(image, { serverDir: exportServerDir, host: ns.hostAddress, runDir: join(dir, 'run'), identities: ['CN=scanner'] });
  return {
    dir, ns, clamd, exportServerDir, scannerNbdDir, scannerTlsDir, hv, intruder, otherCa, noCert,
    config: (extra = {}) => ({
      listen: { host: ns.nsAddress, port: 0 },
      tlsDir: scannerTlsDir,
      allowedClients: ['CN=hv1'],
      nbdTlsDir: scannerNbdDir,
      clamd: { socket: clamd.socket, timeoutSeconds: 60, spoolDir },
      limits: { maxFileBytes: 64 * 1024 * 1024, maxFiles: 100_000, maxSeconds: 600, streamMaxLength: clamd.streamMaxLength, concurrency: 4, ...extra.limits },
      maxJobs: 2,
      log: { level: 'info' },
    }),
    serve,
    job: async (image, id) => ({ id, domain: 'vm1', disks: [{ target: 'vda', uri: (await serve(image)).uri, size: statSync(image).size }] }),
  };
}
