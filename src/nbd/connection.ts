// One NBD connection: socket, TLS upgrade, handshake, in-flight table keyed by cookie, bounded
// window, request timeouts, orderly DISC and disorderly close rejecting everything pending.
import * as net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { abortReason } from '../util/abort.js';
import { TimeoutError } from '../util/errors.js';
import { NbdCommandError, NbdProtocolError } from './errors.js';
import { describe, listExports, negotiate, type ExportInfo, type ExportListing, type HandshakeIo, type ServerDescription } from './handshake.js';
import { NBD_CMD_DISC, NBD_CMD_WRITE, NBD_OPT_ABORT, REQUEST_HEADER_SIZE } from './protocol.js';
import { ReplyParser, type InflightRequest, type ReplySink } from './reply-parser.js';
import { optionRequest, writeRequestHeader } from './serializer.js';
import { describeAddress, formatNbdUri, type NbdTarget } from './uri.js';

export interface ConnectionOptions {
  /** Metadata contexts to negotiate. */
  metaContexts?: readonly string[];
  /** Handshake deadline, and how long requests may go without any byte from the server. */
  timeoutMs?: number;
  /**
   * The job's signal, for the connection's whole life: when it aborts, the handshake or every
   * request in flight (and every later one) fails with its reason and the socket is closed.
   */
  signal?: AbortSignal;
  /** Requests in flight at most (the window). */
  inflight?: number;
}

/**
 * Bytes read from the socket per read call outside READ payloads (headers, small chunks, and
 * dropped payloads). A little above a unix socket's default send buffer (208 KiB), so one read
 * takes everything the server could queue, always into the same cache-hot memory.
 */
const SCRATCH_SIZE = 256 * 1024;
/** READ payload left to come above which the socket reads straight into the caller's buffer. */
const DIRECT_MIN = 16 * 1024;
export const DEFAULT_TIMEOUT_MS = 60_000;
/** Requests in flight per connection: as many as the copy engine's default workers (src/copy). */
export const DEFAULT_INFLIGHT = 64;
const MAX_COOKIE = 0xffff_ffff;
const REFUSED_CERT_HINT = 'the server probably refused our client certificate (wrong CA, or not allowed by its tls-authz): check client-cert.pem and the server log';

interface Pending extends InflightRequest {
  resolve(req: InflightRequest): void;
  reject(err: Error): void;
}

type Phase = 'connecting' | 'handshake' | 'transmission' | 'closing' | 'closed';

/** Exact reads over a stream of chunks, for the handshake only (small, so copying is fine). */
class ByteQueue {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter: { n: number; resolve(b: Buffer): void; reject(e: Error): void } | undefined;
  private failure: Error | undefined;

  get length(): number {
    return this.have;
  }

  push(b: Buffer): void {
    this.chunks.push(b);
    this.have += b.length;
    this.wake();
  }

  fail(err: Error): void {
    this.failure ??= err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
  }

  read(n: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (!w || this.have < w.n) return;
    this.waiter = undefined;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, w.n);
    const rest = all.subarray(w.n);
    this.chunks = rest.length ? [rest] : [];
    this.have = rest.length;
    w.resolve(out);
  }
}

export class NbdConnection implements ReplySink {
  readonly target: NbdTarget;
  readonly what: string;
  info!: ExportInfo;

  private socket: net.Socket | TLSSocket;
  private raw: net.Socket;
  private phase: Phase = 'connecting';
  private readonly queue = new ByteQueue();
  private parser!: ReplyParser;
  private readonly table = new Map<number, Pending>();
  private nextCookie = 1;
  private readonly window: number;
  private active = 0;
  private readonly waiters: Array<{ resolve(): void; reject(e: Error): void }> = [];
  private drained: Promise<void> | undefined;
  private failure: Error | undefined;
  private readonly timeoutMs: number;
  private lastProgress = Date.now();
  private watchdog: NodeJS.Timeout | undefined;
  private readonly scratch = Buffer.allocUnsafe(SCRATCH_SIZE);
  private direct: Uint8Array | undefined;
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;
  /** Rejects when the connection fails, so a handshake step never outlives it. */
  private readonly failedPromise: Promise<never>;
  private rejectFailed!: (e: Error) => void;
  private discSent = false;

