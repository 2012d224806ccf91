// Guest agent over QEMU's agent chardev (a unix socket): one command at a time, resync after connect and after any timeout.
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { TimeoutError } from '../util/errors.js';
import { abortReason } from '../util/abort.js';
import { LineSplitter } from '../qmp/index.js';
import { AgentCommandError, AgentError, AgentProtocolError, AgentUnavailableError } from './errors.js';
import { encodeAgentCommand, encodeSync, isSyncReply, newSyncId, parseAgentReply, type AgentReply } from './framing.js';
import type { AgentCallOptions, AgentTransport } from './transport.js';

export interface SocketTransportOptions {
  /** Names the domain in errors. */
  domain?: string;
  /** Deadline for connecting to the socket. Default 5 s. */
  connectTimeoutMs?: number;
  /** Deadline for the agent to answer guest-sync-delimited. Default 5 s. */
  syncTimeoutMs?: number;
  /** Default deadline per command. Default 30 s. */
  commandTimeoutMs?: number;
}

// Agent replies are small; guest-exec-status carries at most 16 MiB of output (qemu-ga's cap),
// base64-encoded, for each of stdout and stderr.
const MAX_LINE_BYTES = 64 * 1024 * 1024;

type LineHandler = (line: Buffer) => void;

/**
 * The agent serves one client at a time and has no greeting and no way to tell a fresh reply
 * from one meant for a call we gave up on. So calls are serialized, and before the first call on
 * a connection and after any call that did not finish, the stream is resynchronized with
 * guest-sync-delimited: everything up to the matching sync reply is discarded.
 */
export class SocketTransport implements AgentTransport {
  readonly description: string;
  readonly domain: string | undefined;
  private socket: net.Socket | undefined;
  private lines = new LineSplitter(MAX_LINE_BYTES);
  private onLine: LineHandler | undefined;
  private onGone: ((err: Error) => void) | undefined;
  private needSync = true;
  private queue: Promise<unknown> = Promise.resolve();
  private nextId = 1;
  // Per-transport prefix so ids never repeat those of an earlier process on the same socket.
  private readonly idPrefix = `virtcbt-${randomBytes(4).toString('hex')}-`;
  private closed = false;
  private readonly connectTimeoutMs: number;
  private readonly syncTimeoutMs: number;
  private readonly commandTimeoutMs: number;

  constructor(
    readonly path: string,
    opts: SocketTransportOptions = {},
  ) {
    this.description = `guest agent socket ${path}`;
    this.domain = opts.domain;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 5_000;
    this.syncTimeoutMs = opts.syncTimeoutMs ?? 5_000;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 30_000;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: AgentCallOptions = {}): Promise<T> {
    const run = (): Promise<T> => this.run<T>(command, args, opts);
    const p = this.queue.then(run, run);
    // The queue only orders calls; each caller sees its own result.
    this.queue = p.catch(() => {});
    return p;
  }

  async close(): Promise<void> {
    this.closed = true;
    const s = this.socket;
    this.drop(new AgentUnavailableError(`${this.description}: closed by this client`, { domain: this.domain }));
    if (s && !s.destroyed) {
      await new Promise<void>((resolve) => {
        s.once('close', () => resolve());
        s.end();
        setTimeout(() => s.destroy(), 1000).unref();
      });
    }
  }

