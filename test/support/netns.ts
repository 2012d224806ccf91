// Test helper: a second "host" on this machine, a network namespace joined to this one by a veth
// pair with one address on each end; commands run inside it with `ip netns exec`. Needs root.
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { onCleanup, onExitSync } from './cleanup.js';
import { execFileSync } from 'node:child_process';

export interface NsResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

export interface NetNs {
  name: string;
  /** This host's address on the link (what a server for the namespace binds to). */
  hostAddress: string;
  /** The namespace's own address. */
  nsAddress: string;
  /** Runs a command inside the namespace (never rejects: look at exitCode). */
  exec(cmd: string, args: string[]): Promise<NsResult>;
  remove(): Promise<void>;
}

/** Creates the namespace and link; removed at teardown (registered before anything is made). */
export async function makeNetns(): Promise<NetNs> {
  const tag = randomBytes(3).toString('hex');
  const name = `virtcbt-${tag}`;
  // Interface names are limited to 15 bytes.
  const hostIf = `vcbh${tag}`;
  const nsIf = `vcbn${tag}`;
  // A /30 of 10.231.0.0/16 per namespace: two tests' links never share a subnet (unless they draw the same byte pair).
  const sub = `10.231.${parseInt(tag.slice(0, 2), 16)}.${(parseInt(tag.slice(2, 4), 16) & 0x3f) * 4}`;
  const base = sub.split('.').map(Number);
  const hostAddress = `${base[0]}.${base[1]}.${base[2]}.${base[3]! + 1}`;
  const nsAddress = `${base[0]}.${base[1]}.${base[2]}.${base[3]! + 2}`;
  const teardown = () => {
    // Deleting the namespace deletes its end of the pair and with it the other end.
    try { execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' }); } catch { /* not there */ }
    try { execFileSync('ip', ['link', 'del', hostIf], { stdio: 'ignore' }); } catch { /* gone with the namespace */ }
  };
  const unExit = onExitSync(teardown);
  let removed = false;
  const remove = async () => {
    if (removed) return;
    removed = true;
    teardown();
    unExit();
  };
  onCleanup(remove);
  const ip = (...args: string[]) => execa('ip', args);
  await ip('netns', 'add', name);
  await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
  await ip('link', 'set', nsIf, 'netns', name);
  await ip('addr', 'add', `${hostAddress}/30`, 'dev', hostIf);
  await ip('link', 'set', hostIf, 'up');
  await ip('-n', name, 'addr', 'add', `${nsAddress}/30`, 'dev', nsIf);
  await ip('-n', name, 'link', 'set', nsIf, 'up');
  await ip('-n', name, 'link', 'set', 'lo', 'up');
  return {
    name, hostAddress, nsAddress, remove,
    exec: async (cmd, args) => {
      const r = await execa('ip', ['netns', 'exec', name, cmd, ...args], { reject: false });
      return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
    },
  };
}