  private constructor(target: NbdTarget, opts: ConnectionOptions) {
    this.target = target;
    this.what = formatNbdUri(target);
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.window = Math.max(1, opts.inflight ?? DEFAULT_INFLIGHT);
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
    this.failedPromise = new Promise<never>((_, reject) => (this.rejectFailed = reject));
    this.failedPromise.catch(() => {});
    const a = target.address;
    const where = a.kind === 'unix' ? { path: a.path } : { host: a.host, port: a.port };
    // Plain connections read through `onread`: one reused scratch buffer, or the READ
    // destination itself, so payload bytes are copied at most once and never concatenated.
    // A connection that will start TLS reads with 'data' events, which the TLS layer takes over.
    // No Nagle: a request is one small write awaited by its reply; delayed, every metadata read of
    // a filesystem walk over TCP waited for the peer's delayed ACK (~40 ms each).
    this.raw = target.tls
      ? net.connect({ ...where, noDelay: true })
      : net.connect({
          ...where,
          noDelay: true,
          onread: {
            buffer: () => this.nextBuffer(),
            callback: (n: number, buf: Uint8Array) => { this.onRead(n, buf); return true; },
          },
        });
    this.socket = this.raw;
    if (target.tls) this.raw.on('data', this.onData);
    this.watch(this.raw);
  }

  /** Connects and negotiates up to the transmission phase. */
  static async open(target: NbdTarget, opts: ConnectionOptions = {}): Promise<NbdConnection> {
    const c = new NbdConnection(target, opts);
    await c.during(opts, 'handshake', async () => {
      await c.connected();
      c.phase = 'handshake';
      c.info = await negotiate(c.io(opts.signal), { exportName: target.exportName, tls: target.tls, metaContexts: opts.metaContexts, what: c.what });
      if (c.queue.length) throw new NbdProtocolError(`NBD server ${c.what} sent ${c.queue.length} unexpected bytes after the handshake`);
      c.parser = new ReplyParser(c, { structured: c.info.structuredReplies });
      c.phase = 'transmission';
      c.watchdog = setInterval(() => c.checkTimeout(), Math.max(50, Math.min(5000, c.timeoutMs / 4)));
      c.watchdog.unref();
    });
    c.bindSignal(opts.signal);
    return c;
  }

  /** NBD_OPT_INFO + LIST_META_CONTEXT without entering transmission, then close. */
  static async describe(target: NbdTarget, opts: ConnectionOptions = {}): Promise<ServerDescription> {
    const c = new NbdConnection(target, opts);
    try {
      return await c.during(opts, 'handshake', async () => {
        await c.connected();
        c.phase = 'handshake';
        return describe(c.io(opts.signal), { exportName: target.exportName, tls: target.tls, what: c.what });
      });
    } finally {
      c.endSoon();
    }
  }

  /** NBD_OPT_LIST, then close. */
  static async list(target: NbdTarget, opts: ConnectionOptions = {}): Promise<ExportListing[]> {
    const c = new NbdConnection(target, opts);
    try {
      return await c.during(opts, 'handshake', async () => {
        await c.connected();
        c.phase = 'handshake';
        return listExports(c.io(opts.signal), { tls: target.tls, what: c.what });
      });
    } finally {
      c.endSoon();
    }
  }

  /** After the handshake: an abort fails the connection (requests in flight reject with the reason). */
  private bindSignal(signal: AbortSignal | undefined): void {
    if (!signal) return;
    const onAbort = () => this.fail(abortReason(signal, `NBD requests to ${this.what}`));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    void this.closedPromise.then(() => signal.removeEventListener('abort', onAbort));
  }

