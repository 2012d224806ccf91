// A hook event that cannot work by waiting (here: its domain was undefined behind virtcbt's back)
// is not deleted silently: it is moved into the spool's failed/ directory with an error line that
// names the file, and the events after it are handled.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { useCleanup } from './support/cleanup.js';
import { spoolEvent, startTestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh } from './support/libvirt.js';

useCleanup();

describe('spool: a failed event', () => {
  it('is moved into failed/ with a log line, not deleted, and the spool goes on', async () => {
    const d = await startTestDaemon();
    const g = await startLibvirtGuest({ name: 'gone', scratchFormat: 'qcow2', start: false });
    await d.cli(['enable', g.name]);
    await virsh(['undefine', g.name]);
    const name = `${Date.now()}000-1-started-begin.event`;
    await spoolEvent(d.spoolDir, name, `domain=${g.name}\nop=started\nsub=begin\nextra=-\n\n`);
    const next = await spoolEvent(d.spoolDir, `${Date.now() + 1}000-1-started-begin.event`, 'domain=virtcbt-test-not-tracked\nop=started\nsub=begin\nextra=-\n\n');
    await pollUntil(() => existsSync(join(d.spoolDir, 'failed', name)), 'the event to be moved aside', { timeoutMs: 15_000, intervalMs: 100 });
    await pollUntil(() => !existsSync(next), 'the next event to be handled', { timeoutMs: 15_000, intervalMs: 100 });
    expect(existsSync(join(d.spoolDir, name))).toBe(false);
    expect(d.log()).toMatch(new RegExp(`hook event failed; moved aside.*${name.replace(/\./g, '\\.')}.*no libvirt domain named`));
  });
});
