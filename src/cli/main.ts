#!/usr/bin/env node
// virtcbt command line: dispatches to one module per subcommand.
import { loadConfig, type VirtcbtConfig } from '../config/index.js';
import { VirtcbtError, errorMessage, exitCodeOf } from '../util/errors.js';
import { EXIT, type CliIo } from './command.js';
import { commands, type CommandEntry } from './commands/index.js';

/**
 * Exit code when whoever reads our stdout or stderr has gone (`virtcbt backup … | head -1`):
 * 128 + SIGPIPE, what any Unix tool killed by SIGPIPE gives, whether or not the command's work
 * was done (Node ignores SIGPIPE, so the write fails with EPIPE instead). Decided so: the reader
 * chose to stop, and a script using `set -o pipefail` should see that the output was cut short.
 */
const SIGPIPE_EXIT = 128 + 13;

/**
 * A closed pipe ends the CLI at once and quietly: nothing is left to tell anyone, and the default
 * (an unhandled 'error' event) printed a stack trace. What was already handed to virtcbtd is not
 * affected: it runs a backup it accepted to its end (or fails and cleans up) whether or not a
 * client still reads its events; `virtcbt list` / `virtcbt status` show how it ended. What the CLI
 * itself still had to do (the next domain of a `backup --job`, the prune of `--keep`) is not done.
 */
function exitOnClosedPipe(err: NodeJS.ErrnoException): void {
  if (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED') process.exit(SIGPIPE_EXIT);
  throw err;
}
process.stdout.on('error', exitOnClosedPipe);
process.stderr.on('error', exitOnClosedPipe);

const io: CliIo = {
  out: (l) => process.stdout.write(l + '\n'),
  err: (l) => process.stderr.write(l + '\n'),
  isTty: Boolean(process.stderr.isTTY),
};

function help(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'usage: virtcbt [--config FILE] COMMAND [ARGS]',
    '',
    'Changed-block tracking for libvirt/QEMU domains.',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Run `virtcbt COMMAND --help` for a command\'s options.',
    '',
    'Exit codes:',
    '  0  success',
    '  1  the operation failed (the message says why and what to do)',
    '  2  bad usage or configuration; nothing was changed',
    '  3  virtcbtd is not running',
    '  4  domain, disk, consumer or backup not found',
    '  5  protocol error from QEMU, NBD server or guest agent',
    '  10  scan found malware (virtcbt scan; the domain is quarantined as configured)',
    '  11  scan found nothing but did not scan everything (virtcbt scan; the report says what and why)',
    '  141  the reader of stdout or stderr went away (as on SIGPIPE); virtcbtd finishes what it was asked',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const args = [...argv];
  let configFile: string | undefined;
  while (args[0]?.startsWith('--')) {
    const a = args.shift()!;
    if (a === '--help' || a === '-h') { io.out(help()); return EXIT.OK; }
    if (a === '--config') configFile = args.shift();
    else if (a.startsWith('--config=')) configFile = a.slice('--config='.length);
    else { io.err(`virtcbt: unknown option ${a}\n\n${help()}`); return EXIT.USAGE; }
  }
  const name = args.shift();
  if (!name) { io.err(help()); return EXIT.USAGE; }
  const entry: CommandEntry | undefined = commands.find((c) => c.name === name);
  if (!entry) { io.err(`virtcbt: unknown command '${name}'\n\n${help()}`); return EXIT.USAGE; }
  const cmd = await entry.load();
  if (args.includes('--help') || args.includes('-h')) { io.out(cmd.usage); return EXIT.OK; }
  let config: VirtcbtConfig | undefined;
  const json = args.includes('--json');
  try {
    return await cmd.run({ argv: args, io, config: () => (config ??= loadConfig({ file: configFile, published: true })) });
  } catch (err) {
    if (json) io.out(JSON.stringify(err instanceof VirtcbtError ? err.toJSON() : { error: 'Error', message: errorMessage(err) }));
    io.err(`virtcbt ${name}: ${errorMessage(err)}`);
    return exitCodeOf(err);
  }
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => { io.err(`virtcbt: ${errorMessage(err)}`); process.exitCode = EXIT.FAILED; },
);
