// The same guest-agent calls pass through a libvirt domain (virsh qemu-agent-command), and virsh's errors become clear ones;
// the domain's extra QMP socket finds its disks by libvirt alias.
import { beforeAll, describe, expect, it } from 'vitest';
import { TimeoutError } from '../src/util/errors.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { LIBVIRT_URI, startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';
import {
  AgentCommandError,
  AgentError,
  AgentUnavailableError,
  GuestAgent,
  LibvirtTransport,
  virshAgentError,
} from '../src/guest/index.js';
import { QmpClient, queryBlock, findDisk } from '../src/qmp/index.js';

useCleanup();

describe('virsh error texts (libvirt 9.0)', () => {
  const where = { domain: 'vm1', uri: LIBVIRT_URI, command: 'guest-ping' };

  it('tells the admin to install the agent and add the channel when it is not configured', () => {
    const e = virshAgentError('error: argument unsupported: QEMU guest agent is not configured\n', where);
    expect(e).toBeInstanceOf(AgentUnavailableError);
    expect(e.message).toBe('domain vm1 has no guest agent channel: argument unsupported: QEMU guest agent is not configured');
    expect(e.hint).toMatch(/install and start qemu-guest-agent.*org\.qemu\.guest_agent\.0/);
  });

  it('says the agent is not responding, naming the domain', () => {
    const e = virshAgentError('error: Guest agent is not responding: QEMU guest agent is not connected\n', where);
    expect(e).toBeInstanceOf(AgentUnavailableError);
    expect(e.message).toMatch(/^guest agent of domain vm1 is not responding/);
    expect(e.hint).toMatch(/qemu-guest-agent/);
  });

  it('keeps the agent\'s own reason for a failed command, in both libvirt spellings', () => {
    for (const prefix of ['internal error', 'guest agent command failed']) {
      const e = virshAgentError(
        `error: ${prefix}: unable to execute QEMU agent command 'guest-exec': Failed to execute child process "/x" (No such file or directory)\n`,
        { ...where, command: 'guest-exec' },
      ) as AgentCommandError;
      expect(e).toBeInstanceOf(AgentCommandError);
      expect(e.command).toBe('guest-exec');
      expect(e.desc).toBe('Failed to execute child process "/x" (No such file or directory)');
    }
  });

  it('falls back to the raw text and the exit code', () => {
    const e = virshAgentError('error: something new\n', { ...where, exitCode: 1 });
    expect(e).toBeInstanceOf(AgentError);
    expect(e.message).toBe('virsh qemu-agent-command guest-ping on domain vm1 failed (exit 1): something new');
  });

  it('maps a timeout to TimeoutError', () => {
    expect(virshAgentError('error: Guest agent command timed out\n', where)).toBeInstanceOf(TimeoutError);
  });
});

describe('guest agent through libvirt', () => {
  let vm: LibvirtGuest;
  let agent: GuestAgent;

  beforeAll(async () => {
    vm = await startLibvirtGuest({ name: 'agent', withQmpSocket: true });
    agent = new GuestAgent(new LibvirtTransport(vm.name, { uri: LIBVIRT_URI }));
  });

  it('pings, reads info and fsinfo, and runs a program', async () => {
    await agent.ping();
    expect((await agent.info()).version).toMatch(/^7\.2/);
    const fs = await agent.getFsinfo();
    expect(fs.find((f) => f.mountpoint === '/mnt/data')?.type).toBe('ext4');
    const r = await agent.exec('/bin/sh', ['-c', 'echo out; echo err >&2; exit 4'], { timeoutMs: 30_000 });
    expect(r).toMatchObject({ exitCode: 4, stdout: 'out\n', stderr: 'err\n' });
  });

  it('freezes around a failing step and leaves the domain thawed', async () => {
    const boom = new Error('backup step failed');
    await expect(
      agent.withFrozen(async () => {
        expect(await agent.fsfreezeStatus()).toBe('frozen');
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(await agent.fsfreezeStatus()).toBe('thawed');
  });

  it('reports the agent\'s error for an unknown command', async () => {
    const e = (await agent.execute('guest-no-such-command').catch((err: unknown) => err)) as AgentCommandError;
    expect(e).toBeInstanceOf(AgentCommandError);
    expect(e.command).toBe('guest-no-such-command');
    expect(e.domain).toBe(vm.name);
  });

  it('finds the disks on the domain\'s own QMP socket by libvirt alias, with libvirt\'s node names', async () => {
    const qmp = await QmpClient.connect(vm.qmpSocket!, { domain: vm.name });
    onCleanup(() => qmp.close());
    const blocks = await queryBlock(qmp);
    const vda = findDisk(blocks, 'virtio-disk0');
    expect(vda).toMatchObject({ device: '', qdev: '/machine/peripheral/virtio-disk0/virtio-backend', format: 'qcow2' });
    expect(vda!.node).toMatch(/^libvirt-\d+-format$/);
    expect(findDisk(blocks, 'virtio-disk1')?.format).toBe('raw');
    await qmp.close();
  });

  it('names a domain that does not exist', async () => {
    const ghost = new GuestAgent(new LibvirtTransport('virtcbt-test-no-such-domain', { uri: LIBVIRT_URI }));
    const e = (await ghost.ping().catch((err: unknown) => err)) as AgentUnavailableError;
    expect(e).toBeInstanceOf(AgentUnavailableError);
    expect(e.message).toMatch(/domain virtcbt-test-no-such-domain not found/);
  });

  it('says the domain is not running once it is off', async () => {
    await vm.destroy();
    const e = (await agent.ping({ timeoutMs: 5_000 }).catch((err: unknown) => err)) as AgentUnavailableError;
    expect(e).toBeInstanceOf(AgentUnavailableError);
    expect(e.message).toMatch(new RegExp(`domain ${vm.name} is not running`));
  });
});
