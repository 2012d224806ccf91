// The agent socket transport resyncs with guest-sync-delimited: garbage, stale replies and late answers before the sync reply are skipped.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LineSplitter } from '../src/qmp/index.js';
import { TimeoutError } from '../src/util/errors.js';
import {
  AgentCommandError,
  AgentUnavailableError,
  SocketTransport,
  encodeSync,
  isSyncReply,
  parseAgentReply,
} from '../src/guest/index.js';
import { fakeAgent, syncReply, type FakeAgent } from './fakes/fake-agent.js';

let dir: string;
let n = 0;
const agents: FakeAgent[] = [];
const transports: SocketTransport[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (r: unknown): void => {
  unhandled.push(r);
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'virtcbt-agent-fake-'));
  process.on('unhandledRejection', onUnhandled);
});
afterEach(async () => {
  for (const t of transports.splice(0)) await t.close();
  for (const a of agents.splice(0)) await a.close();
  await new Promise((r) => setImmediate(r));
  expect(unhandled).toEqual([]);
});
afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await rm(dir, { recursive: true, force: true });
});

async function agent(handle: Parameters<typeof fakeAgent>[1]): Promise<FakeAgent> {
  const a = await fakeAgent(join(dir, `qga-${++n}.sock`), handle);
  agents.push(a);
  return a;
}

function transport(path: string, opts: ConstructorParameters<typeof SocketTransport>[1] = {}): SocketTransport {
  const t = new SocketTransport(path, { domain: 'vm1', syncTimeoutMs: 1000, ...opts });
  transports.push(t);
  return t;
}

// What a reused agent channel can hold before our sync reply: a previous client's half line, an
// old sync reply, the agent's complaint about the 0xFF byte, a late reply with an id.
const GARBAGE = Buffer.concat([
  Buffer.from('{"return": {"half'),
  Buffer.from([0xff]),
  Buffer.from('{"return": 42}\n'),
  Buffer.from('{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\ufffd\'"}}\n'),
  Buffer.from('{"return": {"pid": 77}, "id": "virtcbt-1"}\n'),
]);

describe('guest-agent framing', () => {
  it('finds the sync reply after garbage when the stream is split at every byte', () => {
    const id = 123456789;
    const after = Buffer.from('{"return": {}, "id": "x"}\n');
    const stream = Buffer.concat([GARBAGE, Buffer.from([0xff]), Buffer.from(`{"return": ${id}}\n`), after]);
    for (let cut = 0; cut <= stream.length; cut++) {
      const s = new LineSplitter();
      const seen: string[] = [];
      let synced = false;
      for (const part of [stream.subarray(0, cut), stream.subarray(cut)]) {
        s.push(part, (line) => {
          if (!synced) synced = isSyncReply(line, id);
          else seen.push(JSON.stringify(parseAgentReply(line)));
        });
      }
      expect(synced, `cut at ${cut}`).toBe(true);
      expect(seen).toEqual([JSON.stringify({ kind: 'return', id: 'x', value: {} })]);
    }
  });

  it('does not take an old sync reply or a reply without the delimiter for the sync', () => {
    expect(isSyncReply(Buffer.from('\xff{"return": 1}', 'latin1'), 2)).toBe(false);
    expect(isSyncReply(Buffer.from('{"return": 2}'), 2)).toBe(false);
    expect(isSyncReply(Buffer.from('\xff{"return": 2}', 'latin1'), 2)).toBe(true);
    expect(isSyncReply(Buffer.from('junk\xff\xff{"return": 2}\r', 'latin1'), 2)).toBe(true);
    expect(encodeSync(7)[0]).toBe(0xff);
    expect(encodeSync(7).subarray(1).toString()).toBe('{"execute":"guest-sync-delimited","arguments":{"id":7}}\n');
  });
});

