// The guest-agent client over QEMU's agent socket against the real qemu-ga in a booted guest.
import { beforeAll, describe, expect, it } from 'vitest';
import { TimeoutError } from '../src/util/errors.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startQemuGuest, type QemuGuest } from './support/qemu.js';
import { AgentCommandError, GuestAgent, SocketTransport } from '../src/guest/index.js';

useCleanup();

let guest: QemuGuest;
let agent: GuestAgent;

beforeAll(async () => {
  guest = await startQemuGuest();
  agent = new GuestAgent(new SocketTransport(guest.agentSocket, { domain: 'agent-real-guest' }));
  onCleanup(() => agent.close());
  await agent.waitReady({ timeoutMs: 60_000 });
});

describe('guest agent over the QEMU socket', () => {
  it('pings and reports the agent version and its commands', async () => {
    await agent.ping();
    const info = await agent.info();
    expect(info.version).toMatch(/^7\.2/);
    const names = info.supported_commands.filter((c) => c.enabled).map((c) => c.name);
    expect(names).toEqual(expect.arrayContaining(['guest-exec', 'guest-exec-status', 'guest-fsfreeze-freeze', 'guest-get-fsinfo']));
  });

  it('runs programs with guest-exec: output, exit code, stdin, signal', async () => {
    expect(await agent.exec('/bin/echo', ['hello', 'wörld'])).toMatchObject({ exitCode: 0, stdout: 'hello wörld\n', stderr: '' });
    const failing = await agent.exec('/bin/sh', ['-c', 'echo oops >&2; exit 3']);
    expect(failing).toMatchObject({ exitCode: 3, stdout: '', stderr: 'oops\n' });
    expect((await agent.exec('/bin/cat', [], { input: 'piped in\n' })).stdout).toBe('piped in\n');
    const killed = await agent.exec('/bin/sh', ['-c', 'kill -9 $$']);
    expect(killed.signal).toBe(9);
    expect(killed.exitCode).toBeUndefined();
    const bin = await agent.exec('/bin/sh', ['-c', 'printf "\\000\\377\\001"']);
    expect([...bin.stdoutBytes]).toEqual([0, 255, 1]);
  });

  it('reports an unknown program as the agent\'s error', async () => {
    const err = await agent.exec('/no/such/program').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentCommandError);
    expect((err as AgentCommandError).command).toBe('guest-exec');
  });

  it('lists the mounted filesystems with type, usage and disk', async () => {
    const fs = await agent.getFsinfo();
    const data = fs.find((f) => f.mountpoint === '/mnt/data');
    expect(data).toMatchObject({ type: 'ext4', name: 'vda' });
    expect(data!['total-bytes']).toBeGreaterThan(0);
    expect(data!['used-bytes']).toBeGreaterThan(0);
    expect(data!.disk[0]).toMatchObject({ 'bus-type': 'virtio' });
    const disks = await agent.getDisks();
    expect(disks.map((d) => d.name)).toEqual(expect.arrayContaining(['/dev/vda', '/dev/vdb']));
  });

  it('freezes around a step, and a failing step still leaves the guest thawed', async () => {
    expect(await agent.fsfreezeStatus()).toBe('thawed');
    const seen = await agent.withFrozen(async () => agent.fsfreezeStatus());
    expect(seen).toBe('frozen');
    expect(await agent.fsfreezeStatus()).toBe('thawed');

    const boom = new Error('snapshot failed');
    await expect(
      agent.withFrozen(async () => {
        expect(await agent.fsfreezeStatus()).toBe('frozen');
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(await agent.fsfreezeStatus()).toBe('thawed');

    const timedOut = await agent.withFrozen(() => new Promise(() => {}), { timeoutMs: 500 }).catch((e: unknown) => e);
    expect(timedOut).toBeInstanceOf(TimeoutError);
    expect(await agent.fsfreezeStatus()).toBe('thawed');

    // The guest can write again.
    const w = await agent.exec('/bin/sh', ['-c', 'echo ok > /mnt/data/after-thaw && sync && cat /mnt/data/after-thaw'], { timeoutMs: 20_000 });
    expect(w.stdout).toBe('ok\n');
  });

  it('resyncs after a call that timed out and carries on', async () => {
    // A guest under TCG cannot answer within 1 ms: the call is abandoned and its reply comes late.
    const err = await agent.execute('guest-get-fsinfo', undefined, { timeoutMs: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    const gaveUp = await agent.exec('/bin/sleep', ['1'], { timeoutMs: 50 }).catch((e: unknown) => e);
    expect(gaveUp).toBeInstanceOf(TimeoutError);
    expect((gaveUp as Error).message).toMatch(/guest-exec \/bin\/sleep \(guest pid \d+\) did not exit within 50 ms/);
    expect((await agent.exec('/bin/echo', ['still here'])).stdout).toBe('still here\n');
  });
});
