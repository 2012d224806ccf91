// The guest-agent client: ping, info, guest-exec with output, fsfreeze that always thaws, filesystem and disk info, small file reads and writes.
import { TimeoutError } from '../util/errors.js';
import { abortReason, deadlineSignal } from '../util/abort.js';
import { AgentError, AgentUnavailableError, GuestExecError, ThawFailedError } from './errors.js';
import type { AgentCallOptions, AgentTransport } from './transport.js';
import type { GuestAgentInfo, GuestDiskInfo, GuestExecStatus, GuestFilesystemInfo } from './types.js';

export interface ExecOptions {
  /** Fed to the program's stdin (the agent closes stdin after it). */
  input?: string | Uint8Array;
  env?: string[];
  /** Deadline for the program to exit. Default 60 s. It keeps running in the guest after that. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Throw GuestExecError when the program exits non-zero or dies of a signal. Default false. */
  reject?: boolean;
}

export interface ExecResult {
  /** undefined when the program died of a signal. */
  exitCode: number | undefined;
  signal?: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
  stderrBytes: Buffer;
  /** The agent cut the output (qemu-ga keeps at most 16 MiB per stream). */
  truncated: boolean;
}

export interface FrozenOptions {
  /** How long the filesystems may stay frozen, freeze included; then `fn`'s signal fires and the guest is thawed. Default 60 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Deadline for the thaw call itself. Default 30 s. */
  thawTimeoutMs?: number;
}

// guest-exec-status polling: first polls come fast because most programs virtcbt runs finish in
// milliseconds; then the interval grows so a long program does not keep the agent busy.
const POLL_FIRST_MS = 10;
const POLL_MAX_MS = 500;
const POLL_GROWTH = 1.5;
// guest-file-read count per call: qemu-ga caps a read at 48 MiB; sysfs attributes are a few bytes.
const FILE_CHUNK = 64 * 1024;

export class GuestAgent {
  constructor(readonly transport: AgentTransport) {}

  get domain(): string | undefined {
    return this.transport.domain;
  }

