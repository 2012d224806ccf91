// The QMP client: greeting and capabilities negotiation, `execute` with id correlation, events, orderly and disorderly close.
import { TimeoutError } from '../util/errors.js';
import { abortReason, deadlineSignal } from '../util/abort.js';
import { QmpCommandError, QmpConnectionError, QmpError, QmpProtocolError } from './errors.js';
import { classify, encodeCommand, type QmpVersion } from './framing.js';
import { JsonConnection, describeTarget, openSocket, parseTarget, type QmpTarget } from './connection.js';
import { EventHub, type QmpEvent, type QmpEventListener, type WaitForOptions } from './events.js';

export interface QmpConnectOptions {
  /** Deadline for connecting, the greeting and capabilities negotiation together. Default 10 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Default deadline for each command; Infinity for none. Default 60 s. */
  commandTimeoutMs?: number;
  /** Longest line accepted from QEMU; see MAX_LINE_BYTES. */
  maxLineBytes?: number;
  /** Names the domain in errors. */
  domain?: string;
  /** Where a throwing event listener is reported; default: process.emitWarning. */
  onListenerError?: (err: unknown, event: QmpEvent) => void;
}

export interface ExecuteOptions {
  /** Overrides the client's commandTimeoutMs for this call. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Anything that runs QMP commands: the client, or a proxy for it. The typed command helpers take this. */
export interface QmpExecutor {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: ExecuteOptions): Promise<T>;
}

interface Pending {
  command: string;
  args: Record<string, unknown> | undefined;
  resolve(value: unknown): void;
  reject(err: Error): void;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 60_000;
// Ids of calls we gave up on (timeout, abort) whose late replies must be dropped, not treated as lies.
// Bounded so a QEMU that never answers cannot grow it without end.
const MAX_ABANDONED = 10_000;

export class QmpClient implements QmpExecutor, AsyncDisposable {
  /** What QEMU said in its greeting. */
  greeting!: { version: QmpVersion; capabilities: string[] };
  /** The socket, for messages. */
  readonly target: string;
  /**
   * Resolves once the connection has ended: with `undefined` after close(), otherwise with the
   * reason (QEMU exited, the peer broke the protocol). Never rejects.
   */
  readonly closed: Promise<Error | undefined>;

  private conn!: JsonConnection;
  private readonly pending = new Map<number, Pending>();
  private readonly abandoned = new Set<number>();
  private readonly events: EventHub;
  private nextId = 1;
  private endedWith: Error | undefined;
  private ended = false;
  private resolveClosed!: (reason: Error | undefined) => void;
  private greetingWaiter: { resolve(): void; reject(err: Error): void } | undefined;
  private readonly commandTimeoutMs: number;
  private readonly domain: string | undefined;

  private constructor(target: string, opts: QmpConnectOptions) {
    this.target = target;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.domain = opts.domain;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.events = new EventHub(
      opts.onListenerError ??
        ((err, ev) => process.emitWarning(`QMP event listener for ${ev.event} threw: ${err instanceof Error ? err.message : String(err)}`)),
    );
  }

  /**
   * Connects, reads the greeting and negotiates capabilities, all within `timeoutMs`.
   * `target`: a unix socket path, `unix:PATH`, `HOST:PORT`, `tcp:HOST:PORT`, `{path}` or `{host, port}`.
   */
  static async connect(target: QmpTarget, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const addr = parseTarget(target);
    const where = describeTarget(addr);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const what = `QMP connect to ${where}`;
    const signal = deadlineSignal({ timeoutMs, signal: opts.signal }, what);
    const socket = await openSocket(addr, signal, 'QMP');
    const client = new QmpClient(where, opts);
    client.conn = new JsonConnection(socket, where, {
      onValue: (v) => client.onValue(v),
      onClose: (reason) => client.onClose(reason),
    }, opts.maxLineBytes);
    try {
      await client.waitGreeting(signal, timeoutMs, opts.signal);
      await client.execute('qmp_capabilities', undefined, { signal, timeoutMs: Infinity });
    } catch (err) {
      const e = err instanceof Error ? err : new QmpError(String(err));
      client.conn.destroy(e);
      await client.closed;
      throw e;
    }
    return client;
  }

  get isOpen(): boolean {
    return !this.ended && this.conn.isOpen;
  }

  /**
   * Runs one command. Many may be in flight; replies are matched by id. Rejects with
   * QmpCommandError when QEMU answers with an error, QmpConnectionError when the connection ends
   * first, TimeoutError at the deadline (the command may still complete in QEMU).
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<T> {
    if (this.ended || !this.conn.isOpen) {
      return Promise.reject(this.closedError(command));
    }
    const what = `QMP ${command}`;
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(abortReason(signal, what));
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        this.pending.delete(id);
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const abandon = (err: Error): void => {
        cleanup();
        this.abandoned.add(id);
        if (this.abandoned.size > MAX_ABANDONED) {
          this.abandoned.delete(this.abandoned.values().next().value as number);
        }
        reject(err);
      };
      const onAbort = (): void => abandon(abortReason(signal!, what));
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(
          () =>
            abandon(
              new TimeoutError(`${what}: no reply from ${this.target} within ${timeoutMs} ms`, {
                domain: this.domain,
                hint: 'QEMU may be hung or very busy; the command may still complete, so check its effect before retrying',
              }),
            ),
          timeoutMs,
        );
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, {
        command,
        args,
        resolve: (v) => {
          cleanup();
          resolve(v as T);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
      this.conn.write(encodeCommand(command, args, id));
    });
  }

  /** Calls `listener` for each event named `name` ('*' for all). Returns the unsubscribe function. */
  on(name: '*', listener: QmpEventListener): () => void;
  on<E extends string>(name: E, listener: QmpEventListener<E>): () => void;
  on<E extends string>(name: E | '*', listener: QmpEventListener<E>): () => void {
    return this.events.on(name as E, listener);
  }

