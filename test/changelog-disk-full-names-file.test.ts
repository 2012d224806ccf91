// The change log's filesystem fills up: SQLite says only "database or disk is full"; virtcbt's
// error names the change log's file and the next step, and once space is freed the same command
// works.
import { execa } from 'execa';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon } from './support/daemon.js';
import { startLibvirtGuest } from './support/libvirt.js';

useCleanup();

describe('change log on a full disk', () => {
  it('the error names the change log and what to do; freeing space fixes it', async () => {
    const d = await startTestDaemon();
    const g = await startLibvirtGuest({ name: 'full', scratchFormat: 'qcow2', start: false });
    await d.cli(['enable', g.name]);
    await d.stop();
    // The state directory moves onto a small tmpfs of its own.
    const saved = `${d.stateDir}.saved`;
    onCleanup(() => rm(saved, { recursive: true, force: true }));
    await execa('cp', ['-a', d.stateDir, saved]);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0750', 'tmpfs', d.stateDir]);
    onCleanup(async () => {
      await d.stop();
      await execa('umount', [d.stateDir], { reject: false });
    });
    await execa('cp', ['-a', `${saved}/.`, d.stateDir]);
    await d.start();

    const filler = join(d.stateDir, 'filler');
    const dd = await execa('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], { reject: false });
    expect(dd.stderr).toMatch(/No space left/);
    let failed: { exitCode: number; stderr: string } | undefined;
    // Each new consumer is a commit that grows the write-ahead log: one of the first few needs a new block.
    for (let i = 0; i < 64 && !failed; i++) {
      const r = await d.cli(['consumer', 'add', g.name, `c${i}`], { reject: false });
      if (r.exitCode !== 0) failed = r;
    }
    expect(failed, 'no write failed on a full disk').toBeDefined();
    const logFile = join(d.stateDir, 'changelog.db');
    expect(failed!.stderr).toContain(`the change log ${logFile} cannot grow: the filesystem holding it is full`);
    expect(failed!.stderr).toContain(`df -h ${d.stateDir}`);
    expect(d.running).toBe(true);

    await rm(filler);
    const again = await d.cli(['consumer', 'add', g.name, 'after-freeing'], { reject: false });
    expect(again.exitCode, again.stderr).toBe(0);
  });
});
