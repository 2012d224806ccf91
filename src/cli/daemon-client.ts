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
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
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
