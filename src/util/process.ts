// Whether a process still runs: for pid files and names left by a killed process.
import { readFileSync } from 'node:fs';

function procStat(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
}

/** Whether `pid` runs (a zombie does not: under an init that does not reap, kill(pid, 0) would say yes). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const stat = procStat(pid);
  return stat === undefined || !/^\d+ \(.*\) [ZX]/s.test(stat);
}
