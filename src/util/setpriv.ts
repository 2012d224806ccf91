// Helper processes (qemu-nbd, qemu-storage-daemon) must not outlive the virtcbt process that
// started them: one left behind holds its images' locks (and serves them) until someone finds it.
// util-linux setpriv (Debian: essential) execs the program with a parent-death signal set; the pid
// stays the program's, since setpriv execs it.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

export const SETPRIV = '/usr/bin/setpriv';

/** The command and arguments that run `program` with `signal` as its parent-death signal (as they are, without setpriv). */
export function withParentDeathSignal(program: string, args: readonly string[], signal: 'SIGTERM' | 'SIGKILL'): [string, string[]] {
  return existsSync(SETPRIV) ? [SETPRIV, ['--pdeathsig', signal, '--', program, ...args]] : [program, [...args]];
}

/** The program and arguments of a command line as /proc/PID/cmdline gives it, with a setpriv in front taken off. */
export function unwrapSetpriv(argv: readonly string[]): string[] {
  if (argv[0] !== SETPRIV || argv[1] !== '--pdeathsig') return [...argv];
  const at = argv.indexOf('--');
  return at < 0 ? [] : argv.slice(at + 1);
}

/** Process `pid`'s program and arguments (a setpriv in front taken off), or [] when it is gone or unreadable. */
export async function programOf(pid: number): Promise<string[]> {
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  if (argv.at(-1) === '') argv.pop();
  return unwrapSetpriv(argv);
}

/** Whether `program` (argv[0]) is `name`, by itself or as a path. */
export function isProgram(program: string | undefined, name: string): boolean {
  return program === name || (program?.endsWith(`/${name}`) ?? false);
}
