// The CLI's side of virtcbtd's control API: one HTTP request over the unix socket, JSON in and
// out (or a stream of JSON lines), and a clear message when the daemon is not running or the
// socket's permissions keep us out. Plain node:net and our own response parser: see http-response.ts.
import { connect } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { EXIT } from './command.js';
import { HttpResponseParser } from './http-response.js';
import { VirtcbtError, type ErrorContext } from '../util/errors.js';
import { groupSocketPath, type VirtcbtConfig } from '../../config/schema.js';

/** What virtcbtd answered with an error, or why it could not be asked; ends the CLI with the code virtcbtd sent. */
export class DaemonError extends VirtcbtError {
  constructor(message: string, exitCode: number, ctx: Omit<ErrorContext, 'exitCode'> = {}) {
    super(message, { ...ctx, exitCode });
  }
}

/**
 * The socket this process talks to virtcbtd through: root's own (mode 0600, every right) when it
 * runs as root, else the group socket (daemon.socketGroup's members, backups only into
 * backup.allowedRepoRoots).
 */
export function daemonSocket(cfg: Pick<VirtcbtConfig, 'daemon'>): string {
  return process.geteuid?.() === 0 ? cfg.daemon.socket : groupSocketPath(cfg);
}

export interface CallOptions {
  body?: unknown;
  timeoutMs?: number;
  /** For streaming routes: called with every event; the promise resolves with the last one. */
  onEvent?: (ev: Record<string, unknown>) => void;
}

export async function callDaemon<T = unknown>(socketPath: string, method: string, path: string, opts: CallOptions = {}): Promise<T> {
  const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body), 'utf8');
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      sock.destroy();
      reject(err);
    };
    const succeed = (v: T) => {
      if (settled) return;
      settled = true;
      sock.end();
      resolve(v);
    };
    let status = 0;
    let streaming = false;
    // A stream of events: each goes to the caller; the last non-error event is the result.
    // Chunks end anywhere, also inside a multi-byte UTF-8 character (a domain "vm-ü", a note with
    // an emoji): the decoder keeps such a character's first bytes until the rest arrives, where
    // decoding each chunk on its own would turn both halves into U+FFFD.
    const utf8 = new StringDecoder('utf8');
    let lineBuf = '';
    let last: unknown;
    let failed: Record<string, unknown> | undefined;
    const chunks: Buffer[] = [];
    const parser = new HttpResponseParser({
      head: (h) => {
        status = h.status;
        streaming = !!opts.onEvent && h.headers['content-type'] === 'application/x-ndjson';
      },
      data: (c) => {
        if (!streaming) return void chunks.push(c);
        lineBuf += utf8.write(c);
        let nl: number;
        while ((nl = lineBuf.indexOf('\n')) >= 0) {
          const line = lineBuf.slice(0, nl);
          lineBuf = lineBuf.slice(nl + 1);
          if (!line.trim()) continue;
          const ev = JSON.parse(line) as Record<string, unknown>;
          if (ev.type === 'error') failed = ev;
          else { last = ev; opts.onEvent!(ev); }
        }
      },
      end: () => {
        if (streaming) {
          if (failed) {
            return fail(new DaemonError(String(failed.message ?? 'failed'), typeof failed.exitCode === 'number' ? failed.exitCode : EXIT.FAILED, {
              domain: failed.domain as string | undefined, disk: failed.disk as string | undefined, hint: failed.hint as string | undefined,
            }));
          }
          if (last === undefined) return fail(new DaemonError('virtcbtd ended the stream without a result', EXIT.FAILED));
          return succeed(last as T);
        }
        let body: Record<string, unknown>;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
        } catch (cause) {
          return fail(new DaemonError(`virtcbtd sent a reply that is not JSON (HTTP ${status})`, EXIT.FAILED, { cause }));
        }
        if (status >= 400) {
          const code = typeof body.exitCode === 'number' ? body.exitCode : status === 400 ? EXIT.USAGE : status === 404 ? EXIT.NOT_FOUND : EXIT.FAILED;
          return fail(new DaemonError(String(body.message ?? `HTTP ${status}`), code, {
            domain: body.domain as string | undefined,
            disk: body.disk as string | undefined,
            hint: body.hint as string | undefined,
          }));
        }
        succeed(body as T);
      },
    });
    const sock = connect(socketPath, () => {
      const head = [
        `${method} ${path} HTTP/1.1`, 'Host: virtcbtd', 'Connection: close',
        ...(payload ? ['Content-Type: application/json', `Content-Length: ${payload.length}`] : []),
      ].join('\r\n') + '\r\n\r\n';
      sock.write(payload ? Buffer.concat([Buffer.from(head, 'latin1'), payload]) : head);
    });
    const timeoutMs = opts.timeoutMs ?? 3_600_000;
    sock.setTimeout(timeoutMs, () => fail(new DaemonError(`no answer from virtcbtd within ${timeoutMs} ms`, EXIT.FAILED)));
    sock.on('data', (c: Buffer) => {
      try {
        parser.push(c);
      } catch (err) {
        fail(new DaemonError(`virtcbtd's reply is not understood: ${(err as Error).message}`, EXIT.FAILED, { cause: err }));
      }
    });
    sock.on('end', () => {
      try {
        parser.close();
      } catch (err) {
        fail(new DaemonError(`virtcbtd closed the connection early: ${(err as Error).message}`, EXIT.FAILED, { cause: err }));
      }
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        fail(new DaemonError(`virtcbtd is not running (no daemon at ${socketPath})`, EXIT.DAEMON_DOWN, {
          hint: process.geteuid?.() === 0
            ? 'Start it with `systemctl start virtcbtd` (or `virtcbtd &` on a host without systemd)'
            : 'Start it with `systemctl start virtcbtd`; if it runs, it serves this socket only when daemon.socketGroup is set (or run as root)',
          cause: err,
        }));
      } else if (err.code === 'EACCES') {
        fail(new DaemonError(`permission denied on ${socketPath}`, EXIT.DAEMON_DOWN, {
          hint: 'Run as root or as a member of daemon.socketGroup',
          cause: err,
        }));
      } else {
        fail(new DaemonError(`cannot reach virtcbtd at ${socketPath}: ${err.message}`, EXIT.DAEMON_DOWN, { cause: err }));
      }
    });
  });
}