  /** Runs a handshake step under the deadline and signal; on failure the socket is destroyed. */
  private async during<T>(opts: ConnectionOptions, what: string, fn: () => Promise<T>): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const timer = setTimeout(
      () => this.fail(new TimeoutError(`NBD ${what} with ${this.what}: no answer within ${timeoutMs} ms`, {
        hint: 'check that the server is running and reachable',
      })),
      timeoutMs,
    );
    const onAbort = () => this.fail(abortReason(opts.signal!, `NBD ${what} with ${this.what}`));
    if (opts.signal?.aborted) onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const result = await Promise.race([fn(), this.failedPromise]);
      if (this.failure) throw this.failure;
      return result;
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      // The server refused something but the link is fine: say goodbye with NBD_OPT_ABORT.
      const graceful = !this.failure && this.phase === 'handshake' && !this.target.tls;
      if (graceful) this.socket.write(optionRequest(NBD_OPT_ABORT));
      this.fail(e, graceful);
      throw this.failure ?? err;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  private connected(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      const onErr = (e: Error) => reject(e);
      this.raw.once('connect', () => {
        this.raw.off('error', onErr);
        resolve();
      });
      this.raw.once('error', onErr);
    });
  }

  private io(signal?: AbortSignal): HandshakeIo {
    return {
      read: (n) => this.queue.read(n),
      write: (b) => { this.socket.write(b); },
      startTls: async () => {
        this.raw.off('data', this.onData);
        // Loaded on demand: node:tls costs start-up time that plain connections need not pay.
        const { upgradeSocket } = await import('./tls.js');
        const t = await upgradeSocket(this.raw, this.target, this.what, signal);
        this.socket = t;
        t.on('data', this.onData);
        this.watch(t);
      },
    };
  }

  private watch(s: net.Socket): void {
    s.on('error', (err) => this.fail(new NbdProtocolError(`NBD connection to ${this.what} failed${this.afterTls()}: ${err.message}`, {
      cause: err,
      hint: this.afterTls() ? REFUSED_CERT_HINT : 'check that the server is running and the address is right',
    })));
    s.on('close', () => {
      if (this.phase !== 'closing' && this.phase !== 'closed') {
        const pending = this.table.size;
        const midReply = this.parser && !this.parser.idle;
        this.fail(new NbdProtocolError(
          `NBD server ${this.what} closed the connection${this.afterTls() || (this.phase === 'handshake' || this.phase === 'connecting' ? ' during the handshake' : '')}` +
            (midReply ? ' in the middle of a reply' : '') + (pending ? ` with ${pending} requests in flight` : ''),
          { hint: this.afterTls() ? REFUSED_CERT_HINT : 'look at the server log (qemu-nbd, QEMU)' },
        ));
      }
      this.phase = 'closed';
      this.resolveClosed();
    });
    // A half-close from the server ends the conversation: close our side too.
    s.on('end', () => s.destroy());
  }

  /**
   * With TLS 1.3 the server checks our certificate after the client considers the handshake
   * done, so a refused certificate shows up as a reset on the first option after it.
   */
  private afterTls(): string {
    return this.phase === 'handshake' && this.socket !== this.raw ? ' right after the TLS handshake' : '';
  }

  private nextBuffer(): Uint8Array {
    if (this.phase === 'transmission') {
      const d = this.parser.directTarget(DIRECT_MIN);
      if (d) return (this.direct = d);
    }
    this.direct = undefined;
    return this.scratch;
  }

  private onRead(n: number, buf: Uint8Array): void {
    if (this.phase === 'transmission') {
      this.lastProgress = Date.now();
      try {
        if (buf === this.direct) this.parser.advanceDirect(n);
        else this.parser.feed(buf.subarray(0, n));
      } catch (err) {
        this.fail(err as Error);
      }
    } else if (this.phase === 'handshake' || this.phase === 'connecting') {
      this.queue.push(Buffer.from(buf.subarray(0, n)));
    } else if (this.phase === 'closing' && this.discSent) {
      this.fail(new NbdProtocolError(`NBD server ${this.what} sent data after NBD_CMD_DISC`));
    }
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.phase === 'transmission') {
      this.lastProgress = Date.now();
      try {
        this.parser.feed(chunk);
      } catch (err) {
        this.fail(err as Error);
      }
    } else if (this.phase === 'handshake' || this.phase === 'connecting') {
      this.queue.push(chunk);
    } else if (this.phase === 'closing' && this.discSent) {
      this.fail(new NbdProtocolError(`NBD server ${this.what} sent data after NBD_CMD_DISC`));
    }
  };

  private checkTimeout(): void {
    if (this.table.size === 0) return;
    const idle = Date.now() - this.lastProgress;
    if (idle >= this.timeoutMs) {
      this.fail(new TimeoutError(`NBD server ${this.what} sent nothing for ${idle} ms with ${this.table.size} requests in flight`, {
        hint: 'the server hung or the link dropped; the connection was closed, retry the operation',
      }));
    }
  }

  /** Closes disorderly: every pending request and waiter is rejected with `err`. */
  fail(err: Error, graceful = false): void {
    if (this.failure) return;
    this.failure = err;
    this.rejectFailed(err);
    if (this.watchdog) clearInterval(this.watchdog);
    this.queue.fail(err);
    if (graceful) this.endSoon();
    else {
      this.socket.destroy();
      this.raw.destroy();
    }
    if (this.phase !== 'closed') this.phase = 'closing';
    for (const p of this.table.values()) p.reject(err);
    this.table.clear();
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  get failed(): Error | undefined {
    return this.failure;
  }

  get inflight(): number {
    return this.table.size;
  }

  // ReplySink
  lookup(cookie: number): InflightRequest | undefined {
    return this.table.get(cookie);
  }

  complete(req: InflightRequest): void {
    const p = req as Pending;
    this.table.delete(p.cookie);
    this.release();
    if (p.error) {
      const where = `at offset ${p.error.offset ?? p.offset} length ${p.length} on ${this.what}`;
      p.reject(new NbdCommandError(p.command, p.error.errno, p.error.message, where));
    } else p.resolve(p);
  }

  private acquire(): Promise<void> | undefined {
    if (this.failure) return Promise.reject(this.failure);
    if (this.phase !== 'transmission') return Promise.reject(new NbdProtocolError(`NBD connection to ${this.what} is closed`));
    if (this.active < this.window) {
      this.active++;
      return undefined;
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private release(): void {
    const w = this.waiters.shift();
    if (w) w.resolve();
    else this.active--;
  }

  /**
   * Sends one request and resolves with it once its final reply arrived (rejects with
   * NbdCommandError if the server reported an error, NbdProtocolError if the connection broke).
   * `buf` receives READ data; `payload` is WRITE data (not copied: keep it unchanged until then).
   */
  async request(
    command: number, flags: number, offset: number, length: number,
    extra: { buf?: Uint8Array; payload?: Uint8Array; contextId?: number } = {},
  ): Promise<InflightRequest> {
    const wait = this.acquire();
    if (wait) await wait;
    if (this.drained) await this.drained;
    if (this.failure) {
      this.release();
      throw this.failure;
    }
    let cookie = this.nextCookie;
    while (this.table.has(cookie)) cookie = cookie >= MAX_COOKIE ? 1 : cookie + 1;
    this.nextCookie = cookie >= MAX_COOKIE ? 1 : cookie + 1;
    const header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
    writeRequestHeader(header, 0, flags, command, cookie, offset, length);
    return new Promise<InflightRequest>((resolve, reject) => {
      const p: Pending = { cookie, command, offset, length, buf: extra.buf, contextId: extra.contextId, resolve, reject };
      if (this.table.size === 0) this.lastProgress = Date.now();
      this.table.set(cookie, p);
      let ok: boolean;
      if (command === NBD_CMD_WRITE && extra.payload) {
        this.socket.cork();
        this.socket.write(header);
        ok = this.socket.write(extra.payload);
        this.socket.uncork();
      } else ok = this.socket.write(header);
      if (!ok && !this.drained) {
        // Bounded by the window anyway; waiting for 'drain' keeps the kernel, not us, buffering.
        this.drained = new Promise<void>((r) => {
          const done = () => {
            this.socket.off('drain', done);
            this.socket.off('close', done);
            this.drained = undefined;
            this.lastProgress = Date.now();
            r();
          };
          this.socket.on('drain', done);
          this.socket.on('close', done);
        });
      }
    });
  }

  /** Orderly close: waits for in-flight requests, sends NBD_CMD_DISC, ends the stream. */
  async disconnect(): Promise<void> {
    if (this.phase === 'closed') return;
    if (this.failure) {
      await this.closedPromise;
      return;
    }
    // Take every window slot: no new request can start, and all in flight have finished.
    const slots: Promise<void>[] = [];
    for (let i = 0; i < this.window; i++) {
      const w = this.acquire();
      if (w) slots.push(w);
    }
    await Promise.allSettled(slots);
    if (!this.failure && this.phase === 'transmission') {
      this.phase = 'closing';
      this.discSent = true;
      if (this.watchdog) clearInterval(this.watchdog);
      const header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
      writeRequestHeader(header, 0, 0, NBD_CMD_DISC, 0, 0, 0);
      this.socket.end(header);
      this.endSoon();
    }
    await this.closedPromise;
  }

  /** Ends the stream and destroys it if the server does not close within a short grace period. */
  private endSoon(): void {
    if (this.phase === 'closed') return;
    if (this.phase !== 'closing') {
      this.phase = 'closing';
      this.socket.end();
    }
    const t = setTimeout(() => this.socket.destroy(), Math.min(2000, this.timeoutMs));
    t.unref();
    void this.closedPromise.then(() => clearTimeout(t));
  }

  get closed(): Promise<void> {
    return this.closedPromise;
  }

  toString(): string {
    return `NBD ${describeAddress(this.target.address)} export "${this.target.exportName}"`;
  }
}
