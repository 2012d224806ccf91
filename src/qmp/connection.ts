// The socket under a QMP client: connect with a deadline, feed bytes to the framing, report one close reason.
import net from 'node:net';
import { TimeoutError } from '../util/errors.js';
import { abortReason } from '../util/abort.js';
import { QmpConnectionError, QmpError } from './errors.js';
import { JsonLineDecoder } from './framing.js';

/** Where QMP listens: a unix socket path, `unix:PATH`, `HOST:PORT`, `tcp:HOST:PORT`, or the object forms. */
export type QmpTarget = string | { path: string } | { host: string; port: number };

export type SocketAddress = { path: string } | { host: string; port: number };

/** Normalizes a target; a bare string is a path unless it looks like `host:port` and has no slash. */
export function parseTarget(target: QmpTarget): SocketAddress {
  if (typeof target !== 'string') return target;
  if (target.startsWith('unix:')) return { path: target.slice(5) };
  const tcp = target.startsWith('tcp:') ? target.slice(4) : target;
  const m = /^(\[[^\]]+\]|[^:/\s]+):(\d{1,5})$/.exec(tcp);
  if (m && !target.includes('/')) {
    const host = m[1].startsWith('[') ? m[1].slice(1, -1) : m[1];
    return { host, port: Number(m[2]) };
  }
  return { path: target };
}

export function describeTarget(addr: SocketAddress): string {
  return 'path' in addr ? addr.path : `${addr.host.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}`;
}

/** Opens a stream socket; the errors say which socket and what to check, and a deadline or abort ends the attempt. */
export function openSocket(addr: SocketAddress, signal: AbortSignal | undefined, what: string): Promise<net.Socket> {
  const where = describeTarget(addr);
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal, `${what}: connect to ${where}`));
      return;
    }
    const socket = 'path' in addr ? net.createConnection({ path: addr.path }) : net.createConnection({ host: addr.host, port: addr.port });
    const done = (): void => {
      socket.off('connect', onConnect);
      socket.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
    };
    const onConnect = (): void => {
      done();
      resolve(socket);
    };
    const onError = (err: NodeJS.ErrnoException): void => {
      done();
      socket.destroy();
      reject(connectError(err, addr, what));
    };
    const onAbort = (): void => {
      done();
      socket.destroy();
      const reason = abortReason(signal!, what);
      reject(
        reason instanceof TimeoutError
          ? new TimeoutError(`${what}: could not connect to ${where} in time`, { cause: reason, hint: 'check that the host and port are reachable' })
          : reason,
      );
    };
    socket.once('connect', onConnect);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function connectError(err: NodeJS.ErrnoException, addr: SocketAddress, what: string): QmpConnectionError {
  const where = describeTarget(addr);
  const isPath = 'path' in addr;
  switch (err.code) {
    case 'ENOENT':
      return new QmpConnectionError(`${what}: socket ${where} does not exist`, {
        cause: err,
        hint: 'check that QEMU is running and was started with -qmp unix:PATH,server=on,wait=off for this path',
      });
    case 'ECONNREFUSED':
      return new QmpConnectionError(`${what}: connection to ${where} refused`, {
        cause: err,
        hint: isPath
          ? 'nothing listens on this socket: QEMU has probably exited and left the file behind'
          : 'nothing listens on this port: check that QEMU is running and the -qmp address',
      });
    case 'EACCES':
    case 'EPERM':
      return new QmpConnectionError(`${what}: permission denied on ${where}`, {
        cause: err,
        hint: 'run as a user that may open the socket (root, or the group owning it)',
      });
    case 'ENOTSOCK':
      return new QmpConnectionError(`${what}: ${where} is not a socket`, { cause: err, hint: 'check the configured QMP socket path' });
    default:
      return new QmpConnectionError(`${what}: cannot connect to ${where}: ${err.message}`, { cause: err });
  }
}

export interface JsonConnectionHandlers {
  /** One parsed JSON value per line, in order. Throwing here closes the connection with that error. */
  onValue(value: unknown): void;
  /** Called exactly once: `undefined` after a close we asked for, otherwise the reason. */
  onClose(reason: Error | undefined): void;
}

// After close() sends FIN, how long to wait for the peer's before cutting the socket: QEMU closes at once.
const CLOSE_GRACE_MS = 1000;

/** A connected socket speaking newline-delimited JSON, with one place where it ends. */
export class JsonConnection {
  private readonly decoder: JsonLineDecoder;
  private failure: Error | undefined;
  private closing = false;
  private finished = false;
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    private readonly socket: net.Socket,
    private readonly where: string,
    private readonly handlers: JsonConnectionHandlers,
    maxLineBytes?: number,
  ) {
    this.decoder = new JsonLineDecoder(maxLineBytes);
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A peer that dies with our bytes unread resets the connection instead of closing it.
      const reset = err.code === 'ECONNRESET' || err.code === 'EPIPE';
      this.failure ??= reset
        ? new QmpConnectionError(`connection to ${where} closed by the peer (${err.code})`, {
            cause: err,
            hint: 'QEMU exited or was killed; check the domain state and the QEMU log',
          })
        : new QmpConnectionError(`connection to ${where} failed: ${err.code ?? err.message}`, { cause: err });
    });
    socket.on('close', () => this.finish());
  }

  get isOpen(): boolean {
    return !this.finished && !this.closing && !this.socket.destroyed;
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Orderly close: FIN, then wait for the peer to close (cut after a grace period). */
  async close(): Promise<void> {
    if (!this.finished && !this.closing) {
      this.closing = true;
      this.socket.end();
      const t = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS);
      t.unref();
      await this.closedPromise;
      clearTimeout(t);
    }
    await this.closedPromise;
  }

  /** Disorderly close with a reason: pending work is told `err`. */
  destroy(err: Error): void {
    this.failure ??= err;
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    if (this.finished || this.failure) return;
    try {
      this.decoder.push(chunk, (v) => {
        if (!this.failure) this.handlers.onValue(v);
      });
    } catch (err) {
      this.destroy(err instanceof Error ? err : new QmpError(String(err)));
    }
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    let reason = this.failure;
    if (!reason && !this.closing) {
      reason = new QmpConnectionError(`connection to ${this.where} closed by the peer`, {
        hint: 'QEMU exited or closed the monitor; check the domain state and the QEMU log',
      });
    }
    this.handlers.onClose(reason);
    this.resolveClosed();
  }
}
