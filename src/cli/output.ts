// Output conventions: a human line by default, one JSON document with --json; data on stdout.
import type { CliIo } from './command.js';

export function emit(io: CliIo, json: boolean, data: unknown, human: () => string[]): void {
  if (json) io.out(JSON.stringify(data, null, 2));
  else for (const line of human()) io.out(line);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}
