// A raw local file (or block device) as an Endpoint, through an fs.promises FileHandle.
import { execa } from 'execa';
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { UsageError } from '../util/errors.js';
import type { Endpoint, EndpointReadResult } from './endpoint.js';

/** Zeroes are written from this shared buffer (files have no portable "write zeroes" in Node). */
const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

export interface FileEndpointOptions {
  /** Open for writing. */
  write?: boolean;
  /** Open a block device exclusively (O_EXCL): refused while it is mounted or held by another exclusive user. */
  exclusive?: boolean;
  /**
   * Create or truncate the file to `size` bytes: the result is sparse and reads as zeroes, so
   * the engine skips zero ranges instead of writing them.
   */
  create?: {
    size: number;
    /** Fail if the path exists (also as a symlink: nothing is followed) instead of truncating it. */
    exclusive?: boolean;
    /** Permission bits of a new file (before the umask); 0o666 when not given. */
    mode?: number;
  };
}

export class FileEndpoint implements Endpoint {
  readonly maxRequest = 64 * 1024 * 1024;
  readonly alignment = 1;
  /** False once punching holes failed as unsupported here (file system, device): discard writes zeroes. */
  private canPunch = true;

  private constructor(
    readonly name: string,
    private readonly fh: FileHandle,
    readonly size: number,
    readonly zeroInitialized: boolean,
  ) {}

  static async open(path: string, opts: FileEndpointOptions = {}): Promise<FileEndpoint> {
    if (opts.create) {
      const c = opts.create;
      const fh = await open(path, c.exclusive ? constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW : 'w+', c.mode ?? 0o666);
      try {
        await fh.truncate(opts.create.size);
      } catch (err) {
        await fh.close();
        throw err;
      }
      return new FileEndpoint(path, fh, opts.create.size, true);
    }
    const fh = await open(path, (opts.write ? constants.O_RDWR : constants.O_RDONLY) | (opts.exclusive ? constants.O_EXCL : 0));
    const st = await fh.stat();
    let size = st.size;
    if (st.isBlockDevice()) {
      // stat() reports 0 for block devices: their end is where a seek lands.
      size = await blockDeviceSize(fh);
    } else if (!st.isFile()) {
      await fh.close();
      throw new UsageError(`${path} is neither a regular file nor a block device`);
    }
    return new FileEndpoint(path, fh, size, false);
  }

  async read(buf: Uint8Array, offset: number): Promise<EndpointReadResult> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) {
        // Past the end of a file that shrank: what is not there reads as zeroes.
        buf.fill(0, done);
        return { holes: [{ offset: offset + done, length: buf.length - done }] };
      }
      done += bytesRead;
    }
    return { holes: [] };
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
  }

  async zero(offset: number, length: number): Promise<void> {
    for (let at = 0; at < length; at += ZERO_CHUNK.length) {
      await this.write(ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, length - at)), offset + at);
    }
  }

  /**
   * Punches a hole (fallocate PUNCH_HOLE | KEEP_SIZE: the blocks are freed, the range reads as
   * zeroes, partial blocks at the edges are zeroed by the kernel). Node has no fallocate, so
   * util-linux's (Debian: essential) does it on our open file through /proc: one short process
   * per range (callers should merge ranges first). Where punching is not
   * supported (or the tool is missing), the range is written with zeroes instead.
   */
  async discard(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    if (this.canPunch) {
      const r = await execa('fallocate', ['--punch-hole', '--keep-size', '--offset', String(offset), '--length', String(length), `/proc/${process.pid}/fd/${this.fh.fd}`], {
        reject: false, stdin: 'ignore', stdout: 'ignore',
      });
      if (r.exitCode === 0) return;
      if (r.failed && (r.exitCode === undefined || /not supported|ENOENT/i.test(`${r.stderr} ${r.message}`))) this.canPunch = false;
    }
    await this.zero(offset, length);
  }

  async flush(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

async function blockDeviceSize(fh: FileHandle): Promise<number> {
  // Binary search for the last readable byte: Node exposes no BLKGETSIZE64 or lseek(SEEK_END).
  const one = Buffer.alloc(1);
  let lo = 0;
  let hi = 2 ** 50;
  while (lo < hi) {
    const mid = Math.floor((lo + hi + 1) / 2);
    const { bytesRead } = await fh.read(one, 0, 1, mid - 1);
    if (bytesRead === 1) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
