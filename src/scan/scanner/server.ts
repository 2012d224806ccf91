// The scanner's HTTPS API: mutual TLS (the hypervisors' CA), the client certificate's subject checked
// against the allowed identities, POST /v1/scans answered with NDJSON progress and the verdict.
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { SERVER_FILES } from '../../tls/index.js';
import { errorMessage, UsageError, VirtcbtError } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import { NDJSON, SCAN_PATH, type ScanEvent } from '../protocol.js';
import { ClamdClient } from './clamd.js';
import { ClamdSpool } from './clamd-spool.js';
import { OwnerIndexStore } from './owner-indexes.js';
import { checkJob, runScanJob, type ScanJobOptions, type ScanLimits } from './scan-job.js';

/** A job body larger than this is refused (a job with 64 disks of many extents stays far below). */
const MAX_BODY = 64 * 1024 * 1024;

export interface ScannerServerOptions {
  host: string;
  port: number;
  tlsDir: string;
  allowedClients: readonly string[];
  nbdTlsDir: string;
  clamdSocket: string;
  clamdTimeoutMs?: number;
  /** Spool directory for handing files to clamd by path (clamd-spool.ts); empty or absent: INSTREAM only. */
  clamdSpoolDir?: string;
  clamdSpoolMaxFileBytes?: number;
  limits: ScanLimits;
  maxJobs: number;
  /** Memory for owner indexes kept between scans (0: none). */
  ownerIndexBytes?: number;
  /** The owner-index store to use (one read back from a save); default: a new one of ownerIndexBytes. */
  ownerIndexes?: OwnerIndexStore;
  log: Logger;
  /** Tests only: accept plain nbd:// disks. */
  allowPlainNbd?: boolean;
}

export interface ScannerServer extends AsyncDisposable {
  readonly port: number;
  readonly host: string;
  close(): Promise<void>;
}

/**
 * The peer certificate's subject in the form certificateSubject (src/tls) and QEMU's tls-authz use:
 * attributes in the certificate's order, joined with ','. Node prints them in that order, one per line.
 */
export function peerSubject(socket: TLSSocket): string | undefined {
  const cert = socket.getPeerX509Certificate();
  return cert ? cert.subject.split('\n').filter(Boolean).join(',') : undefined;
}

async function readBody(req: IncomingMessage): Promise<string> {
  let size = 0;
  const parts: Buffer[] = [];
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new UsageError(`scan job larger than ${MAX_BODY} bytes`, { hint: 'Send fewer extents (merge them)' });
    parts.push(c);
  }
  return Buffer.concat(parts).toString('utf8');
}

function sendJson(res: ServerResponse, status: number, body: object): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body) + '\n');
}

