// The exit codes users see come from the error family (src/util/errors.ts) and match the table the
// README and `virtcbt --help` document: a not-found domain, consumer, disk or backup exits 4 whether
// the error is raised in the CLI or in virtcbtd (and whether it reaches the CLI as a reply or as the
// last line of a stream), bad usage exits 2, a protocol error 5, no virtcbtd 3.
import { execa } from 'execa';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { describeFailure } from '../src/backup/backup.js';
import { DomainNotFoundError } from '../src/libvirt/index.js';
import { NbdProtocolError } from '../src/nbd/index.js';
import { QmpProtocolError } from '../src/qmp/index.js';
import { EXIT, UsageError, VirtcbtError, exitCodeOf } from '../src/util/errors.js';
import { tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { handmadeRepo } from './support/handmade-repo.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';

useCleanup();
const ROOT = resolve(import.meta.dirname, '..');
const CLI = join(ROOT, 'dist/src/cli/main.js');

let daemon: TestDaemon;
let guest: LibvirtGuest;

beforeAll(async () => {
  daemon = await startTestDaemon();
  // Defined, never started: enough for a tracked domain with a consumer (enable works offline).
  guest = await startLibvirtGuest({ name: 'exitcodes', start: false });
  await daemon.cli(['enable', guest.name, '--exclude', 'vdb']);
  await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
}, 180_000);

async function expectExit(args: string[], code: number, stderr: RegExp) {
  const r = await daemon.cli(args, { reject: false });
  expect(r.exitCode, `virtcbt ${args.join(' ')}: ${r.stderr}`).toBe(code);
  expect(r.stderr).toMatch(stderr);
}

describe('exit codes come from the error family', () => {
  it('a consumer that does not exist exits 4 (changes, pass begin --export, backup)', async () => {
    await expectExit(['changes', guest.name, '--consumer', 'nope'], EXIT.NOT_FOUND, /no consumer 'nope'/);
    await expectExit(['pass', 'begin', guest.name, '--consumer', 'nope', '--export'], EXIT.NOT_FOUND, /no consumer 'nope'/);
    // backup streams its events: the error arrives as the stream's last line and keeps its code.
    await expectExit(['backup', guest.name, '--consumer', 'nope', '--repo', tempDir('exitcodes-repo')], EXIT.NOT_FOUND, /no consumer 'nope'/);
  });

  it('a domain that does not exist or is not tracked exits 4', async () => {
    await expectExit(['enable', 'virtcbt-test-no-such-domain'], EXIT.NOT_FOUND, /no libvirt domain named 'virtcbt-test-no-such-domain'/);
    await expectExit(['changes', 'virtcbt-test-no-such-domain', '--consumer', 'nightly'], EXIT.NOT_FOUND, /not tracked by virtcbt/);
  });

  it('a backup or disk that does not exist in the repository exits 4', async () => {
    const r = await handmadeRepo();
    const to = join(tempDir('exitcodes-restore'), 'x.qcow2');
    await expectExit(['restore', '--repo', r.root, 'vm1', '--disk', 'vda', '--to', to, '--at', 'nightly-0099'], EXIT.NOT_FOUND, /nightly-0099/);
    await expectExit(['restore', '--repo', r.root, 'vm1', '--disk', 'vdz', '--to', to], EXIT.NOT_FOUND, /has no disk vdz/);
  });

  it('bad usage exits 2, in the CLI and in virtcbtd', async () => {
    await expectExit(['changes', guest.name], EXIT.USAGE, /--consumer/);
    await expectExit(['consumer', 'add', guest.name, 'bad name'], EXIT.USAGE, /bad name/);
  });

  it('a protocol error exits 5 and no virtcbtd exits 3', async () => {
    const dir = tempDir('exitcodes-misc');
    const gone = await execa('node', [CLI, 'nbd', 'map', `nbd+unix:///?socket=${join(dir, 'nothing.sock')}`], { reject: false });
    expect(gone.exitCode, gone.stderr).toBe(EXIT.PROTOCOL);
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ daemon: { socket: join(dir, 'no-daemon.sock') } }));
    const down = await execa('node', [CLI, '--config', config, 'status'], { reject: false });
    expect(down.exitCode, down.stderr).toBe(EXIT.DAEMON_DOWN);
  });

  it('a failed backup keeps the exit code of the error that ended it', () => {
    // Errors that end a backup mid-copy (a server breaking NBD, a domain gone) are hard to cause
    // on cue; the wrapper they all pass through is checked directly.
    const req = { domain: 'vm1', consumer: 'nightly', repo: '/repo' } as Parameters<typeof describeFailure>[2];
    const cases: [Error, number][] = [
      [new NbdProtocolError('NBD server closed the connection'), EXIT.PROTOCOL],
      [new QmpProtocolError('QMP peer sent a line that is not JSON'), EXIT.PROTOCOL],
      [new DomainNotFoundError("no libvirt domain named 'vm1'"), EXIT.NOT_FOUND],
      [new UsageError('bad'), EXIT.USAGE],
      [new VirtcbtError('qemu-img failed'), EXIT.FAILED],
      [new Error('plain'), EXIT.FAILED],
    ];
    for (const [cause, code] of cases) {
      const wrapped = describeFailure(cause, 'vm1', req, '/repo');
      expect(wrapped, cause.message).toBeInstanceOf(VirtcbtError);
      expect(exitCodeOf(wrapped), cause.message).toBe(code);
    }
  });

  it('the README and --help document every code of the table', async () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const para = /Exit codes: ([^\n]+\n){1,4}/.exec(readme)?.[0] ?? '';
    const help = (await execa('node', [CLI, '--help'])).stdout;
    for (const [name, code] of Object.entries(EXIT)) {
      expect(para, `README on ${name}`).toMatch(new RegExp(`\\b${code} [a-z]`));
      expect(help, `--help on ${name}`).toMatch(new RegExp(`^  ${code}  `, 'm'));
    }
  });
});
