// Test helper: `virtcbt sync-target … --json` (the built CLI) running in the background, its JSON
// line once it serves, and its end; killed at teardown if a test left it running.
import { execa, type ResultPromise } from 'execa';
import { resolve } from 'node:path';
import { onCleanup, trackChild } from './cleanup.js';

export const CLI = resolve(import.meta.dirname, '../../dist/src/cli/main.js');

export interface ServingInfo {
  uri: string;
  exportName: string;
  host: string;
  port: number;
  pid: number;
  image: string;
  format: string;
  created: boolean;
}

export interface TargetCli {
  child: ResultPromise<{ reject: false; buffer: false }>;
  /** Everything the CLI wrote to stderr so far. */
  stderr(): string;
  /** Resolves with its exit code once it has exited. */
  exited: Promise<number | undefined>;
}

/**
 * Starts `virtcbt sync-target ARGS --json` with its run directory in `runDir`; `ownGroup`: in a
 * process group of its own, as a shell runs a foreground command (a Ctrl-C signals the whole group).
 */
export function startTargetCli(args: string[], runDir: string, o: { ownGroup?: boolean } = {}): TargetCli {
  const child = execa('node', [CLI, 'sync-target', ...args, '--json'], {
    reject: false, buffer: false, env: { VIRTCBT_RUN_DIR: runDir }, detached: Boolean(o.ownGroup),
  });
  const untrack = trackChild(child.pid!);
  onCleanup(async () => {
    child.kill('SIGKILL');
    await child;
    untrack();
  });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
  const exited = child.then((r) => r.exitCode);
  return { child, stderr: () => err, exited };
}

/** The CLI's JSON line once it serves; rejects with its stderr if it exits first. */
export function serving(t: TargetCli): Promise<ServingInfo> {
  return new Promise((resolveInfo, reject) => {
    let out = '';
    t.child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('\n')) resolveInfo(JSON.parse(out.split('\n')[0]!) as ServingInfo);
    });
    void t.exited.then((code) => reject(new Error(`sync-target exited (${code}) before serving: ${t.stderr()}`)));
  });
}
