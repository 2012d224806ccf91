// The hypervisor's client of a scanner host (virtcbt-scanner): one HTTPS request with mutual TLS
// per scan job, the job in the body, NDJSON events back (progress, then the verdict). The scanner
// must present a certificate of the configured CA naming its host; we present ours.
import { request } from 'node:https';
import { loadCredentials } from '../nbd/tls.js';
import { VirtcbtError, errorMessage } from '../util/errors.js';

export interface ScannerConfig {
  name: string;
  /** https://HOST:PORT of the scanner's API. */
  url: string;
  /** The scanner's client identity (subject DN) its NBD reads present: the only one the export lets in. */
  identity: string;
  /** This host's credentials for the API: ca-cert.pem (the scanner's CA), client-cert.pem, client-key.pem. */
  tlsDir: string;
}

export class ScannerUnreachableError extends VirtcbtError {}

/**
 * POSTs `body` to the scanner's `path` and hands every NDJSON event to `onEvent`; resolves with
 * the last event (the verdict). A scanner that cannot be reached or refuses us rejects with a
 * ScannerUnreachableError before anything was scanned (the next scanner may be tried).
 */
export function postScan(s: ScannerConfig, path: string, body: unknown, o: { signal?: AbortSignal; onEvent?: (ev: Record<string, unknown>) => void; connectTimeoutMs?: number }): Promise<Record<string, unknown>> {
  const creds = loadCredentials(s.tlsDir);
  const url = new URL(path, s.url);
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = request(url, {
      method: 'POST', ca: creds.ca, cert: creds.cert, key: creds.key, signal: o.signal,
      headers: { 'content-type': 'application/json' },
      timeout: o.connectTimeoutMs ?? 10_000,
    }, (res) => {
      answered = true;
      req.setTimeout(0);
      if (res.statusCode !== 200) {
        let text = '';
        res.on('data', (c: Buffer) => { text = (text + c.toString()).slice(0, 2000); });
        res.on('end', () => reject(new ScannerUnreachableError(`scanner ${s.name} refused the scan (HTTP ${res.statusCode}): ${text.trim()}`, {
          hint: res.statusCode === 403 ? `Add this host's identity to the scanner's allowed hypervisors` : 'See the scanner\'s log',
        })));
        return;
      }
      let buf = '';
      let last: Record<string, unknown> | undefined;
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          try {
            last = JSON.parse(line) as Record<string, unknown>;
          } catch {
            res.destroy(new VirtcbtError(`scanner ${s.name} sent a line that is not JSON`));
            return;
          }
          o.onEvent?.(last);
        }
      });
      res.on('end', () => {
        if (!last || last.type === 'error') {
          reject(new VirtcbtError(`scanner ${s.name} ended the scan without a verdict${last ? `: ${String(last.message ?? '')}` : ''}`, { hint: 'See the scanner\'s log' }));
        } else resolve(last);
      });
      res.on('error', (err) => reject(new VirtcbtError(`scanner ${s.name}: the scan's stream broke: ${errorMessage(err)}`, { cause: err })));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${o.connectTimeoutMs ?? 10_000} ms`)));
    req.on('error', (err) => {
      if (o.signal?.aborted) return reject(o.signal.reason);
      reject(answered
        ? new VirtcbtError(`scanner ${s.name}: ${errorMessage(err)}`, { cause: err })
        : new ScannerUnreachableError(`scanner ${s.name} at ${s.url} cannot be reached: ${errorMessage(err)}`, {
          cause: err, hint: 'Check that virtcbt-scanner runs there, its address and port, and that both sides trust each other\'s CA',
        }));
    });
    req.end(JSON.stringify(body));
  });
}

/**
 * Whether the scanner answers and lets us in (GET /v1/status with our certificate), within
 * `timeoutMs`: asked before a snapshot is taken for it, so the snapshot's pass is that scanner's.
 */
export function probeScanner(s: ScannerConfig, o: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
  const creds = loadCredentials(s.tlsDir);
  return new Promise((resolve, reject) => {
    const req = request(new URL('/v1/status', s.url), { method: 'GET', ca: creds.ca, cert: creds.cert, key: creds.key, signal: o.signal, timeout: o.timeoutMs ?? 5_000 }, (res) => {
      res.resume();
      if (res.statusCode === 200) resolve();
      else reject(new ScannerUnreachableError(`scanner ${s.name} refused us (HTTP ${res.statusCode})`, { hint: 'Add this host\'s identity to the scanner\'s allowed hypervisors' }));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${o.timeoutMs ?? 5_000} ms`)));
    req.on('error', (err) => reject(new ScannerUnreachableError(`scanner ${s.name} at ${s.url} cannot be reached: ${errorMessage(err)}`, {
      cause: err, hint: 'Check that virtcbt-scanner runs there, its address and port, and that both sides trust each other\'s CA',
    })));
    req.end();
  });
}
