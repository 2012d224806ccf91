// A few raw JSON-lines exchanges over a unix socket, for the rig itself (quit a QEMU, check a
// greeting, ping an agent). Not a QMP client: src/qmp is that; the rig must not depend on it.
import { connect, type Socket } from 'node:net';

export interface RawSession {
  /** Next complete JSON line received (lines starting with 0xff, the agent's sync delimiter, are stripped of it). */
  next(): Promise<Record<string, unknown>>;
  send(msg: unknown): void;
  /** Writes raw bytes (e.g. a 0xff to reset the agent's parser). */
  write(bytes: Buffer | string): void;
  close(): void;
  socket: Socket;
}

/** Connects to `path`; rejects if it cannot, or when `timeoutMs` passes before the session is closed. */
export async function rawSession(path: string, timeoutMs = 10_000): Promise<RawSession> {
  const socket = connect(path);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let buf = Buffer.alloc(0);
  const lines: Record<string, unknown>[] = [];
  const waiters: { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }[] = [];
  let failure: Error | undefined;
  const fail = (err: Error) => {
    failure ??= err;
    for (const w of waiters.splice(0)) w.reject(failure);
  };
  const timer = setTimeout(() => {
    fail(new Error(`no answer on ${path} within ${timeoutMs} ms`));
    socket.destroy();
  }, timeoutMs);
  timer.unref();
  socket.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      const nl = buf.indexOf(0x0a);
      if (nl < 0) break;
      let line = buf.subarray(0, nl);
      buf = buf.subarray(nl + 1);
      while (line.length > 0 && line[0] === 0xff) line = line.subarray(1);
      const text = line.toString('utf8').trim();
      if (!text) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(text) as Record<string, unknown>;
      } catch {
        fail(new Error(`not JSON on ${path}: ${text.slice(0, 200)}`));
        return;
      }
      const w = waiters.shift();
      if (w) w.resolve(msg);
      else lines.push(msg);
    }
  });
  socket.on('error', (err) => fail(err));
  socket.on('close', () => fail(new Error(`${path} closed the connection`)));
  return {
    socket,
    next: () => {
      const m = lines.shift();
      if (m) return Promise.resolve(m);
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => waiters.push({ resolve, reject }));
    },
    send: (msg) => socket.write(JSON.stringify(msg) + '\n'),
    write: (bytes) => socket.write(bytes),
    close: () => {
      clearTimeout(timer);
      socket.destroy();
    },
  };
}

/** Connects to a QMP socket, negotiates capabilities and runs one command; returns its reply (events skipped). */
export async function qmpOnce(path: string, execute: string, args?: unknown, timeoutMs = 10_000): Promise<Record<string, unknown>> {
  const s = await rawSession(path, timeoutMs);
  try {
    const greeting = await s.next();
    if (!('QMP' in greeting)) throw new Error(`${path} is not a QMP socket: ${JSON.stringify(greeting)}`);
    s.send({ execute: 'qmp_capabilities' });
    await nextReply(s);
    s.send(args === undefined ? { execute } : { execute, arguments: args });
    return await nextReply(s);
  } finally {
    s.close();
  }
}

async function nextReply(s: RawSession): Promise<Record<string, unknown>> {
  for (;;) {
    const m = await s.next();
    if ('return' in m || 'error' in m) return m;
  }
}
