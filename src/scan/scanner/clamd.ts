// A clamd client over its unix socket: sessions (IDSESSION) carry file after file, one session per
// file in flight, so every clamd thread is busy. A file goes as an INSTREAM stream, or by the path
// of a spool file clamd can read (SCAN; clamd-spool.ts).
import { connect, type Socket } from 'node:net';
import { VirtcbtError } from '../../util/errors.js';

/** clamd reads each INSTREAM chunk into memory whole; 1 MiB is what readChunks hands out. */
const MAX_CHUNK = 1024 * 1024;
const INSTREAM = Buffer.from('zINSTREAM\0');
const END = Buffer.alloc(4);
/** A reply longer than this is not clamd's. */
const MAX_REPLY = 64 * 1024;

export type ClamdVerdict =
  | { status: 'clean' }
  | { status: 'found'; signature: string }
  /**
   * clamd stopped at one of its own limits (clamd.conf MaxFileSize, MaxScanSize, MaxRecursion, ...)
   * and, with AlertExceedsMax, said so as Heuristics.Limits.Exceeded.NAME: the file was not scanned
   * in whole. Without AlertExceedsMax clamd answers such a file OK.
   */
  | { status: 'limit'; limit: string }
  /** clamd refused the stream (StreamMaxLength exceeded, its own limits): the file was not scanned. */
  | { status: 'error'; message: string };

/** The chunk header: INSTREAM's 4-byte big-endian length (zero ends the stream). */
export function chunkHeader(length: number): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32BE(length, 0);
  return h;
}

/**
 * Parses clamd's reply to zINSTREAM ("stream: OK", "stream: NAME FOUND", "... ERROR") or to zSCAN
 * of `subject`, a path ("PATH: OK", ...), NUL-terminated.
 */
export function parseReply(reply: string, subject = 'stream'): ClamdVerdict {
  const r = reply.replace(/\0+$/, '').trim();
  const prefix = `${subject}: `;
  if (r.startsWith(prefix)) {
    const rest = r.slice(prefix.length);
    if (rest === 'OK') return { status: 'clean' };
    const found = /^(.+) FOUND$/.exec(rest);
    const limit = found && /^Heuristics\.Limits\.Exceeded\.([A-Za-z0-9_.]+)$/.exec(found[1]!);
    if (limit) return { status: 'limit', limit: limit[1]! };
    if (found) return { status: 'found', signature: found[1]! };
  }
  if (/ERROR$/.test(r)) return { status: 'error', message: r.replace(/ ERROR$/, '') };
  throw new VirtcbtError(`clamd answered ${subject === 'stream' ? 'INSTREAM' : `SCAN ${subject}`} with something unexpected: ${JSON.stringify(r.slice(0, 200))}`, {
    hint: 'Check that the socket is clamd\'s (clamd.conf LocalSocket)',
  });
}

export class ClamdClient {
  constructor(
    readonly socketPath: string,
    /** A stream that takes longer than this (clamd hung) fails. */
    readonly timeoutMs = 120_000,
  ) {}

