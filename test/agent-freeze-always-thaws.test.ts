// withFrozen thaws on every path (return, throw, timeout, abort, failed freeze) and reports a failed thaw with both errors;
// a backup's rotateFrozen (freeze sent early or at the transaction) likewise; exec polling.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { rotateFrozen } from '../src/snapshot/index.js';
import type { Rotate } from '../src/snapshot/index.js';
import type { RotateResult } from '../src/reconciler/index.js';
import { TimeoutError } from '../src/util/errors.js';
import { AgentCommandError, GuestAgent, GuestExecError, SocketTransport, ThawFailedError } from '../src/guest/index.js';
import { fakeAgent, syncReply, type AgentRequest, type FakeAgent, type FakeAgentContext } from './fakes/fake-agent.js';

let dir: string;
let n = 0;
const cleanups: (() => Promise<void>)[] = [];
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'virtcbt-agent-freeze-'));
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Guest {
  agent: GuestAgent;
  fake: FakeAgent;
  state: { frozen: boolean; thawCalls: number };
}

/** A fake agent that tracks the freeze state; `override` answers a command instead of the default. */
async function guest(
  override: (req: AgentRequest, ctx: FakeAgentContext, state: Guest['state']) => boolean | Promise<boolean> = () => false,
): Promise<Guest> {
  const state = { frozen: false, thawCalls: 0 };
  const fake = await fakeAgent(join(dir, `qga-${++n}.sock`), async (req, ctx) => {
    if (req.execute === 'guest-sync-delimited') return void ctx.sock.write(syncReply(req));
    if (await override(req, ctx, state)) return;
    switch (req.execute) {
      case 'guest-fsfreeze-freeze':
        state.frozen = true;
        return ctx.reply(req, 2);
      case 'guest-fsfreeze-thaw':
        state.thawCalls++;
        ctx.reply(req, state.frozen ? 2 : 0);
        state.frozen = false;
        return;
      case 'guest-fsfreeze-status':
        return ctx.reply(req, state.frozen ? 'frozen' : 'thawed');
      default:
        return ctx.error(req, 'CommandNotFound', `The command ${req.execute} has not been found`);
    }
  });
  const agent = new GuestAgent(new SocketTransport(fake.path, { domain: 'vm1', syncTimeoutMs: 1000 }));
  cleanups.push(() => fake.close(), () => agent.close());
  return { agent, fake, state };
}