  /** Raw access for commands without a wrapper. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: AgentCallOptions): Promise<T> {
    return this.transport.execute<T>(command, args, opts);
  }

  async ping(opts?: AgentCallOptions): Promise<void> {
    await this.transport.execute('guest-ping', undefined, opts);
  }

  /**
   * Polls guest-ping until the agent answers (a booting guest starts its agent late), or fails at
   * the deadline with the last reason.
   */
  async waitReady(opts: { timeoutMs?: number; signal?: AbortSignal; pingTimeoutMs?: number } = {}): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const what = `waiting for the guest agent (${this.transport.description})`;
    const signal = deadlineSignal({ timeoutMs, signal: opts.signal }, what)!;
    let last: unknown;
    for (;;) {
      try {
        await this.ping({ timeoutMs: opts.pingTimeoutMs ?? 2_000, signal });
        return;
      } catch (err) {
        if (!(err instanceof AgentUnavailableError || err instanceof TimeoutError)) throw err;
        last = err;
      }
      if (signal.aborted) {
        const reason = abortReason(signal, what);
        if (opts.signal?.aborted) throw reason;
        throw new AgentUnavailableError(`${what}: no answer within ${timeoutMs} ms: ${last instanceof Error ? last.message : String(last)}`, {
          domain: this.domain,
          cause: last,
          hint: 'check that qemu-guest-agent is installed and running in the guest and that the domain has the agent channel',
        });
      }
      await sleep(200, signal).catch(() => {});
    }
  }

  info(opts?: AgentCallOptions): Promise<GuestAgentInfo> {
    return this.transport.execute<GuestAgentInfo>('guest-info', undefined, opts);
  }

  /** The guest's clock (guest-get-time), in milliseconds since the epoch. */
  async time(opts?: AgentCallOptions): Promise<number> {
    return (await this.transport.execute<number>('guest-get-time', undefined, opts)) / 1e6;
  }

  /** Runs `path` with `args` in the guest and waits for it to exit; output is captured and decoded. */
  async exec(path: string, args: string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const what = `guest-exec ${path}`;
    const signal = deadlineSignal({ timeoutMs, signal: opts.signal }, what)!;
    const req: Record<string, unknown> = { path, arg: args, 'capture-output': true };
    if (opts.env) req.env = opts.env;
    if (opts.input !== undefined) req['input-data'] = Buffer.from(opts.input).toString('base64');
    const { pid } = await this.transport.execute<{ pid: number }>('guest-exec', req, { signal });
    let interval = POLL_FIRST_MS;
    let status: GuestExecStatus;
    for (;;) {
      try {
        status = await this.transport.execute<GuestExecStatus>('guest-exec-status', { pid }, { signal });
      } catch (err) {
        throw this.stillRunning(err, signal, what, pid, timeoutMs, opts.signal);
      }
      if (status.exited) break;
      try {
        await sleep(interval, signal);
      } catch (err) {
        throw this.stillRunning(err, signal, what, pid, timeoutMs, opts.signal);
      }
      interval = Math.min(POLL_MAX_MS, interval * POLL_GROWTH);
    }
    const stdoutBytes = Buffer.from(status['out-data'] ?? '', 'base64');
    const stderrBytes = Buffer.from(status['err-data'] ?? '', 'base64');
    const result: ExecResult = {
      exitCode: status.exitcode,
      stdout: stdoutBytes.toString('utf8'),
      stderr: stderrBytes.toString('utf8'),
      stdoutBytes,
      stderrBytes,
      truncated: !!(status['out-truncated'] || status['err-truncated']),
    };
    if (status.signal !== undefined) result.signal = status.signal;
    if (opts.reject && (result.exitCode !== 0 || result.signal !== undefined)) {
      const how = result.signal !== undefined ? `died of signal ${result.signal}` : `exited with code ${result.exitCode}`;
      const err = result.stderr.trim();
      throw new GuestExecError(`${[path, ...args].join(' ')} ${how} in the guest${err ? `: ${err.slice(0, 500)}` : ''}`, result.exitCode, result.signal, result.stderr, {
        domain: this.domain,
      });
    }
    return result;
  }

  /** Freezes the guest's filesystems; returns how many were frozen. Prefer withFrozen, which always thaws. */
  fsfreeze(opts?: AgentCallOptions): Promise<number> {
    return this.transport.execute<number>('guest-fsfreeze-freeze', undefined, opts);
  }

  /** Thaws the guest's filesystems; returns how many were thawed (0 if none were frozen). */
  thaw(opts?: AgentCallOptions): Promise<number> {
    return this.transport.execute<number>('guest-fsfreeze-thaw', undefined, opts);
  }

  fsfreezeStatus(opts?: AgentCallOptions): Promise<'thawed' | 'frozen'> {
    return this.transport.execute<'thawed' | 'frozen'>('guest-fsfreeze-status', undefined, opts);
  }

  /**
   * Freezes, runs `fn`, and thaws — always: when `fn` returns, throws, outlives `timeoutMs`, or
   * `signal` fires, and also when the freeze itself failed or timed out (it may have frozen some
   * filesystems before). On timeout or abort `fn`'s signal fires and the guest is thawed at once,
   * without waiting for `fn` to notice. If the thaw fails, ThawFailedError carries both errors.
   */
  async withFrozen<T>(fn: (signal: AbortSignal) => Promise<T>, opts: FrozenOptions = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const who = this.domain ?? this.transport.description;
    const what = `work while the filesystems of ${who} are frozen`;
    const ctl = new AbortController();
    const timer = setTimeout(
      () =>
        ctl.abort(
          new TimeoutError(`filesystems of ${who} frozen for ${timeoutMs} ms without the work finishing; thawed them`, {
            domain: this.domain,
            hint: 'raise the freeze timeout or make the frozen step faster (guest writes hang while frozen)',
          }),
        ),
      timeoutMs,
    );
    const deadline = opts.signal ? AbortSignal.any([opts.signal, ctl.signal]) : ctl.signal;
    let ok = false;
    let value: T | undefined;
    let failure: unknown;
    try {
      await this.fsfreeze({ signal: deadline, timeoutMs: Infinity });
      value = await untilAborted(fn(deadline), deadline, what);
      ok = true;
    } catch (err) {
      failure = err;
    } finally {
      clearTimeout(timer);
    }
    try {
      await this.thaw({ timeoutMs: opts.thawTimeoutMs ?? 30_000 });
    } catch (thawErr) {
      throw new ThawFailedError(thawErr, ok ? undefined : failure, { domain: this.domain });
    }
    if (!ok) throw failure;
    return value as T;
  }

  /** guest-get-fsinfo: mounted filesystems with type, usage and the disks under them. */
  getFsinfo(opts?: AgentCallOptions): Promise<GuestFilesystemInfo[]> {
    return this.transport.execute<GuestFilesystemInfo[]>('guest-get-fsinfo', undefined, opts);
  }

  /** guest-get-disks: the guest's block devices and partitions with their bus addresses. */
  getDisks(opts?: AgentCallOptions): Promise<GuestDiskInfo[]> {
    return this.transport.execute<GuestDiskInfo[]>('guest-get-disks', undefined, opts);
  }

  /**
   * Reads a small guest file whole (guest-file-open/read/close), e.g. a sysfs attribute. Fails
   * past `maxBytes` (default 1 MiB) rather than hold a large file in memory.
   */
  async readFile(path: string, opts: AgentCallOptions & { maxBytes?: number } = {}): Promise<Buffer> {
    const maxBytes = opts.maxBytes ?? 1024 * 1024;
    const handle = await this.transport.execute<number>('guest-file-open', { path, mode: 'r' }, opts);
    try {
      const parts: Buffer[] = [];
      let total = 0;
      for (;;) {
        const r = await this.transport.execute<{ count: number; 'buf-b64': string; eof: boolean }>('guest-file-read', { handle, count: FILE_CHUNK }, opts);
        const b = Buffer.from(r['buf-b64'], 'base64');
        parts.push(b);
        total += b.length;
        if (total > maxBytes) throw new AgentError(`guest file ${path} is larger than ${maxBytes} bytes`, { domain: this.domain });
        if (r.eof || b.length === 0) return Buffer.concat(parts);
      }
    } finally {
      await this.transport.execute('guest-file-close', { handle }, { timeoutMs: opts.timeoutMs }).catch(() => undefined);
    }
  }

  /** Creates or truncates a guest file and writes `data` (guest-file-open "w"/write/close). */
  async writeFile(path: string, data: string | Uint8Array, opts: AgentCallOptions = {}): Promise<void> {
    const handle = await this.transport.execute<number>('guest-file-open', { path, mode: 'w' }, opts);
    try {
      const buf = Buffer.from(data);
      if (buf.length > 0) await this.transport.execute('guest-file-write', { handle, 'buf-b64': buf.toString('base64') }, opts);
    } finally {
      await this.transport.execute('guest-file-close', { handle }, { timeoutMs: opts.timeoutMs }).catch(() => undefined);
    }
  }

  close(): Promise<void> {
    return this.transport.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private stillRunning(err: unknown, signal: AbortSignal, what: string, pid: number, timeoutMs: number, caller?: AbortSignal): unknown {
    if (!signal.aborted) return err;
    if (caller?.aborted) return abortReason(caller, what);
    return new TimeoutError(`${what} (guest pid ${pid}) did not exit within ${timeoutMs} ms`, {
      domain: this.domain,
      cause: err,
      hint: 'the program keeps running in the guest; the agent cannot stop it',
    });
  }
}

/** `p`, or the signal's reason as soon as it fires (p is left to settle on its own, its rejection handled). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  p.catch(() => {});
  if (signal.aborted) return Promise.reject(abortReason(signal, what));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortReason(signal, what));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortReason(signal, 'sleep'));
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(abortReason(signal, 'sleep'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

