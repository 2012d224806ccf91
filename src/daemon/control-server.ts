// virtcbtd's control API: HTTP + JSON over a unix socket (mode 0660, optional group). The CLI is
// its only intended client; errors travel as JSON with the same fields VirtcbtError carries.
import { chmod, chown, mkdir, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { dirname } from 'node:path';
import { execa } from 'execa';
import { UsageError, VirtcbtError, errorMessage } from '../util/errors.js';

export interface Request {
  method: string;
  path: string;
  params: Record<string, string>;
  query: URLSearchParams;
  body: Record<string, unknown>;
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

export class ControlServer {
  private routes: Route[] = [];
  private server?: Server;

  /** `path` like /v1/domains/:domain/consumers/:name */
  route(method: string, path: string, handler: Handler): this {
    const keys: string[] = [];
    const pattern = new RegExp(
      '^' + path.replace(/:([a-z]+)/g, (_, k: string) => { keys.push(k); return '([^/]+)'; }) + '$',
    );
    this.routes.push({ method, pattern, keys, handler });
    return this;
  }

  async listen(socketPath: string, group?: string): Promise<void> {
    await mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });
    await rm(socketPath, { force: true });
    this.server = createServer((req, res) => void this.dispatch(req, res));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(socketPath, () => resolve());
    });
    await chmod(socketPath, 0o660);
    if (group) {
      const gid = Number((await execa('getent', ['group', group])).stdout.split(':')[2]);
      await chown(socketPath, 0, gid);
    }
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://virtcbtd');
    const send = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    try {
      const path = decodeURIComponent(url.pathname);
      const route = this.routes.find((r) => r.method === req.method && r.pattern.test(url.pathname));
      if (!route) return send(404, { error: 'NotFound', message: `no API route ${req.method} ${path}` });
      const m = route.pattern.exec(url.pathname)!;
      const params = Object.fromEntries(route.keys.map((k, i) => [k, decodeURIComponent(m[i + 1])]));
      const body = await readBody(req);
      const result = await route.handler({ method: req.method ?? 'GET', path, params, query: url.searchParams, body });
      if (isStream(result)) return await streamLines(res, result);
      send(200, result ?? {});
    } catch (err) {
      const status = err instanceof UsageError ? 400 : typeof (err as { exitCode?: number }).exitCode === 'number' && (err as { exitCode: number }).exitCode === 4 ? 404 : 500;
      const payload = err instanceof VirtcbtError ? err.toJSON() : { error: 'Error', message: errorMessage(err) };
      send(status, { ...payload, exitCode: (err as { exitCode?: number }).exitCode });
    }
  }
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
async function streamLines(res: ServerResponse, s: EventStream): Promise<void> {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  try {
    for await (const ev of s.stream) {
      if (!res.write(JSON.stringify(ev) + '\n')) await new Promise((r) => res.once('drain', r));
    }
  } catch (err) {
    const payload = err instanceof VirtcbtError ? err.toJSON() : { error: 'Error', message: errorMessage(err) };
    res.write(JSON.stringify({ type: 'error', ...payload, exitCode: (err as { exitCode?: number }).exitCode }) + '\n');
  }
  res.end();
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