  /**
   * The next event `name` that `predicate` accepts. Register before sending the command that
   * causes it: `const ev = qmp.waitFor('STOP'); await qmp.execute('stop'); await ev;`.
   * Rejects when the connection ends, at `timeoutMs`, or when `signal` fires.
   */
  waitFor<E extends string>(name: E, predicate?: (event: QmpEvent<E>) => boolean, opts?: WaitForOptions): Promise<QmpEvent<E>> {
    return this.events.waitFor(name, predicate, opts);
  }

  /** Orderly close: calls in flight are rejected, the socket is shut down, `closed` resolves with undefined. */
  async close(): Promise<void> {
    if (!this.ended) {
      this.failAll(new QmpConnectionError(`QMP connection to ${this.target} closed by this client`, { domain: this.domain }));
    }
    await this.conn.close();
    await this.closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private waitGreeting(signal: AbortSignal | undefined, timeoutMs: number, callerSignal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.greeting) return resolve();
      if (this.ended) return reject(this.endedWith ?? this.closedError('greeting'));
      const onAbort = (): void => {
        this.greetingWaiter = undefined;
        const reason = abortReason(signal!, 'QMP greeting');
        reject(
          reason instanceof TimeoutError && !callerSignal?.aborted
            ? new TimeoutError(`no QMP greeting from ${this.target} within ${timeoutMs} ms`, {
                domain: this.domain,
                cause: reason,
                hint: 'a QMP socket serves one client at a time: check that no other program (another virtcbtd, a test, socat) holds it, and that this is a QMP socket',
              })
            : reason,
        );
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.greetingWaiter = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject: (err) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
    });
  }

  private onValue(value: unknown): void {
    const msg = classify(value);
    switch (msg.kind) {
      case 'greeting': {
        if (this.greeting) throw new QmpProtocolError(`QMP peer ${this.target} sent a second greeting`, { domain: this.domain });
        this.greeting = { version: msg.version, capabilities: msg.capabilities };
        const w = this.greetingWaiter;
        this.greetingWaiter = undefined;
        w?.resolve();
        return;
      }
      case 'event':
        if (!this.greeting) break;
        this.events.emit({ event: msg.event, data: msg.data, timestamp: msg.timestamp } as QmpEvent);
        return;
      case 'return':
      case 'error': {
        if (!this.greeting) break;
        const id = msg.id;
        const p = typeof id === 'number' ? this.pending.get(id) : undefined;
        if (!p) {
          if (typeof id === 'number' && this.abandoned.delete(id)) return;
          throw new QmpProtocolError(
            `QMP peer ${this.target} sent a reply with ${id === undefined ? 'no id' : `unknown id ${JSON.stringify(id)}`}; closing the connection because replies can no longer be matched to commands`,
            { domain: this.domain },
          );
        }
        if (msg.kind === 'return') p.resolve(msg.value);
        else p.reject(new QmpCommandError(p.command, p.args, msg.error, { domain: this.domain }));
        return;
      }
    }
    throw new QmpProtocolError(`QMP peer ${this.target} did not start with a greeting`, {
      domain: this.domain,
      hint: 'check that the path is a QEMU QMP socket (-qmp), not an HMP monitor or another service',
    });
  }

  private onClose(reason: Error | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.endedWith = reason;
    const err = reason ?? new QmpConnectionError(`QMP connection to ${this.target} closed by this client`, { domain: this.domain });
    const w = this.greetingWaiter;
    this.greetingWaiter = undefined;
    w?.reject(
      reason instanceof QmpConnectionError
        ? new QmpConnectionError(`QMP connection to ${this.target} closed before the greeting`, {
            domain: this.domain,
            cause: reason,
            hint: 'check that this is a QEMU QMP socket and that QEMU is still running',
          })
        : err,
    );
    this.failAll(err);
    this.events.close(err);
    this.resolveClosed(reason);
  }

  private failAll(reason: Error): void {
    for (const p of [...this.pending.values()]) p.reject(this.inFlightError(p.command, reason));
  }

  /** The error a call in flight gets when the connection ends: same class as the reason, naming the command. */
  private inFlightError(command: string, reason: Error): Error {
    const ctx = { domain: this.domain, cause: reason, hint: reason instanceof QmpError ? reason.hint : undefined };
    if (reason instanceof QmpProtocolError) return new QmpProtocolError(`QMP ${command} abandoned: ${reason.message}`, ctx);
    if (reason instanceof QmpConnectionError) return new QmpConnectionError(`QMP ${command} not answered: ${reason.message}`, ctx);
    return reason;
  }

  private closedError(command: string): QmpConnectionError {
    const reason = this.endedWith;
    return new QmpConnectionError(
      `QMP ${command}: connection to ${this.target} is closed${reason ? ` (${reason.message})` : ''}`,
      { domain: this.domain, cause: reason, hint: 'connect again; if QEMU exited, check the domain state' },
    );
  }
}
