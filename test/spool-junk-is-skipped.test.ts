// Junk in the hook spool named like an event — a directory, a FIFO — is skipped and reported:
// virtcbtd neither crashes (nor refuses to start again) on a directory, nor stalls for ever on a
// FIFO that no one writes; the real events around them are handled. An event file that is not
// whole yet (empty, cut off in its header) is left for its writer, never handled away.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { useCleanup } from './support/cleanup.js';
import { spoolEvent, startTestDaemon } from './support/daemon.js';

useCleanup();

/** An event for a domain virtcbt does not track: handled (ignored) and removed at once. */
const UNTRACKED = 'domain=virtcbt-test-not-tracked\nop=started\nsub=begin\nextra=-\n\n';

function untrackedEvent(dir: string, name: string): Promise<string> {
  return spoolEvent(dir, name, UNTRACKED);
}

describe('spool junk', () => {
  it('a directory and a FIFO named *.event are skipped and reported; events after them are handled; the daemon restarts with them present', async () => {
    const d = await startTestDaemon();
    // Names sort before the real event's, so that they are met first.
    const dir = join(d.spoolDir, '1000-1-started-begin.event');
    const fifo = join(d.spoolDir, '1001-1-started-begin.event');
    await mkdir(dir);
    execFileSync('mkfifo', [fifo]);
    const real = await untrackedEvent(d.spoolDir, '1002-1-started-begin.event');
    await pollUntil(() => !existsSync(real), 'the event after the junk to be handled', { timeoutMs: 15_000, intervalMs: 100 });
    expect(d.running).toBe(true);
    expect(d.log()).toMatch(/skipping a directory in the hook spool.*1000-1-started-begin\.event/);
    expect(d.log()).toMatch(/skipping a FIFO in the hook spool.*1001-1-started-begin\.event/);
    // Left where they are (virtcbt did not write them), and a restart replays around them.
    expect(existsSync(dir) && existsSync(fifo)).toBe(true);
    await d.stop();
    const replayed = await untrackedEvent(d.spoolDir, '1003-1-started-begin.event');
    await d.start();
    await pollUntil(() => !existsSync(replayed), 'the replayed event to be handled', { timeoutMs: 15_000, intervalMs: 100 });
    const status = await d.cli(['status']);
    expect(status.exitCode).toBe(0);
  });

  it('an empty event and one cut off before the end of its header are left alone and reported, not handled away; whole, they are handled', async () => {
    const d = await startTestDaemon();
    // As a writer that does not rename into place leaves them for a moment (or for good).
    const empty = join(d.spoolDir, '2000-1-started-begin.event');
    const cut = join(d.spoolDir, '2001-1-started-begin.event');
    await writeFile(empty, '');
    await writeFile(cut, 'domain=virtcbt-test-not-tracked\nop=sta');
    const real = await untrackedEvent(d.spoolDir, '2002-1-started-begin.event');
    await pollUntil(() => !existsSync(real), 'the event after them to be handled', { timeoutMs: 15_000, intervalMs: 100 });
    expect(d.log()).toMatch(/skipping an incomplete event .*2000-1-started-begin\.event/);
    expect(d.log()).toMatch(/skipping an incomplete event .*2001-1-started-begin\.event/);
    expect(existsSync(empty) && existsSync(cut)).toBe(true);
    // Their writer finishes: each is handled like any event.
    await writeFile(empty, UNTRACKED);
    await writeFile(cut, UNTRACKED);
    await pollUntil(() => !existsSync(empty) && !existsSync(cut), 'the finished events to be handled', { timeoutMs: 15_000, intervalMs: 100 });
  });
});
