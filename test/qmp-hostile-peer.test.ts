// Faults real QEMU cannot show, against a fake QMP server: each ends in a clear error within the deadline, never a hang.
import net from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TimeoutError } from '../src/util/errors.js';
import {
  QmpClient,
  QmpCommandError,
  QmpConnectionError,
  QmpProtocolError,
  type QmpTarget,
} from '../src/qmp/index.js';

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}\n';

interface Command {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
}

type Handler = (cmd: Command, sock: net.Socket) => void;

let dir: string;
const servers: net.Server[] = [];
const clients: QmpClient[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'virtcbt-qmp-fake-'));
  process.on('unhandledRejection', onUnhandled);
});

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close().catch(() => {});
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  // Give a stray rejection a chance to surface before checking.
  await new Promise((r) => setImmediate(r));
  expect(unhandled).toEqual([]);
});

afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await rm(dir, { recursive: true, force: true });
});

let counter = 0;
/**
 * A QMP server on a fresh unix socket. `greeting: false` sends none. `handle` answers commands
 * other than qmp_capabilities (which gets `{return:{}}` unless `handle` is given for it too).
 */
async function fakeQmp(opts: { greeting?: string | false; handle?: Handler; onConnect?: (sock: net.Socket) => void } = {}): Promise<string> {
  const path = join(dir, `qmp-${++counter}.sock`);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    if (opts.greeting !== false) sock.write(opts.greeting ?? GREETING);
    opts.onConnect?.(sock);
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const cmd = JSON.parse(line) as Command;
        if (cmd.execute === 'qmp_capabilities' && !opts.handle) {
          sock.write(JSON.stringify({ return: {}, id: cmd.id }) + '\n');
        } else if (cmd.execute === 'qmp_capabilities') {
          sock.write(JSON.stringify({ return: {}, id: cmd.id }) + '\n');
        } else {
          opts.handle?.(cmd, sock);
        }
      }
    });
  });
  // Sockets are cut on close so a test that leaves one open still ends.
  const close = server.close.bind(server);
  server.close = ((cb?: (err?: Error) => void) => {
    for (const s of sockets) s.destroy();
    return close(cb);
  }) as typeof server.close;
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return path;
}

async function connect(target: QmpTarget, opts: Parameters<typeof QmpClient.connect>[1] = {}): Promise<QmpClient> {
  const c = await QmpClient.connect(target, { timeoutMs: 2000, ...opts });
  clients.push(c);
  return c;
}

/** Measures how long `p` takes to settle and returns its rejection. */
async function rejection(p: Promise<unknown>): Promise<{ err: Error; ms: number }> {
  const t0 = Date.now();
  try {
    await p;
  } catch (err) {
    return { err: err as Error, ms: Date.now() - t0 };
  }
  throw new Error('expected a rejection');
}