  private async run<T>(command: string, args: Record<string, unknown> | undefined, opts: AgentCallOptions): Promise<T> {
    if (this.closed) throw new AgentUnavailableError(`${this.description}: transport is closed`, { domain: this.domain });
    const what = `guest agent ${command}`;
    if (opts.signal?.aborted) throw abortReason(opts.signal, what);
    if (!this.socket) await this.connect(opts.signal);
    if (this.needSync) await this.sync(opts.signal);
    const id = `${this.idPrefix}${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    const reply = await this.exchange<AgentReply>(encodeAgentCommand(command, args, id), timeoutMs, opts.signal, what, (line, done) => {
      const r = parseAgentReply(line);
      // The agent echoes `id`; a reply with another id is a leftover of an abandoned call.
      if (!r || (r.id !== undefined && r.id !== id)) return;
      done(r);
    });
    if (reply.kind === 'error') throw new AgentCommandError(command, reply.error, { domain: this.domain });
    return reply.value as T;
  }

  private async sync(signal: AbortSignal | undefined): Promise<void> {
    const id = newSyncId();
    await this.exchange(encodeSync(id), this.syncTimeoutMs, signal, 'guest agent sync', (line, done) => {
      if (isSyncReply(line, id)) done(true);
    });
    this.needSync = false;
  }

  /**
   * Writes `bytes` and hands each line to `match` until it calls done. On timeout or abort the
   * stream is marked for resync (a late reply must not be taken for the next call's).
   */
  private exchange<R>(
    bytes: Buffer,
    timeoutMs: number,
    signal: AbortSignal | undefined,
    what: string,
    match: (line: Buffer, done: (r: R) => void) => void,
  ): Promise<R> {
    const socket = this.socket;
    if (!socket) return Promise.reject(new AgentUnavailableError(`${what}: not connected`, { domain: this.domain }));
    return new Promise<R>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (): void => {
        this.onLine = undefined;
        this.onGone = undefined;
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const abandon = (err: Error): void => {
        finish();
        this.needSync = true;
        reject(err);
      };
      const onAbort = (): void => abandon(abortReason(signal!, what));
      this.onLine = (line) => {
        try {
          match(line, (r) => {
            finish();
            resolve(r);
          });
        } catch (err) {
          abandon(err instanceof Error ? err : new AgentProtocolError(String(err)));
        }
      };
      this.onGone = (err) => {
        finish();
        reject(err);
      };
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => abandon(this.timeoutError(what, timeoutMs)), timeoutMs);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.write(bytes);
    });
  }

  private timeoutError(what: string, ms: number): TimeoutError {
    const sync = what === 'guest agent sync';
    return new TimeoutError(`${what}: no answer on ${this.path} within ${ms} ms`, {
      domain: this.domain,
      hint: sync
        ? 'is qemu-guest-agent running in the guest (and the guest booted)? Only one client may use the agent socket at a time'
        : 'the guest may be busy or hung; the command may still complete in the guest',
    });
  }

  private connect(signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const s = net.createConnection({ path: this.path });
      let timer: NodeJS.Timeout | undefined;
      const settle = (err?: Error): void => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        s.off('connect', onConnect);
        s.off('error', onError);
        if (err) {
          s.destroy();
          reject(err);
        } else {
          resolve();
        }
      };
      const onConnect = (): void => {
        this.attach(s);
        settle();
      };
      const onError = (err: NodeJS.ErrnoException): void => settle(this.connectError(err));
      const onAbort = (): void => settle(abortReason(signal!, `${this.description}: connect`));
      s.once('connect', onConnect);
      s.once('error', onError);
      signal?.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(
        () => settle(new TimeoutError(`${this.description}: could not connect within ${this.connectTimeoutMs} ms`, { domain: this.domain })),
        this.connectTimeoutMs,
      );
    });
  }

  private attach(s: net.Socket): void {
    this.socket = s;
    this.lines = new LineSplitter(MAX_LINE_BYTES);
    this.needSync = true;
    let failure: AgentError | undefined;
    s.on('data', (chunk: Buffer) => {
      if (this.socket !== s) return;
      try {
        this.lines.push(chunk, (line) => this.onLine?.(line));
      } catch (err) {
        // Oversize line: this stream cannot be trusted any more.
        failure = new AgentProtocolError(err instanceof Error ? err.message : String(err), { domain: this.domain, cause: err });
        s.destroy();
      }
    });
    s.on('error', (err: NodeJS.ErrnoException) => {
      failure ??= new AgentUnavailableError(`${this.description}: ${err.code ?? err.message}`, { domain: this.domain, cause: err });
    });
    s.on('close', () => {
      if (this.socket !== s) return;
      this.drop(
        failure ??
          new AgentUnavailableError(`${this.description}: connection closed`, {
            domain: this.domain,
            hint: 'QEMU exited or dropped the agent channel; the next call reconnects',
          }),
      );
    });
  }

  /** Forget the socket; the call in flight (if any) fails with `err`, the next call reconnects. */
  private drop(err: AgentError): void {
    const s = this.socket;
    this.socket = undefined;
    this.needSync = true;
    const gone = this.onGone;
    this.onGone = undefined;
    this.onLine = undefined;
    gone?.(err);
    if (s && !this.closed) s.destroy();
  }

  private connectError(err: NodeJS.ErrnoException): AgentUnavailableError {
    const hint =
      'check that QEMU runs with the agent channel (-chardev socket,path=PATH,server=on,wait=off and ' +
      '-device virtserialport,name=org.qemu.guest_agent.0) for this path';
    switch (err.code) {
      case 'ENOENT':
        return new AgentUnavailableError(`${this.description} does not exist`, { domain: this.domain, cause: err, hint });
      case 'ECONNREFUSED':
        return new AgentUnavailableError(`${this.description}: connection refused (QEMU has probably exited)`, { domain: this.domain, cause: err, hint });
      default:
        return new AgentUnavailableError(`${this.description}: cannot connect: ${err.code ?? err.message}`, { domain: this.domain, cause: err, hint });
    }
  }
}
