// `pass commit|abort DOMAIN --consumer NAME --pass ID` acts only on a pass of that domain and
// consumer: a pass id of another consumer (a typo, a tool's stale id) or of another domain is
// refused, naming whose pass it is, and that pass stays open and no consumer moves. Before, the
// daemon closed pass ID whoever it belonged to: the other consumer moved forward over changes it
// never copied (and the commit ran outside that domain's queue).
import { describe, beforeAll, expect, it } from 'vitest';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

let daemon: TestDaemon;
let a: LibvirtGuest;
let b: LibvirtGuest;

beforeAll(async () => {
  daemon = await startTestDaemon();
  a = await startLibvirtGuest({ name: 'passa', scratchFormat: 'qcow2', start: false });
  b = await startLibvirtGuest({ name: 'passb', scratchFormat: 'qcow2', start: false });
  await daemon.cli(['enable', a.name]);
  await daemon.cli(['enable', b.name]);
  for (const c of ['nightly', 'mytool']) await daemon.cli(['consumer', 'add', a.name, c]);
  await daemon.cli(['consumer', 'add', b.name, 'mytool']);
});

async function isOpen(domain: string, id: number): Promise<boolean> {
  const s = await daemon.cliJson(['status', domain]);
  return s.openPasses.some((p: { id: number }) => p.id === id);
}

describe('pass commit and abort act only on the named domain and consumer', () => {
  for (const verb of ['commit', 'abort'] as const) {
    it(`${verb} with another consumer's pass id is refused; that pass stays open, nobody moves`, async () => {
      const p = await daemon.cliJson(['pass', 'begin', a.name, '--consumer', 'nightly']);
      const before = JSON.stringify((await daemon.cliJson(['status', a.name])).consumers);
      const r = await daemon.cli(['pass', verb, a.name, '--consumer', 'mytool', '--pass', String(p.pass)], { reject: false });
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toContain(`pass ${p.pass} is a pass of consumer nightly of ${a.name}`);
      expect(JSON.stringify((await daemon.cliJson(['status', a.name])).consumers)).toBe(before);
      expect(await isOpen(a.name, p.pass)).toBe(true);
      await daemon.cli(['pass', 'abort', a.name, '--consumer', 'nightly', '--pass', String(p.pass)]);
    });

    it(`${verb} with another domain's pass id is refused; that pass stays open`, async () => {
      const p = await daemon.cliJson(['pass', 'begin', a.name, '--consumer', 'mytool']);
      const r = await daemon.cli(['pass', verb, b.name, '--consumer', 'mytool', '--pass', String(p.pass)], { reject: false });
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toContain(`pass ${p.pass} is a pass of consumer mytool of ${a.name}`);
      expect(await isOpen(a.name, p.pass)).toBe(true);
      await daemon.cli(['pass', verb, a.name, '--consumer', 'mytool', '--pass', String(p.pass)]);
    });
  }
});
