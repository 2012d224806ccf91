// A paused (suspended) domain's guest agent cannot answer; libvirt calls that "domain is not
// running", and the error must say the domain is paused and to resume it, not to start it.
import { describe, expect, it } from 'vitest';
import { LibvirtTransport, VirshShellTransport } from '../src/guest/index.js';
import { useCleanup } from './support/cleanup.js';
import { LIBVIRT_URI, startLibvirtGuest, virsh } from './support/libvirt.js';

useCleanup();

describe('agent on a paused domain', () => {
  it('both transports say it is paused and how to resume it', async () => {
    const g = await startLibvirtGuest({ name: 'paused' });
    await virsh(['suspend', g.name]);
    const shell = new VirshShellTransport(g.name, { uri: LIBVIRT_URI, commandTimeoutMs: 5_000 });
    try {
      for (const t of [new LibvirtTransport(g.name, { uri: LIBVIRT_URI, commandTimeoutMs: 5_000 }), shell]) {
        const err = await t.execute('guest-ping').then(() => undefined, (e: unknown) => e as { message: string; hint?: string });
        expect(err, t.description).toBeDefined();
        expect(err!.message, t.description).toContain(`domain ${g.name} is paused`);
        expect(err!.hint, t.description).toBe(`resume it with \`virsh resume ${g.name}\``);
      }
    } finally {
      await shell.close();
    }
    // Once it runs again, the agent answers.
    await virsh(['resume', g.name]);
    await new LibvirtTransport(g.name, { uri: LIBVIRT_URI }).execute('guest-ping');
  });
});
