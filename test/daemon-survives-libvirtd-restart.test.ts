// libvirtd restarted under a running virtcbtd with a running domain: while it is down `status`
// fails and says why, and a hook event that fails meanwhile stays in the spool; within seconds of
// libvirtd being back, status, changes (a write made meanwhile is reported), backup and enable of
// another domain all work, and that event is handled, not lost.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { LibvirtTransport, VirshShellTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { backupJson, tempDir } from './support/backup.js';
import { diskChanges, KiB, MiB, waitConnected } from './support/cbt.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { spoolEvent, startTestDaemon } from './support/daemon.js';
import { ensureLibvirtd, LIBVIRT_URI, startLibvirtGuest } from './support/libvirt.js';

useCleanup();

/** Stops libvirtd (SIGTERM; its domains keep running) and waits until it is gone. */
async function stopLibvirtd(): Promise<void> {
  const pid = (await execa('pgrep', ['-x', 'libvirtd'], { reject: false })).stdout.trim().split('\n')[0];
  if (!pid) return;
  process.kill(Number(pid), 'SIGTERM');
  await pollUntil(() => !existsSync(`/proc/${pid}`), 'libvirtd to stop', { timeoutMs: 30_000, intervalMs: 50 });
}

describe('libvirtd restart under virtcbtd', () => {
  it('status, changes, backup, enable and a hook event spooled meanwhile all work within seconds', async () => {
    // Other test files share this libvirtd: whatever happens, it is left running.
    onCleanup(ensureLibvirtd);
    const daemon = await startTestDaemon();
    const a = await startLibvirtGuest({ name: 'lvrA', scratchFormat: 'qcow2', start: false });
    const b = await startLibvirtGuest({ name: 'lvrB', scratchFormat: 'qcow2', start: false });
    await daemon.cli(['enable', a.name]);
    await a.start();
    await waitConnected(daemon, a.name);
    await daemon.cli(['consumer', 'add', a.name, 'c1']);
    const repo = tempDir('lvr-repo');
    await backupJson(daemon, [a.name, '--consumer', 'c1', '--repo', repo]);

    // A write the guest makes on its own while libvirtd is down (the agent runs it in the background).
    const offset = 8 * MiB;
    await new LibvirtTransport(a.name, { uri: LIBVIRT_URI }).execute('guest-exec', {
      path: '/bin/sh',
      arg: ['-c', `sleep 1; dd if=/dev/urandom of=/dev/vdb bs=4096 seek=${offset / 4096} count=16 oflag=direct conv=notrunc`],
      'capture-output': false,
    });

    // virtcbtd's long-lived virsh shell for the guest agent (the freeze) lives through the restart.
    const shell = new VirshShellTransport(a.name, { uri: LIBVIRT_URI, commandTimeoutMs: 10_000 });
    onCleanup(() => shell.close());
    await shell.execute('guest-ping');

    const downAt = Date.now();
    await stopLibvirtd();
    // The event libvirtd itself sends when it restarts, spooled while it is down: handling it needs libvirt.
    const event = await spoolEvent(daemon.spoolDir, `${Date.now()}000-1-reconnect-begin.event`, `domain=${a.name}\nop=reconnect\nsub=begin\nextra=-\n\n`);
    await pollUntil(() => daemon.log().includes('hook event failed; it stays in the spool and is retried'),
      'the event to fail and stay in the spool', { timeoutMs: 15_000, intervalMs: 50 });
    expect(existsSync(event)).toBe(true);
    const down = await daemon.cli(['status', a.name, '--json'], { reject: false });
    expect(down.exitCode).toBe(1);
    expect(JSON.parse(down.stdout).libvirtError).toMatch(/cannot connect to libvirt/);
    const downAll = await daemon.cli(['status', '--json'], { reject: false });
    expect(downAll.exitCode).toBe(1);
    expect(JSON.parse(downAll.stdout).libvirt).toMatchObject({ reachable: false });
    await ensureLibvirtd();
    console.log(`libvirtd was down for ${Date.now() - downAt} ms`);

    const t0 = Date.now();
    await pollUntil(async () => (await daemon.cli(['status'], { reject: false })).exitCode === 0, 'status to work again', { timeoutMs: 15_000, intervalMs: 100 });
    await pollUntil(() => !existsSync(event), 'the spooled event to be handled', { timeoutMs: 15_000, intervalMs: 100 });
    expect(daemon.log()).toMatch(new RegExp(`hook event handled on retry.*${event.split('/').pop()!.replace(/\./g, '\\.')}`));
    expect(daemon.log()).not.toContain('moved aside');
    console.log(`status and the spooled event worked ${Date.now() - t0} ms after libvirtd answered`);

    await shell.execute('guest-ping');
    // virtcbtd's own QMP socket is QEMU's, not libvirtd's: the connection lived through the restart.
    expect((await daemon.cliJson(['status', a.name])).connected).toBe(true);
    expect(daemon.log()).not.toContain('QMP connection closed');

    const changes = await diskChanges(daemon, a.name, 'c1');
    expect(changes.full).toBe(false);
    expect(changes.extents.some(([o, l]) => o <= offset && o + l >= offset + 64 * KiB)).toBe(true);
    const inc = await backupJson(daemon, [a.name, '--consumer', 'c1', '--repo', repo]);
    expect(inc.kind).toBe('incremental');
    // The guest agent (through virtcbtd's virsh shell, which lost its libvirtd too) froze the guest.
    expect(inc.consistency, inc.consistencyNote).toBe('filesystem');
    await daemon.cli(['enable', b.name]);
    expect((await daemon.cliJson(['status', b.name])).disks.length).toBeGreaterThan(0);
    console.log(`changes, backup and enable done ${Date.now() - t0} ms after libvirtd answered`);
  });
});
