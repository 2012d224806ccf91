// The CLI's side of virtcbtd's control API: one request, JSON in and out, and a clear message
// when the daemon is not running or the socket's permissions keep us out.
import { request } from 'node:http';
import { EXIT } from './command.js';
import { VirtcbtError } from '../util/errors.js';

export class DaemonError extends VirtcbtError {
  constructor(message: string, readonly exitCode: number, ctx: { domain?: string; disk?: string; hint?: string; cause?: unknown } = {}) {
    super(message, ctx);
  }
}

export interface CallOptions {
  body?: unknown;
  timeoutMs?: number;
  /** For streaming routes: called with every event; the promise resolves with the last one. */
  onEvent?: (ev: Record<string, unknown>) => void;
}

export async function callDaemon<T = unknown>(socketPath: string, method: string, path: string, opts: CallOptions = {}): Promise<T> {
  const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
  return new Promise<T>((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {},
        timeout: opts.timeoutMs ?? 3_600_000,
      },
      (res) => {
        res.on('error', reject);
        if (opts.onEvent && res.headers['content-type'] === 'application/x-ndjson') {
          // A stream of events: hand each to the caller; the last non-error event is the result.
          let buf = '';
          let last: unknown;
          let failed: Record<string, unknown> | undefined;
          res.on('data', (c: Buffer) => {
            buf += c.toString('utf8');
            let nl: number;
            while ((nl = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, nl);
              buf = buf.slice(nl + 1);
              if (!line.trim()) continue;
              const ev = JSON.parse(line) as Record<string, unknown>;
              if (ev.type === 'error') failed = ev;
              else { last = ev; opts.onEvent!(ev); }
            }
          });
          res.on('end', () => {
            if (failed) {
              reject(new DaemonError(String(failed.message ?? 'failed'), typeof failed.exitCode === 'number' ? failed.exitCode : EXIT.FAILED, {
                domain: failed.domain as string | undefined, disk: failed.disk as string | undefined, hint: failed.hint as string | undefined,
              }));
            } else if (last === undefined) {
              reject(new DaemonError('virtcbtd ended the stream without a result', EXIT.FAILED));
            } else resolve(last as T);
          });
          return;
        }
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let body: Record<string, unknown>;
          try {
            body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
          } catch (cause) {
            return reject(new DaemonError(`virtcbtd sent a reply that is not JSON (HTTP ${res.statusCode})`, EXIT.FAILED, { cause }));
          }
          if ((res.statusCode ?? 500) >= 400) {
            const code = typeof body.exitCode === 'number' ? body.exitCode : res.statusCode === 400 ? EXIT.USAGE : res.statusCode === 404 ? EXIT.NOT_FOUND : EXIT.FAILED;
            return reject(new DaemonError(String(body.message ?? `HTTP ${res.statusCode}`), code, {
              domain: body.domain as string | undefined,
              disk: body.disk as string | undefined,
              hint: body.hint as string | undefined,
            }));
          }
          resolve(body as T);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer from virtcbtd within ${opts.timeoutMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(new DaemonError(`virtcbtd is not running (no daemon at ${socketPath})`, EXIT.DAEMON_DOWN, {
          hint: 'Start it with `systemctl start virtcbtd` (or `virtcbtd &` on a host without systemd)',
          cause: err,
        }));
      } else if (err.code === 'EACCES') {
        reject(new DaemonError(`permission denied on ${socketPath}`, EXIT.DAEMON_DOWN, {
          hint: 'Run as root or as a member of daemon.socketGroup',
          cause: err,
        }));
      } else {
        reject(new DaemonError(`cannot reach virtcbtd at ${socketPath}: ${err.message}`, EXIT.DAEMON_DOWN, { cause: err }));
      }
    });
    if (payload) req.write(payload);
    req.end();
  });
}