export async function startScannerServer(o: ScannerServerOptions): Promise<ScannerServer> {
  const read = (f: string) => readFile(join(o.tlsDir, f)).catch((err: NodeJS.ErrnoException) => {
    throw new UsageError(`scanner TLS credentials incomplete: ${join(o.tlsDir, f)}: ${err.code ?? err.message}`, {
      hint: `Put server-cert.pem, server-key.pem and ca-cert.pem (the hypervisors' CA) in ${o.tlsDir} (tlsDir)`,
    });
  });
  const [ca, cert, key] = await Promise.all([read(SERVER_FILES.ca), read(SERVER_FILES.cert), read(SERVER_FILES.key)]);
  const allowed = new Set(o.allowedClients);
  const clamd = new ClamdClient(o.clamdSocket, o.clamdTimeoutMs);
  const spool = new ClamdSpool(o.clamdSpoolDir ?? '', o.clamdSpoolMaxFileBytes ?? 32 * 1024 * 1024, (message, fields) => o.log.warn(message, fields));
  // Spool files of a killed scanner hold a guest's file contents: gone before anything else runs.
  await spool.sweep().then((n) => { if (n > 0) o.log.info('removed spool files a stopped scanner left', { dir: spool.dir, files: n }); },
    (err: unknown) => o.log.warn('cannot prepare the spool directory (clamd.spoolDir): files go to clamd by INSTREAM', { dir: spool.dir, error: errorMessage(err) }));
  // Probed once at start too, so that a clamd which cannot read the spool is in the log (and in
  // GET /v1/status) before the first job; a clamd not up yet is probed again by the next job or
  // the next GET /v1/status.
  void spool.ready(clamd).catch(() => undefined);
  const jobs = new Map<string, AbortController>();
  const ownerIndexes = o.ownerIndexes ?? (o.ownerIndexBytes ? new OwnerIndexStore(o.ownerIndexBytes) : undefined);

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const who = peerSubject(req.socket as TLSSocket);
    // rejectUnauthorized already refused certificates of other CAs and none at all; this is the identity check.
    if (!who || !allowed.has(who)) {
      o.log.warn('refused a client not in allowedClients', { subject: who ?? '(none)', address: req.socket.remoteAddress });
      return sendJson(res, 403, { error: `identity ${who ?? '(no certificate)'} may not post scan jobs`, hint: 'Add it to allowedClients on the scanner' });
    }
    if (req.method === 'GET' && req.url === '/v1/status') {
      let reachable = true;
      const version = await clamd.command('VERSION').catch((err) => { reachable = false; return `unreachable: ${errorMessage(err)}`; });
      if (reachable && !spool.probed) await spool.ready(clamd).catch(() => undefined);
      return sendJson(res, 200, { clamd: version, clamdHandoff: spool.status(), jobs: [...jobs.keys()], ownerIndexes: ownerIndexes?.status() ?? { kept: 0, bytes: 0, maxBytes: 0 } });
    }
    if (req.url !== SCAN_PATH) return sendJson(res, 404, { error: `no ${req.url}`, hint: `POST ${SCAN_PATH}` });
    if (req.method !== 'POST') return sendJson(res, 405, { error: `${req.method} not allowed`, hint: `POST ${SCAN_PATH}` });
    let job;
    try {
      job = checkJob(JSON.parse(await readBody(req)));
    } catch (err) {
      return sendJson(res, 400, { error: (err as Error).message, hint: err instanceof VirtcbtError ? err.hint : 'Send a JSON scan job' });
    }
    if (jobs.has(job.id)) return sendJson(res, 409, { error: `job ${job.id} is already running`, hint: 'Use a new job id' });
    if (jobs.size >= o.maxJobs) return sendJson(res, 503, { error: `${jobs.size} jobs are running (maxJobs)`, hint: 'Try again later or another scanner' });
    const ctl = new AbortController();
    jobs.set(job.id, ctl);
    // A caller that goes away (cancelled, killed) ends its job: nobody would read the verdict.
    res.on('close', () => { if (!res.writableFinished) ctl.abort(new VirtcbtError(`the hypervisor ${who} went away`)); });
    res.writeHead(200, { 'content-type': NDJSON, 'cache-control': 'no-store' });
    const emit = (e: ScanEvent) => { if (!res.destroyed) res.write(JSON.stringify(e) + '\n'); };
    o.log.info('scan job accepted', { job: job.id, domain: job.domain, from: who, disks: job.disks.length });
    emit({ type: 'accepted', id: job.id, domain: job.domain, disks: job.disks.length });
    try {
      const jobOpts: ScanJobOptions = { clamd, spool, nbdTlsDir: o.nbdTlsDir, limits: o.limits, emit, signal: ctl.signal, allowPlainNbd: o.allowPlainNbd,
        ownerIndexes: ownerIndexes && { store: ownerIndexes, client: who },
        // Only when debug lines are written: an incremental scan looks up paths for this log alone.
        onFile: o.log.level === 'debug' ? (disk, partition, path) => o.log.debug('file opened', { job: job.id, disk, partition, path }) : undefined };
      const result = await runScanJob(job, jobOpts);
      o.log.info('scan job done', { job: job.id, domain: job.domain, infected: result.infected.length, files: result.scanned.files, notScanned: result.notScanned.length });
      emit(result);
    } catch (err) {
      o.log.error('scan job failed', { job: job.id, domain: job.domain, error: errorMessage(err) });
      emit({ type: 'error', id: job.id, message: (err as Error).message, hint: err instanceof VirtcbtError ? err.hint : undefined });
    } finally {
      jobs.delete(job.id);
      res.end();
    }
  };

  const server: Server = createServer({ ca, cert, key, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, (req, res) => {
    handle(req, res).catch((err) => {
      o.log.error('request failed', { error: errorMessage(err) });
      if (!res.headersSent) sendJson(res, 500, { error: errorMessage(err) });
      else res.end();
    });
  });
  server.on('tlsClientError', (err, socket) => {
    o.log.warn('TLS handshake refused', { error: err.message, address: socket.remoteAddress });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new VirtcbtError(`cannot listen on ${o.host}:${o.port}: ${err.code ?? err.message}`, {
      cause: err, hint: 'Set listen.host to an address of this host and listen.port to a free port',
    })));
    server.listen({ host: o.host, port: o.port }, () => resolve());
  });
  const { port } = server.address() as { port: number };
  const close = async () => {
    for (const c of jobs.values()) c.abort(new VirtcbtError('the scanner is stopping'));
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { port, host: o.host, close, [Symbol.asyncDispose]: close };
}