describe('withFrozen', () => {
  it('returns the value and leaves the guest thawed', async () => {
    const g = await guest();
    const seen: string[] = [];
    const v = await g.agent.withFrozen(async () => {
      seen.push(await g.agent.fsfreezeStatus());
      return 42;
    });
    expect(v).toBe(42);
    expect(seen).toEqual(['frozen']);
    expect(await g.agent.fsfreezeStatus()).toBe('thawed');
  });

  it('thaws and rethrows when the step throws', async () => {
    const g = await guest();
    const boom = new Error('snapshot step failed');
    await expect(g.agent.withFrozen(async () => Promise.reject(boom))).rejects.toBe(boom);
    expect(g.state).toEqual({ frozen: false, thawCalls: 1 });
  });

  it('thaws at the deadline without waiting for the step, and aborts the step\'s signal', async () => {
    const g = await guest();
    let stepSignal: AbortSignal | undefined;
    const t0 = Date.now();
    const err = await g.agent
      .withFrozen(
        (signal) => {
          stepSignal = signal;
          return new Promise(() => {}); // a step that never ends
        },
        { timeoutMs: 150 },
      )
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toMatch(/frozen for 150 ms without the work finishing; thawed them/);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(stepSignal?.aborted).toBe(true);
    expect(g.state.frozen).toBe(false);
  });

  it('thaws when the caller aborts', async () => {
    const g = await guest();
    const ctl = new AbortController();
    let frozenInside: boolean | undefined;
    const p = g.agent.withFrozen(
      () => {
        // Aborted from inside the frozen section: the guest is frozen now, for certain.
        frozenInside = g.state.frozen;
        ctl.abort(new Error('operator cancelled'));
        return new Promise(() => {}); // a step that never ends on its own
      },
      { signal: ctl.signal },
    );
    await expect(p).rejects.toThrow('operator cancelled');
    expect(frozenInside).toBe(true);
    expect(g.state).toEqual({ frozen: false, thawCalls: 1 });
  });

  it('still thaws when the freeze itself fails part way', async () => {
    const g = await guest((req, ctx, state) => {
      if (req.execute !== 'guest-fsfreeze-freeze') return false;
      state.frozen = true; // froze one filesystem, then failed on the next
      ctx.error(req, 'GenericError', "failed to freeze /mnt/data: Device or resource busy");
      return true;
    });
    let ran = false;
    const err = await g.agent.withFrozen(async () => void (ran = true)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentCommandError);
    expect(ran).toBe(false);
    expect(g.state).toEqual({ frozen: false, thawCalls: 1 });
  });

  it('still thaws when the freeze times out (the agent answers the thaw after the late freeze)', async () => {
    const g = await guest(async (req, ctx, state) => {
      if (req.execute !== 'guest-fsfreeze-freeze') return false;
      // The agent is busy freezing: the sync and thaw queue up behind it.
      await new Promise((r) => setTimeout(r, 300));
      state.frozen = true;
      ctx.reply(req, 1);
      return true;
    });
    const err = await g.agent.withFrozen(async () => 1, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect(g.state.frozen).toBe(false);
    expect(g.state.thawCalls).toBe(1);
  });

  it('reports both errors, and says the guest may still be frozen, when the thaw fails too', async () => {
    const g = await guest((req, ctx) => {
      if (req.execute !== 'guest-fsfreeze-thaw') return false;
      ctx.error(req, 'GenericError', 'failed to thaw /mnt/data');
      return true;
    });
    const err = (await g.agent
      .withFrozen(async () => {
        throw new Error('copy failed');
      })
      .catch((e: unknown) => e)) as ThawFailedError;
    expect(err).toBeInstanceOf(ThawFailedError);
    expect(err.message).toBe('copy failed; then thawing the guest filesystems failed: guest agent guest-fsfreeze-thaw failed: failed to thaw /mnt/data (GenericError)');
    expect((err.original as Error).message).toBe('copy failed');
    expect(err.thawError).toBeInstanceOf(AgentCommandError);
    expect(err.hint).toMatch(/virsh domfsthaw vm1/);
    expect(g.state.frozen).toBe(true);
  });
});

describe('rotateFrozen', () => {
  const done: RotateResult = { passId: 1, generation: 2, disks: [] };
  /** A rotation that records what the guest's state was at each of its steps. */
  function rotation(g: Guest, opts: { failBefore?: Error; failTx?: Error } = {}) {
    const seen: string[] = [];
    const rotate: Rotate = async (around) => {
      seen.push(`prepare:${g.state.frozen ? 'frozen' : 'thawed'}`);
      if (opts.failBefore) throw opts.failBefore;
      const run = async () => {
        seen.push(`transaction:${g.state.frozen ? 'frozen' : 'thawed'}`);
        if (opts.failTx) throw opts.failTx;
      };
      await (around ? around(run) : run());
      return done;
    };
    return { rotate, seen };
  }
  const marker = () => {
    const m = { set: 0, clear: 0 };
    return { m, api: { set: () => { m.set++; return Promise.resolve(); }, clear: () => { m.clear++; return Promise.resolve(); } } };
  };

  it('sent early, the freeze is under way while the rotation prepares; the transaction runs frozen, then the guest is thawed', async () => {
    let freezeAsked = false;
    const g = await guest((req) => { if (req.execute === 'guest-fsfreeze-freeze') freezeAsked = true; return false; });
    const { rotate, seen } = rotation(g);
    const { m, api } = marker();
    const r = await rotateFrozen(async (around) => {
      // The rotation's own preparation waits until the agent has seen the freeze.
      for (let i = 0; i < 200 && !freezeAsked; i++) await new Promise((res) => setImmediate(res));
      expect(freezeAsked).toBe(true);
      return rotate(around);
    }, g.agent, { freezeTimeoutMs: 5_000, early: true, marker: api });
    expect(r.rot).toBe(done);
    expect(seen).toEqual(['prepare:frozen', 'transaction:frozen']);
    expect(r.freeze.consistency).toBe('filesystem');
    expect(r.freeze.freezeWindowMs).toBeGreaterThanOrEqual(0);
    expect(g.state).toEqual({ frozen: false, thawCalls: 1 });
    expect(m).toMatchObject({ set: 1, clear: 1 });
  });

  it('not early, the freeze waits for the transaction', async () => {
    const g = await guest();
    const { rotate, seen } = rotation(g);
    const r = await rotateFrozen(rotate, g.agent, { freezeTimeoutMs: 5_000 });
    expect(seen).toEqual(['prepare:thawed', 'transaction:frozen']);
    expect(r.freeze.consistency).toBe('filesystem');
    expect(g.state.frozen).toBe(false);
  });

  it('a rotation that fails before its transaction thaws an early freeze, then runs unfrozen and says so', async () => {
    const g = await guest();
    let calls = 0;
    const r = await rotateFrozen(async (around) => {
      calls++;
      if (around) throw new Error('recovery failed');
      return done;
    }, g.agent, { freezeTimeoutMs: 5_000, early: true });
    expect(calls).toBe(2);
    expect(r.freeze).toMatchObject({ consistency: 'crash', freezeWindowMs: null });
    expect(r.freeze.note).toMatch(/recovery failed/);
    expect(g.state).toEqual({ frozen: false, thawCalls: 1 });
  });

  it('a freeze that fails leaves the guest thawed and the backup crash-consistent', async () => {
    const g = await guest((req, ctx, state) => {
      if (req.execute !== 'guest-fsfreeze-freeze') return false;
      state.frozen = true;
      ctx.error(req, 'GenericError', 'failed to freeze /mnt/data: Device or resource busy');
      return true;
    });
    const { rotate, seen } = rotation(g);
    const r = await rotateFrozen(rotate, g.agent, { freezeTimeoutMs: 5_000, early: true });
    expect(r.freeze.consistency).toBe('crash');
    expect(r.freeze.note).toMatch(/Device or resource busy/);
    expect(seen.at(-1)).toBe('transaction:thawed');
    expect(g.state.frozen).toBe(false);
  });

  it('a failed transaction is thrown after the thaw, and not retried', async () => {
    const g = await guest();
    const { rotate, seen } = rotation(g, { failTx: new Error('transaction failed') });
    await expect(rotateFrozen(rotate, g.agent, { freezeTimeoutMs: 5_000, early: true })).rejects.toThrow('transaction failed');
    expect(seen).toHaveLength(2);
    expect(seen[1]).toBe('transaction:frozen');
    expect(g.state).toEqual({ frozen: false, thawCalls: 1 });
  });

  it('a thaw that fails after the transaction keeps the rotation and warns; the freeze marker stays', async () => {
    const g = await guest((req, ctx) => {
      if (req.execute !== 'guest-fsfreeze-thaw') return false;
      ctx.error(req, 'GenericError', 'failed to thaw /mnt/data');
      return true;
    });
    const { rotate } = rotation(g);
    const { m, api } = marker();
    const r = await rotateFrozen(rotate, g.agent, { freezeTimeoutMs: 5_000, early: true, marker: api });
    expect(r.rot).toBe(done);
    expect(r.freeze.consistency).toBe('filesystem');
    expect(r.freeze.note).toMatch(/WARNING: the thaw failed after the snapshot.*failed to thaw \/mnt\/data/);
    expect(m).toMatchObject({ set: 1, clear: 0 });
  });
});

describe('exec', () => {
  it('polls guest-exec-status until the program exits and decodes its output', async () => {
    let polls = 0;
    const g = await guest((req, ctx) => {
      if (req.execute === 'guest-exec') {
        expect(req.arguments).toEqual({ path: '/bin/cat', arg: ['-'], 'capture-output': true, 'input-data': Buffer.from('héllo\n').toString('base64') });
        ctx.reply(req, { pid: 99 });
        return true;
      }
      if (req.execute === 'guest-exec-status') {
        expect(req.arguments).toEqual({ pid: 99 });
        ctx.reply(
          req,
          ++polls < 3
            ? { exited: false }
            : { exited: true, exitcode: 3, 'out-data': Buffer.from('héllo\n').toString('base64'), 'err-data': Buffer.from('warn').toString('base64') },
        );
        return true;
      }
      return false;
    });
    const r = await g.agent.exec('/bin/cat', ['-'], { input: 'héllo\n' });
    expect(r).toMatchObject({ exitCode: 3, stdout: 'héllo\n', stderr: 'warn', truncated: false });
    expect(r.signal).toBeUndefined();
    expect(polls).toBe(3);
    await expect(g.agent.exec('/bin/cat', ['-'], { input: 'héllo\n', reject: true })).rejects.toThrow(GuestExecError);
  });

  it('gives up at the deadline, naming the guest pid', async () => {
    const g = await guest((req, ctx) => {
      if (req.execute === 'guest-exec') ctx.reply(req, { pid: 5 });
      else if (req.execute === 'guest-exec-status') ctx.reply(req, { exited: false });
      else return false;
      return true;
    });
    const t0 = Date.now();
    const err = await g.agent.exec('/bin/sleep', ['1000'], { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toBe('guest-exec /bin/sleep (guest pid 5) did not exit within 200 ms');
    expect(Date.now() - t0).toBeLessThan(1000);
  });
});
