// A clamd client for INSTREAM over its unix socket: one connection per file, so several files can be scanned at once (one clamd thread each).
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
  /** clamd refused the stream (StreamMaxLength exceeded, its own limits): the file was not scanned. */
  | { status: 'error'; message: string };

/** The chunk header: INSTREAM's 4-byte big-endian length (zero ends the stream). */
export function chunkHeader(length: number): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32BE(length, 0);
  return h;
}

/** Parses clamd's reply to zINSTREAM ("stream: OK", "stream: NAME FOUND", "... ERROR"), NUL-terminated. */
export function parseReply(reply: string): ClamdVerdict {
  const r = reply.replace(/\0+$/, '').trim();
  if (r === 'stream: OK') return { status: 'clean' };
  const found = /^stream: (.+) FOUND$/.exec(r);
  if (found) return { status: 'found', signature: found[1]! };
  if (/ERROR$/.test(r)) return { status: 'error', message: r.replace(/ ERROR$/, '') };
  throw new VirtcbtError(`clamd answered INSTREAM with something unexpected: ${JSON.stringify(r.slice(0, 200))}`, {
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
      // Removed with the connection: a job's signal outlives thousands of them.
      const onAbort = () => s.destroy();
      signal?.addEventListener('abort', onAbort, { once: true });
      s.once('close', () => signal?.removeEventListener('abort', onAbort));
    });
  }

  /** Sends a whole command (zPING, zVERSION) and returns the reply. */
  async command(cmd: 'PING' | 'VERSION', signal?: AbortSignal): Promise<string> {
    const s = await this.open(signal);
    const reply = this.reply(s);
    s.end(`z${cmd}\0`);
    return (await reply).replace(/\0+$/, '').trim();
  }

  private reply(s: Socket): Promise<string> {
    return new Promise((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => s.destroy(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      s.on('data', (c: Buffer) => {
        text += c.toString('utf8');
        if (text.length > MAX_REPLY) s.destroy(new Error('reply too long'));
        // The reply ends with NUL; clamd then closes the connection.
        if (text.includes('\0')) s.end();
      });
      s.once('close', () => {
        clearTimeout(timer);
        if (text === '') reject(new VirtcbtError(`clamd on ${this.socketPath} closed the connection without an answer`, { hint: 'Look at clamd\'s log' }));
        else resolve(text);
      });
      s.on('error', (err) => {
        // clamd closes its end after a size-limit error while we still write: the reply is what counts.
        if ((err as NodeJS.ErrnoException).code === 'EPIPE' || (err as NodeJS.ErrnoException).code === 'ECONNRESET') return;
        clearTimeout(timer);
        reject(new VirtcbtError(`clamd on ${this.socketPath}: ${err.message}`, { cause: err, hint: 'Look at clamd\'s log' }));
      });
    });
  }

  /**
   * Streams `chunks` to clamd with INSTREAM and returns its verdict. Each chunk goes out in one
   * write together with its length (and the command before the first, the end mark after the last):
   * a file of up to 1 MiB is one system call, not five.
   */
  async scan(chunks: AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<ClamdVerdict> {
    const s = await this.open(signal);
    const reply = this.reply(s);
    // An abort closes the socket while a chunk is still being read: the reply fails before it is
    // awaited, which must not count as an unhandled rejection (it would end the process).
    reply.catch(() => undefined);
    const send = (parts: Uint8Array[]) => new Promise<void>((resolve) => {
      if (s.destroyed || s.writableEnded) return resolve();
      s.cork();
      parts.forEach((b, i) => (i === parts.length - 1 ? s.write(b, () => resolve()) : s.write(b)));
      s.uncork();
    });
    try {
      // One part held back, so the last one leaves with the end mark.
      let held: Uint8Array[] = [INSTREAM];
      for await (const chunk of chunks) {
        if (s.destroyed || s.writableEnded) break;
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
    } catch (err) {
      s.destroy();
      await reply.catch(() => undefined);
      throw err;
    }
    return parseReply(await reply);
  }
}