describe('QMP client against a hostile or broken peer', () => {
  it('names the path when the socket does not exist', async () => {
    const path = join(dir, 'nope', 'qmp.sock');
    const { err, ms } = await rejection(QmpClient.connect(path, { timeoutMs: 2000 }));
    expect(err).toBeInstanceOf(QmpConnectionError);
    expect(err.message).toContain(path);
    expect(err.message).toMatch(/does not exist/);
    expect((err as QmpConnectionError).hint).toMatch(/-qmp/);
    expect(ms).toBeLessThan(1000);
  });

  it('says the path is not a socket when it is a plain file', async () => {
    const path = join(dir, 'plain-file');
    await writeFile(path, 'x');
    const { err } = await rejection(QmpClient.connect(path, { timeoutMs: 2000 }));
    expect(err).toBeInstanceOf(QmpConnectionError);
    expect(err.message).toContain(path);
  });

  it('fails within the timeout when the peer never sends the greeting, and says why that may be', async () => {
    const path = await fakeQmp({ greeting: false });
    const { err, ms } = await rejection(QmpClient.connect(path, { timeoutMs: 300 }));
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err.message).toMatch(/no QMP greeting from .* within 300 ms/);
    expect((err as TimeoutError).hint).toMatch(/one client at a time/);
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(ms).toBeLessThan(1500);
  });

  it('honours the caller\'s abort signal while waiting for the greeting', async () => {
    const path = await fakeQmp({ greeting: false });
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(new Error('operator gave up')), 100);
    const { err, ms } = await rejection(QmpClient.connect(path, { timeoutMs: 5000, signal: ctl.signal }));
    expect(err.message).toBe('operator gave up');
    expect(ms).toBeLessThan(1000);
  });

  it('refuses a peer that speaks something else first', async () => {
    const path = await fakeQmp({ greeting: '{"return": {}, "id": 1}\n' });
    const { err } = await rejection(QmpClient.connect(path, { timeoutMs: 2000 }));
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect(err.message).toMatch(/did not start with a greeting/);
  });

  it('refuses a peer whose greeting is not JSON', async () => {
    const path = await fakeQmp({ greeting: 'SSH-2.0-OpenSSH_9.2\r\n' });
    const { err, ms } = await rejection(QmpClient.connect(path, { timeoutMs: 2000 }));
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect(err.message).toMatch(/not JSON: "SSH-2.0-OpenSSH_9.2"/);
    expect(ms).toBeLessThan(1000);
  });

  it('reports a peer that closes before the greeting', async () => {
    const path = await fakeQmp({ greeting: false, onConnect: (s) => s.end() });
    const { err } = await rejection(QmpClient.connect(path, { timeoutMs: 2000 }));
    expect(err).toBeInstanceOf(QmpConnectionError);
    expect(err.message).toMatch(/closed before the greeting/);
  });

  it('correlates many commands in flight when replies come back out of order', async () => {
    const held: Command[] = [];
    const path = await fakeQmp({
      handle: (cmd, sock) => {
        held.push(cmd);
        if (held.length === 20) {
          for (const c of held.reverse()) sock.write(JSON.stringify({ return: { echo: c.arguments?.n }, id: c.id }) + '\n');
        }
      },
    });
    const qmp = await connect(path);
    expect(qmp.greeting.version.qemu).toEqual({ major: 7, minor: 2, micro: 0 });
    const results = await Promise.all(Array.from({ length: 20 }, (_, n) => qmp.execute<{ echo: number }>('echo', { n })));
    expect(results.map((r) => r.echo)).toEqual(Array.from({ length: 20 }, (_, n) => n));
  });

  it('carries QMP\'s error class, desc and the command in QmpCommandError', async () => {
    const path = await fakeQmp({
      handle: (cmd, sock) =>
        sock.write(JSON.stringify({ id: cmd.id, error: { class: 'GenericError', desc: "Dirty bitmap 'b1' not found" } }) + '\n'),
    });
    const qmp = await connect(path, { domain: 'vm1' });
    const { err } = await rejection(qmp.execute('block-dirty-bitmap-remove', { node: 'data', name: 'b1' }));
    expect(err).toBeInstanceOf(QmpCommandError);
    const e = err as QmpCommandError;
    expect(e.errorClass).toBe('GenericError');
    expect(e.desc).toBe("Dirty bitmap 'b1' not found");
    expect(e.command).toBe('block-dirty-bitmap-remove');
    expect(e.argsSummary).toBe('node=data name=b1');
    expect(e.domain).toBe('vm1');
    expect(e.message).toBe("QMP block-dirty-bitmap-remove node=data name=b1 failed: Dirty bitmap 'b1' not found (GenericError)");
    expect(qmp.isOpen).toBe(true);
  });

  it('rejects every pending command at once when the peer closes mid-reply', async () => {
    let seen = 0;
    const path = await fakeQmp({
      handle: (cmd, sock) => {
        if (++seen === 3) {
          sock.write('{"return": {"half": ');
          setTimeout(() => sock.destroy(), 20);
        }
      },
    });
    const qmp = await connect(path, { commandTimeoutMs: 10_000 });
    const calls = [qmp.execute('a'), qmp.execute('b'), qmp.execute('c')].map((p) => rejection(p));
    const results = await Promise.all(calls);
    for (const [i, { err, ms }] of results.entries()) {
      expect(err).toBeInstanceOf(QmpConnectionError);
      expect(err.message).toContain(`QMP ${'abc'[i]} not answered`);
      expect(err.message).toMatch(/closed by the peer/);
      expect(ms).toBeLessThan(1000);
    }
    expect(await qmp.closed).toBeInstanceOf(QmpConnectionError);
    expect(qmp.isOpen).toBe(false);
    const after = await rejection(qmp.execute('query-status'));
    expect(after.err).toBeInstanceOf(QmpConnectionError);
    expect(after.err.message).toMatch(/connection to .* is closed/);
  });

  it('closes the connection on a reply with an unknown id and rejects the pending calls with a protocol error', async () => {
    const path = await fakeQmp({
      handle: (cmd, sock) => {
        if (cmd.execute === 'b') sock.write(JSON.stringify({ return: {}, id: 999 }) + '\n');
      },
    });
    const qmp = await connect(path, { commandTimeoutMs: 10_000 });
    const a = rejection(qmp.execute('a'));
    const b = rejection(qmp.execute('b'));
    for (const { err, ms } of await Promise.all([a, b])) {
      expect(err).toBeInstanceOf(QmpProtocolError);
      expect(err.message).toMatch(/unknown id 999/);
      expect(ms).toBeLessThan(1000);
    }
    const reason = await qmp.closed;
    expect(reason).toBeInstanceOf(QmpProtocolError);
  });

  it('closes the connection when a reply does not parse', async () => {
    const path = await fakeQmp({ handle: (_cmd, sock) => sock.write('{"return": {,}}\n') });
    const qmp = await connect(path);
    const { err, ms } = await rejection(qmp.execute('query-block'));
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect(err.message).toMatch(/QMP query-block abandoned: peer sent a line that is not JSON/);
    expect(ms).toBeLessThan(1000);
  });

  it('closes the connection when a line exceeds the bound', async () => {
    const path = await fakeQmp({ handle: (_cmd, sock) => sock.write('{"return": "' + 'x'.repeat(5000)) });
    const qmp = await connect(path, { maxLineBytes: 4096 });
    const { err } = await rejection(qmp.execute('query-block'));
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect(err.message).toMatch(/longer than 4096 bytes/);
  });

  it('times out one command, drops its late reply, and stays usable', async () => {
    const path = await fakeQmp({
      handle: (cmd, sock) => {
        const reply = JSON.stringify({ return: cmd.execute, id: cmd.id }) + '\n';
        if (cmd.execute === 'slow') setTimeout(() => sock.write(reply), 300);
        else sock.write(reply);
      },
    });
    const qmp = await connect(path);
    const { err, ms } = await rejection(qmp.execute('slow', undefined, { timeoutMs: 100 }));
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err.message).toMatch(/QMP slow: no reply from .* within 100 ms/);
    expect(ms).toBeLessThan(500);
    // Wait past the late reply: it must not be taken for a lie.
    const late = qmp.waitFor('NEVER', undefined, { timeoutMs: 400 }).catch(() => undefined);
    await late;
    expect(qmp.isOpen).toBe(true);
    expect(await qmp.execute('fast')).toBe('fast');
  });

  it('abandons a command when its signal fires', async () => {
    const path = await fakeQmp({ handle: () => {} });
    const qmp = await connect(path);
    const ctl = new AbortController();
    const p = rejection(qmp.execute('hang', undefined, { signal: ctl.signal }));
    ctl.abort(new Error('stop waiting'));
    const { err } = await p;
    expect(err.message).toBe('stop waiting');
    expect(qmp.isOpen).toBe(true);
  });

  it('delivers events to listeners and waitFor, and rejects waiters when the connection ends', async () => {
    const path = await fakeQmp({
      handle: (cmd, sock) => {
        // Like QEMU: the event may come before the reply to the command that caused it.
        if (cmd.execute === 'stop') {
          sock.write('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\n');
          sock.write(JSON.stringify({ return: {}, id: cmd.id }) + '\n');
        }
        if (cmd.execute === 'job') {
          for (const status of ['created', 'running', 'concluded']) {
            sock.write(JSON.stringify({ event: 'JOB_STATUS_CHANGE', data: { id: 'j1', status }, timestamp: { seconds: 2, microseconds: 0 } }) + '\n');
          }
          sock.write(JSON.stringify({ return: {}, id: cmd.id }) + '\n');
        }
        if (cmd.execute === 'die') sock.destroy();
      },
    });
    const qmp = await connect(path);
    const all: string[] = [];
    const off = qmp.on('*', (ev) => all.push(ev.event));
    const stops: number[] = [];
    qmp.on('STOP', (ev) => stops.push(ev.timestamp.seconds));
    // A throwing listener must not keep the others from running.
    const warnings: string[] = [];
    const qmp2Listener = qmp.on('STOP', () => {
      throw new Error('listener bug');
    });
    const onWarning = (w: Error): void => {
      warnings.push(w.message);
    };
    process.on('warning', onWarning);

    const stopped = qmp.waitFor('STOP');
    await qmp.execute('stop');
    expect((await stopped).event).toBe('STOP');
    expect(stops).toEqual([1]);
    qmp2Listener();

    const concluded = qmp.waitFor('JOB_STATUS_CHANGE', (ev) => ev.data.id === 'j1' && ev.data.status === 'concluded', { timeoutMs: 2000 });
    await qmp.execute('job');
    expect((await concluded).data.status).toBe('concluded');
    off();
    expect(all).toEqual(['STOP', 'JOB_STATUS_CHANGE', 'JOB_STATUS_CHANGE', 'JOB_STATUS_CHANGE']);

    const timedOut = await rejection(qmp.waitFor('RESUME', undefined, { timeoutMs: 50 }));
    expect(timedOut.err).toBeInstanceOf(TimeoutError);

    const never = qmp.waitFor('SHUTDOWN');
    await rejection(qmp.execute('die'));
    const { err } = await rejection(never);
    expect(err).toBeInstanceOf(QmpConnectionError);
    // An abandoned waitFor does not raise an unhandled rejection (checked in afterEach).
    void qmp.waitFor('SHUTDOWN');
    process.off('warning', onWarning);
    await new Promise((r) => setImmediate(r));
    expect(warnings.some((w) => /listener for STOP threw: listener bug/.test(w))).toBe(true);
  });

  it('close() rejects what is in flight, resolves `closed` with undefined, and works with await using', async () => {
    const path = await fakeQmp({ handle: () => {} });
    let pending: Promise<{ err: Error; ms: number }> | undefined;
    let client: QmpClient | undefined;
    {
      await using qmp = await QmpClient.connect(path, { timeoutMs: 2000 });
      client = qmp;
      pending = rejection(qmp.execute('hang'));
    }
    const { err } = await pending;
    expect(err).toBeInstanceOf(QmpConnectionError);
    expect(err.message).toMatch(/closed by this client/);
    expect(await client.closed).toBeUndefined();
    expect(client.isOpen).toBe(false);
    await client.close(); // idempotent
  });

  it('connects over TCP host:port', async () => {
    const server = net.createServer((sock) => {
      sock.on('error', () => {});
      sock.write(GREETING);
      sock.on('data', (d) => {
        for (const line of d.toString().split('\n').filter(Boolean)) {
          const cmd = JSON.parse(line) as Command;
          sock.write(JSON.stringify({ return: cmd.execute === 'query-status' ? { running: true, status: 'running' } : {}, id: cmd.id }) + '\n');
        }
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    for (const target of [`127.0.0.1:${port}`, `tcp:127.0.0.1:${port}`, { host: '127.0.0.1', port }] as QmpTarget[]) {
      const qmp = await connect(target);
      expect(await qmp.execute('query-status')).toEqual({ running: true, status: 'running' });
      await qmp.close();
    }
  });
});
