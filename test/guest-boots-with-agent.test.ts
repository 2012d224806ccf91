// The direct-QEMU rig boots the test guest under TCG to a ready guest agent, with the disks as
// named -blockdev nodes and a dedicated QMP socket.
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { useCleanup } from './support/cleanup.js';
import { startQemuGuest } from './support/qemu.js';
import { qmpOnce, rawSession } from './support/qmp-raw.js';

useCleanup();

describe('test guest under QEMU', () => {
  it('boots to a guest agent that answers guest-sync-delimited and guest-ping', async () => {
    const guest = await startQemuGuest({ xfs: true });
    console.info(`test guest booted in ${guest.bootMs} ms`);

    const agent = await rawSession(guest.agentSocket, 30_000);
    try {
      // guest-sync-delimited: the agent answers with 0xff then the id; older replies may precede it.
      const id = Math.floor(Math.random() * 2 ** 31);
      agent.write(Buffer.from([0xff]));
      agent.send({ execute: 'guest-sync-delimited', arguments: { id } });
      for (;;) {
        const m = await agent.next();
        if (m.return === id) break;
      }
      agent.send({ execute: 'guest-ping' });
      expect(await agent.next()).toEqual({ return: {} });

      agent.send({ execute: 'guest-get-fsinfo' });
      const fs = (await agent.next()).return as { mountpoint: string; type: string }[];
      expect(fs.map((f) => `${f.mountpoint}:${f.type}`).sort()).toEqual(['/mnt/data:ext4', '/mnt/xfs:xfs']);
    } finally {
      agent.close();
    }

    const blocks = await qmpOnce(guest.qmpSocket, 'query-named-block-nodes', { flat: true });
    const names = (blocks.return as { 'node-name': string }[]).map((n) => n['node-name']);
    expect(names).toEqual(expect.arrayContaining(['data', 'data-file', 'scratch', 'scratch-file', 'xfs', 'xfs-file']));

    await guest.stop();
    expect(await guest.exited).toBe(0);
    expect(existsSync(guest.dir)).toBe(false);
  });

  it('fails with QEMU\'s own error when QEMU cannot start', async () => {
    await expect(startQemuGuest({ extraArgs: ['-device', 'virtcbt-no-such-device'] })).rejects.toThrow(
      /QEMU exited[\s\S]*virtcbt-no-such-device/,
    );
  });
});