describe('guest-agent socket transport against a fake agent', () => {
  it('skips garbage before the sync reply, then correlates replies by id', async () => {
    const a = await agent((req, ctx) => {
      if (req.execute === 'guest-sync-delimited') {
        // Garbage and the reply dribble in one byte at a time.
        const bytes = Buffer.concat([GARBAGE, syncReply(req)]);
        for (let i = 0; i < bytes.length; i++) ctx.sock.write(bytes.subarray(i, i + 1));
      } else {
        ctx.reply(req, { version: '7.2.22', supported_commands: [] });
      }
    });
    const t = transport(a.path);
    expect(await t.execute('guest-info')).toEqual({ version: '7.2.22', supported_commands: [] });
    expect(await t.execute('guest-info')).toEqual({ version: '7.2.22', supported_commands: [] });
    // One sync per connection, not per call.
    expect(a.requests.map((r) => r.execute)).toEqual(['guest-sync-delimited', 'guest-info', 'guest-info']);
    expect(a.requests[1].id).toMatch(/^virtcbt-[0-9a-f]{8}-1$/);
  });

  it('after a timeout, resyncs and drops the late reply instead of handing it to the next call', async () => {
    // Like qemu-ga, the fake answers strictly in order: nothing is answered while 'slow' runs.
    // Its late reply carries no id, so only the resync can keep it from the next call.
    let busy = Promise.resolve();
    const a = await agent((req, ctx) => {
      busy = busy.then(async () => {
        if (req.execute === 'guest-sync-delimited') ctx.sock.write(syncReply(req));
        else if (req.execute === 'slow') {
          await new Promise((r) => setTimeout(r, 200));
          ctx.sock.write('{"return": "late"}\n');
        } else ctx.reply(req, req.execute);
      });
    });
    const t = transport(a.path);
    expect(await t.execute('first')).toBe('first');
    const t0 = Date.now();
    const err = await t.execute('slow', undefined, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toMatch(/guest agent slow: no answer on .* within 100 ms/);
    expect(Date.now() - t0).toBeLessThan(500);
    expect(await t.execute('next')).toBe('next');
    expect(a.requests.map((r) => r.execute)).toEqual(['guest-sync-delimited', 'first', 'slow', 'guest-sync-delimited', 'next']);
  });

  it('serializes concurrent calls (the agent serves one request at a time)', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    const a = await agent((req, ctx) => {
      if (req.execute === 'guest-sync-delimited') return void ctx.sock.write(syncReply(req));
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      setTimeout(() => {
        inFlight--;
        ctx.reply(req, req.arguments?.n);
      }, 5);
    });
    const t = transport(a.path);
    const out = await Promise.all(Array.from({ length: 10 }, (_, i) => t.execute('echo', { n: i })));
    expect(out).toEqual(Array.from({ length: 10 }, (_, i) => i));
    expect(maxInFlight).toBe(1);
  });

  it('fails within the sync timeout when no agent answers, saying to check qemu-guest-agent', async () => {
    const a = await agent(() => {});
    const t = transport(a.path, { syncTimeoutMs: 300 });
    const t0 = Date.now();
    const err = (await t.execute('guest-ping').catch((e: unknown) => e)) as TimeoutError;
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err.message).toMatch(/guest agent sync: no answer/);
    expect(err.hint).toMatch(/qemu-guest-agent running/);
    expect(err.domain).toBe('vm1');
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('names the socket when it does not exist', async () => {
    const path = join(dir, 'missing.sock');
    const err = (await transport(path).execute('guest-ping').catch((e: unknown) => e)) as AgentUnavailableError;
    expect(err).toBeInstanceOf(AgentUnavailableError);
    expect(err.message).toContain(path);
    expect(err.hint).toMatch(/org\.qemu\.guest_agent\.0/);
  });

  it('rejects the call in flight when the socket closes, and reconnects on the next call', async () => {
    const a = await agent((req, ctx) => {
      if (req.execute === 'guest-sync-delimited') ctx.sock.write(syncReply(req));
      else if (req.execute === 'die') ctx.sock.destroy();
      else ctx.reply(req, 'ok');
    });
    const t = transport(a.path);
    const err = await t.execute('die').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentUnavailableError);
    expect((err as Error).message).toMatch(/connection closed/);
    expect(await t.execute('guest-ping')).toBe('ok');
    expect(a.connections).toBe(2);
  });

  it('turns an error reply into AgentCommandError with the class', async () => {
    const a = await agent((req, ctx) => {
      if (req.execute === 'guest-sync-delimited') ctx.sock.write(syncReply(req));
      else ctx.error(req, 'CommandNotFound', `The command ${req.execute} has not been found`);
    });
    const err = (await transport(a.path).execute('guest-nope').catch((e: unknown) => e)) as AgentCommandError;
    expect(err).toBeInstanceOf(AgentCommandError);
    expect(err.errorClass).toBe('CommandNotFound');
    expect(err.command).toBe('guest-nope');
    expect(err.message).toBe('guest agent guest-nope failed: The command guest-nope has not been found (CommandNotFound)');
  });
});
