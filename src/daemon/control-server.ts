// virtcbtd's control API: HTTP + JSON over unix sockets. The root socket (0600) has every right;
// the group socket (0660, daemon.socketGroup) serves the same routes to callers the handlers may
// restrict (see Caller). The CLI is the only intended client; errors travel as JSON with the same
// fields VirtcbtError carries.
import { chmod, chown, link, lstat, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { EXIT, UsageError, VirtcbtError, errorMessage, exitCodeOf } from '../util/errors.js';
import { AlreadyRunningError } from './instance-lock.js';

/**
 * Who called, as far as the socket tells: `root` came through the root-only socket, `group`
 * through the group socket (any member of daemon.socketGroup). Node cannot read SO_PEERCRED, so
 * the socket a request came through is the credential.
 */
export type Caller = 'root' | 'group';

export interface Request {
  method: string;
  path: string;
  params: Record<string, string>;
  query: URLSearchParams;
  body: Record<string, unknown>;
  caller: Caller;
}

export type Handler = (req: Request) => Promise<unknown>;

interface Route {
  method: string;
  pattern: RegExp;
  keys: string[];
  handler: Handler;
}

/** Largest request body accepted: commands are small; anything bigger is a mistake or abuse. */
const MAX_BODY = 1 << 20;

export interface ListenOptions {
  caller: Caller;
  /** 0600 for the root socket, 0660 for the group socket. */
  mode: number;
  /** Group owning the socket (the group socket). */
  group?: string;
}

export interface ControlServerOptions {
  /** Turns an error into the one the caller sees (e.g. SQLite's "disk full" into one naming the change log). */
  mapError?: (err: unknown) => unknown;
}

export class ControlServer {
  private routes: Route[] = [];
  private servers: { server: Server; path: string; ino?: number }[] = [];

  constructor(private readonly opts: ControlServerOptions = {}) {}

  /** `path` like /v1/domains/:domain/consumers/:name */
  route(method: string, path: string, handler: Handler): this {
    const keys: string[] = [];
    const pattern = new RegExp(
      '^' + path.replace(/:([a-z]+)/g, (_, k: string) => { keys.push(k); return '([^/]+)'; }) + '$',
    );
    this.routes.push({ method, pattern, keys, handler });
    return this;
  }

  /**
   * Listens on `socketPath`. A socket file that another process answers on is left alone (that
   * daemon keeps working: this one refuses to start); one nobody answers on is a dead daemon's
   * and is replaced.
   */
  async listen(socketPath: string, opts: ListenOptions): Promise<void> {
    await mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });
    await removeStaleSocket(socketPath);
    const server = createServer((req, res) => void this.dispatch(req, res, opts.caller));
    // Bound in a private (0700) directory, given its mode and group there, then renamed into
    // place: no one may connect before it has its final permissions (and the process umask,
    // which other work running meanwhile depends on, is left alone).
    const priv = await mkdtemp(join(dirname(socketPath), '.virtcbtd-'));
    const tmp = join(priv, 'sock');
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(tmp, () => resolve());
      });
      this.servers.push({ server, path: socketPath });
      if (opts.group) {
        const gid = Number((await execa('getent', ['group', opts.group], { reject: false })).stdout.split(':')[2]);
        if (!Number.isInteger(gid)) throw new UsageError(`daemon.socketGroup '${opts.group}' is not a group on this host`, { hint: 'Create the group (groupadd) or fix daemon.socketGroup in the config' });
        await chown(tmp, 0, gid);
      }
      await chmod(tmp, opts.mode);
      // link() fails if the path exists: a daemon that bound it meanwhile keeps it.
      await link(tmp, socketPath).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
        throw new AlreadyRunningError(`another virtcbtd took ${socketPath} while this one started`, { cause: err, hint: 'Run only one virtcbtd per socket' });
      });
      this.servers[this.servers.length - 1]!.ino = (await lstat(socketPath)).ino;
    } finally {
      await rm(priv, { recursive: true, force: true });
    }
  }

  /**
   * Stops listening and ends every connection; with `graceMs`, replies under way (a cancelled
   * backup's last event, saying so) get that long to reach their clients first.
   */
  async close(opts: { graceMs?: number } = {}): Promise<void> {
    const servers = this.servers;
    this.servers = [];
    await Promise.all(servers.map(async ({ server, path, ino }) => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      if (opts.graceMs) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([closed, new Promise<void>((r) => { timer = setTimeout(r, opts.graceMs); })]);
        clearTimeout(timer);
      }
      server.closeAllConnections();
      await closed;
      // Only our own socket file goes (never one another daemon made at the same path).
      const st = await lstat(path).catch(() => undefined);
      if (ino !== undefined && st?.ino === ino) await rm(path, { force: true });
    }));
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    const send = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    try {
      const url = new URL(req.url ?? '/', 'http://virtcbtd');
      const path = decodePath(url.pathname);
      const route = this.routes.find((r) => r.method === req.method && r.pattern.test(url.pathname));
      if (!route) return send(404, { error: 'NotFound', message: `no API route ${req.method} ${path}` });
      const m = route.pattern.exec(url.pathname)!;
      const params = Object.fromEntries(route.keys.map((k, i) => [k, decodePath(m[i + 1])]));
      const body = await readBody(req);
      const result = await route.handler({ method: req.method ?? 'GET', path, params, query: url.searchParams, body, caller });
      if (isStream(result)) return await streamLines(res, result, this.opts.mapError);
      send(200, result ?? {});
    } catch (e) {
      const err = this.opts.mapError ? this.opts.mapError(e) : e;
      const exitCode = exitCodeOf(err);
      const status = err instanceof UsageError ? 400 : exitCode === EXIT.NOT_FOUND ? 404 : 500;
      send(status, { ...errorPayload(err), exitCode });
    }
  }
}

