// A domain name virsh's shell would split or reinterpret (spaces, ';', quotes) never goes into the
// long-lived virsh shell: the call goes through one plain virsh process with the name as its own
// argument. libvirt's built-in test driver needs no daemon.
import { describe, expect, it } from 'vitest';
import { VirshShellTransport } from '../src/guest/index.js';

describe('VirshShellTransport and domain names', () => {
  for (const name of ['a;b', 'two words', "it's"]) {
    it(`passes '${name}' whole to virsh, without a shell`, async () => {
      const t = new VirshShellTransport(name, { uri: 'test:///default', commandTimeoutMs: 10_000 });
      try {
        const err = await t.execute('guest-ping').then(() => undefined, (e: unknown) => e as Error);
        expect(err?.message).toContain(`'${name}'`);
        expect((t as unknown as { proc?: unknown }).proc).toBeUndefined();
      } finally {
        await t.close();
      }
    });
  }
});
