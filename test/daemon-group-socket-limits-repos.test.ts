// Members of daemon.socketGroup talk to virtcbtd (root) through the group socket, and may have it
// write backups only under backup.allowedRepoRoots: a path outside, a symlink or ".." leading out
// is refused with the allowed roots named, and nothing is created there. Root's own socket is
// 0600 and not limited. Enabling, disabling, consumers, passes and cancelling a job are root's
// alone; listing jobs is not. The CLI picks the socket by who runs it.
import { execa } from 'execa';
import { chmodSync, existsSync, lstatSync, mkdirSync, statSync, symlinkSync } from 'node:fs';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon } from './support/daemon.js';
import { tempDir } from './support/files.js';
import { startLibvirtGuest } from './support/libvirt.js';

useCleanup();
const ROOT = resolve(import.meta.dirname, '..');
const GROUP = 'virtcbt-test-ops';
const USER = 'virtcbt-test-op';

/** The test's group and unprivileged member, created for it and removed after. */
async function groupMember(): Promise<{ gid: number }> {
  if ((await execa('getent', ['group', GROUP], { reject: false })).exitCode !== 0) {
    await execa('groupadd', [GROUP]);
    onCleanup(() => execa('groupdel', [GROUP], { reject: false }));
  }
  if ((await execa('id', [USER], { reject: false })).exitCode !== 0) {
    await execa('useradd', ['-M', '-N', '-g', GROUP, '-s', '/usr/sbin/nologin', USER]);
    onCleanup(() => execa('userdel', [USER], { reject: false }));
  }
  return { gid: Number((await execa('getent', ['group', GROUP])).stdout.split(':')[2]) };
}

/**
 * The member runs this checkout's CLI: a clone in a private directory (`mktemp -d` is 0700) is not
 * reachable by other users, so the directories above ROOT get search permission (o+x, no listing)
 * for the test and their modes back afterwards.
 */
function letOthersReachCheckout(): void {
  for (let dir = ROOT; dir !== dirname(dir); dir = dirname(dir)) {
    const mode = statSync(dir).mode & 0o7777;
    if (mode & 0o001) continue;
    chmodSync(dir, mode | 0o001);
    onCleanup(() => chmodSync(dir, mode));
  }
}

describe('group socket', () => {
  it('a group member reads, and backs up only under the allowed roots; changing tracking is root\'s; root is not limited', async () => {
    const { gid } = await groupMember();
    letOthersReachCheckout();
    const d = await startTestDaemon();
    const allowed = tempDir('allowed');
    const outside = tempDir('outside');
    await chmod(allowed, 0o755);
    const cfg = JSON.parse(await readFile(d.configFile, 'utf8'));
    cfg.daemon.socketGroup = GROUP;
    cfg.backup = { allowedRepoRoots: [allowed] };
    await writeFile(d.configFile, JSON.stringify(cfg, null, 2));
    await d.stop();
    await d.start();
    const groupSocket = d.socket.replace(/\.sock$/, '-group.sock');
    expect(lstatSync(d.socket).mode & 0o777).toBe(0o600);
    expect(lstatSync(groupSocket).mode & 0o777).toBe(0o660);
    expect(lstatSync(groupSocket).gid).toBe(gid);

    const g = await startLibvirtGuest({ name: 'grp', scratchFormat: 'qcow2', start: false });
    await d.cli(['enable', g.name]);
    await d.cli(['consumer', 'add', g.name, 'ops']);
    // The member runs the CLI as itself: it goes to the group socket.
    const asMember = (args: string[]) => execa('runuser', ['-u', USER, '--', 'node', join(ROOT, 'dist/src/cli/main.js'), '--config', d.configFile, ...args],
      { reject: false, timeout: 300_000 });
    expect((await asMember(['status', g.name])).exitCode).toBe(0);
    expect((await asMember(['changes', g.name, '--consumer', 'ops', '--json'])).exitCode).toBe(0);

    // What changes tracking or moves a consumer is root's: a member who could commit another
    // consumer's pass would make its next backup skip changes.
    const before = await d.cliJson(['status', g.name]);
    for (const args of [['disable', g.name], ['consumer', 'add', g.name, 'intruder'], ['consumer', 'remove', g.name, 'ops'],
      ['pass', 'begin', g.name, '--consumer', 'ops'], ['pass', 'commit', g.name, '--consumer', 'ops', '--pass', '1'], ['enable', g.name]]) {
      const r = await asMember(args);
      expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toContain('needs root');
    }
    const after = await d.cliJson(['status', g.name]);
    expect(after.consumers).toEqual(before.consumers);
    expect(after.openPasses).toEqual([]);
    expect(after.logId).toBe(before.logId);

    const refused = async (repo: string) => {
      const r = await asMember(['backup', g.name, '--consumer', 'ops', '--repo', repo]);
      expect(r.exitCode, r.stderr).toBe(2);
      expect(r.stderr).toContain(`is outside the directories members of daemon.socketGroup may use (${allowed})`);
      return r.stderr;
    };
    await refused(join(outside, 'repo'));
    mkdirSync(join(allowed, 'sub'));
    await refused(`${allowed}/sub/../../${outside.split('/').pop()}/repo`);
    symlinkSync(outside, join(allowed, 'link'));
    expect(await refused(join(allowed, 'link', 'repo'))).toContain(`(really ${join(outside, 'repo')})`);
    expect(existsSync(join(outside, 'repo'))).toBe(false);

    // Inside the allowed root: the backup is made.
    const ok = await asMember(['backup', g.name, '--consumer', 'ops', '--repo', join(allowed, 'repo'), '--json']);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout.trim().split('\n').pop()!).type).toBe('result');
    // Jobs are listed to the member (reading), not cancelled by it: a job may be another caller's.
    const listed = await asMember(['jobs', '--json']);
    expect(listed.exitCode, listed.stderr).toBe(0);
    const mine = (JSON.parse(listed.stdout).jobs as { id: string; domain: string; consumer?: string; state: string }[])
      .find((j) => j.domain === g.name && j.consumer === 'ops');
    expect(mine?.state).toBe('done');
    const cancel = await asMember(['jobs', 'cancel', mine!.id]);
    expect(cancel.exitCode, cancel.stderr).toBe(2);
    expect(cancel.stderr).toContain('needs root');

    // Root (the root socket) is not limited.
    await d.cli(['consumer', 'add', g.name, 'root']);
    const asRoot = await d.cli(['backup', g.name, '--consumer', 'root', '--repo', join(outside, 'root-repo'), '--json'], { reject: false });
    expect(asRoot.exitCode, asRoot.stderr).toBe(0);
    expect(existsSync(join(outside, 'root-repo'))).toBe(true);
  });
});