/** decodeURIComponent, with a malformed escape (`%E0%A4%A`) being the caller's mistake (400), not ours. */
function decodePath(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch (cause) {
    throw new UsageError(`malformed percent-encoding in the API path: ${s}`, { cause, hint: 'Encode names with encodeURIComponent (the CLI does)' });
  }
}

function errorPayload(err: unknown): Record<string, unknown> {
  return err instanceof VirtcbtError ? err.toJSON() : { error: 'Error', message: errorMessage(err) };
}

/** Removes a socket file no daemon answers on; throws if one does, or if the path is not a socket. */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!st) return;
  if (!st.isSocket()) {
    throw new VirtcbtError(`${path} exists and is not a socket`, { hint: 'Remove it, or set daemon.socket to another path' });
  }
  const answers = await new Promise<boolean>((resolve) => {
    const c = connect(path);
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
  if (answers) {
    throw new AlreadyRunningError(`another virtcbtd answers on ${path}`, { hint: 'Use that one, or stop it first; only one virtcbtd may serve a socket' });
  }
  await rm(path, { force: true });
}

/** A handler's reply that is a stream of progress events, sent as NDJSON. */
export interface EventStream {
  stream: AsyncIterable<Record<string, unknown>>;
}

function isStream(v: unknown): v is EventStream {
  return typeof v === 'object' && v !== null && 'stream' in v && Symbol.asyncIterator in Object((v as EventStream).stream);
}

/**
 * Streams events as JSON lines (chunked). A failure mid-stream cannot change the HTTP status any
 * more, so it is sent as a last line `{"type":"error", ...}`; the client turns it into an error.
 */
async function streamLines(res: ServerResponse, s: EventStream, mapError?: (err: unknown) => unknown): Promise<void> {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  try {
    for await (const ev of s.stream) {
      // A client that went away (`virtcbt backup | head -1`) never drains: stop streaming to it (the
      // job goes on; see eventStream) instead of holding the stream and its events until exit.
      if (res.destroyed || res.writableEnded) break;
      if (!res.write(JSON.stringify(ev) + '\n') && !(await drainedOrClosed(res))) break;
    }
  } catch (e) {
    const err = mapError ? mapError(e) : e;
    res.write(JSON.stringify({ type: 'error', ...errorPayload(err), exitCode: exitCodeOf(err) }) + '\n');
  }
  res.end();
}

/** Waits until `res` can take more (true) or its connection closed (false). */
function drainedOrClosed(res: ServerResponse): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean) => () => {
      res.off('drain', onDrain);
      res.off('close', onClose);
      resolve(ok);
    };
    const onDrain = done(true);
    const onClose = done(false);
    res.once('drain', onDrain);
    res.once('close', onClose);
  });
}

async function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new UsageError('request body too large');
    chunks.push(c as Buffer);
  }
  if (size === 0) return {};
  try {
    const v: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (cause) {
    throw new UsageError(`request body is not a JSON object: ${(cause as Error).message}`, { cause });
  }
}