  private open(signal?: AbortSignal): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const s = connect(this.socketPath);
      const fail = (err: Error) => {
        s.destroy();
        reject(new VirtcbtError(`cannot reach clamd on ${this.socketPath}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, {
          cause: err, hint: 'Start clamd (systemctl start clamav-daemon) and check scanner.clamdSocket',
        }));
      };
      s.once('error', fail);
      s.once('connect', () => {
        s.off('error', fail);
        resolve(s);
      });
      // Removed with the connection: a job's signal outlives many of them.
      const onAbort = () => s.destroy();
      signal?.addEventListener('abort', onAbort, { once: true });
      s.once('close', () => signal?.removeEventListener('abort', onAbort));
    });
  }

  /** Sends a whole command (zPING, zVERSION) and returns the reply. */
  async command(cmd: 'PING' | 'VERSION', signal?: AbortSignal): Promise<string> {
    const s = await this.open(signal);
    const reply = new Promise<string>((resolve, reject) => {
      let text = '';
      // A hung clamd must not hang the caller (GET /v1/status asks for the version).
      const timer = setTimeout(() => s.destroy(), this.timeoutMs);
      s.on('data', (c: Buffer) => {
        text += c.toString('utf8');
        if (text.length > MAX_REPLY) s.destroy();
      });
      s.once('close', () => {
        clearTimeout(timer);
        if (text === '' || text.length > MAX_REPLY) reject(new VirtcbtError(`clamd on ${this.socketPath} gave no answer to ${cmd}`, { hint: 'Look at clamd\'s log' }));
        else resolve(text);
      });
      s.on('error', () => undefined);
    });
    s.end(`z${cmd}\0`);
    return (await reply).replace(/\0+$/, '').trim();
  }

  /**
   * A clamd session (IDSESSION): file after file on one connection, each scanned by one of
   * clamd's threads while the next is sent. Saves a connection, a thread hand-over and a close per
   * file; one session per file in flight keeps every thread busy.
   */
  async session(signal?: AbortSignal): Promise<ClamdSession> {
    return new ClamdSession(await this.open(signal), this.socketPath, this.timeoutMs);
  }
}

/**
 * One IDSESSION connection. Replies come as "N: reply" NUL-terminated, one per command; a session
 * sends one INSTREAM at a time and reads its reply before the next (as clamd requires). After a
 * failure, an error reply (clamd may close the session after one) or a timeout, the session is
 * `broken`: the caller opens another.
 */
export class ClamdSession {
  private text = '';
  private waiting?: { resolve: (line: string) => void; reject: (err: Error) => void };
  private ended?: Error;
  broken = false;

  constructor(private readonly s: Socket, private readonly socketPath: string, private readonly timeoutMs: number) {
    s.write('zIDSESSION\0');
    s.on('data', (c: Buffer) => {
      this.text += c.toString('utf8');
      if (this.text.length > MAX_REPLY) return void s.destroy(new Error('reply too long'));
      const at = this.text.indexOf('\0');
      if (at < 0) return;
      const line = this.text.slice(0, at);
      this.text = this.text.slice(at + 1);
      const w = this.waiting;
      this.waiting = undefined;
      if (w) w.resolve(line);
      else s.destroy(new Error(`unasked reply ${JSON.stringify(line.slice(0, 200))}`));
    });
    s.on('error', (err) => {
      // clamd closes its end after a size-limit error while we still write: the reply is what counts.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EPIPE' && code !== 'ECONNRESET') this.ended ??= err;
    });
    s.once('close', () => {
      this.broken = true;
      const err = new VirtcbtError(`clamd on ${socketPath} closed the connection without an answer${this.ended ? `: ${this.ended.message}` : ''}`, {
        // clamd stopping or restarting (a package upgrade, the OOM killer) looks like this too.
        cause: this.ended, hint: 'clamd stopped or dropped the request: see clamd\'s log (journalctl -u clamav-daemon) and whether it is running; the job can be run again once it is',
      });
      this.ended ??= err;
      const w = this.waiting;
      this.waiting = undefined;
      w?.reject(err);
    });
  }

  /**
   * One command of the session: `send` writes it, and clamd's reply about `subject` ("stream" or a
   * path) is its verdict. A timeout or a failure while sending breaks the session; an error reply
   * ends it (clamd may close a session after one).
   */
  private async request(subject: string, send: (s: Socket) => Promise<void>): Promise<ClamdVerdict> {
    if (this.broken) throw this.ended ?? new VirtcbtError(`clamd session on ${this.socketPath} is closed`);
    const s = this.s;
    const reply = new Promise<string>((resolve, reject) => { this.waiting = { resolve, reject }; });
    // An abort closes the socket while a chunk is still being read: the reply fails before it is
    // awaited, which must not count as an unhandled rejection (it would end the process).
    reply.catch(() => undefined);
    const timer = setTimeout(() => { this.broken = true; s.destroy(new Error(`no answer within ${this.timeoutMs} ms`)); }, this.timeoutMs);
    try {
      await send(s);
      const verdict = parseReply((await reply).replace(/^\d+: /, ''), subject);
      if (verdict.status === 'error') this.close();
      return verdict;
    } catch (err) {
      this.broken = true;
      s.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Streams `chunks` with INSTREAM and returns clamd's verdict. Each chunk goes out in one write
   * together with its length (and the command before the first, the end mark after the last): a
   * file of up to 1 MiB is one system call.
   */
  scan(chunks: AsyncIterable<Uint8Array>): Promise<ClamdVerdict> {
    return this.request('stream', async (s) => {
      const send = (parts: Uint8Array[]) => new Promise<void>((resolve) => {
        if (s.destroyed || s.writableEnded) return resolve();
        s.cork();
        parts.forEach((b, i) => (i === parts.length - 1 ? s.write(b, () => resolve()) : s.write(b)));
        s.uncork();
      });
      // One part held back, so the last one leaves with the end mark.
      let held: Uint8Array[] = [INSTREAM];
      for await (const chunk of chunks) {
        if (s.destroyed) break;
        for (let at = 0; at < chunk.length; at += MAX_CHUNK) {
          const part = chunk.subarray(at, Math.min(chunk.length, at + MAX_CHUNK));
          if (held.length > 1) {
            // Waiting for the write (not only for drain) keeps at most one chunk queued per file.
            await send(held);
            held = [];
          }
          held.push(chunkHeader(part.length), part);
        }
      }
      await send([...held, END]);
    });
  }

  /**
   * Has clamd scan the file at `path` (SCAN: one file, archives opened as for a stream) and returns
   * its verdict. The path comes from the spool (no newline, no NUL).
   */
  scanPath(path: string): Promise<ClamdVerdict> {
    return this.request(path, async (s) => { s.write(`zSCAN ${path}\0`); });
  }

  /** Ends the session (zEND); a broken one is just closed. */
  close(): void {
    if (!this.broken && !this.s.destroyed) this.s.end('zEND\0');
    else this.s.destroy();
    this.broken = true;
  }
}
