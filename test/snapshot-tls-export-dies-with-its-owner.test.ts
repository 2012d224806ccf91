// The front end of an export for another host never outlives the virtcbtd that started it: a kill -9
// of its owner ends it (parent-death signal) and a restart's sweep removes its pid file; the
// clean-up by pid (killStaleRemoteExport) kills only a front end of that run directory.
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { pidAlive } from '../src/util/process.js';
import { killStaleRemoteExport, startRemoteExport, sweepStaleRemoteExports, type RemoteExportOptions } from '../src/snapshot/remote-export.js';
import { pollUntil } from '../src/util/abort.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { qemuIo, tempDir } from './support/nbd-servers.js';
import { startStorageDaemon, type StorageDaemon } from './support/storage-daemon.js';
import { makeCa, makeServerDir } from './support/tls-certs.js';

useCleanup();

const CHILD = fileURLToPath(new URL('./support/remote-export-child.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));

let dir: string;
let serverDir: string;
let source: StorageDaemon;

beforeAll(async () => {
  const t = tempDir('tls-export-owner');
  onCleanup(() => t.remove());
  dir = t.path;
  const ca = await makeCa(join(dir, 'ca'), 'virtcbt test CA');
  serverDir = await makeServerDir(ca, join(dir, 'server'));
  const image = join(dir, 'disk.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(8 << 20)]);
  await qemuIo(image, ['write -P 0x61 0 1M']);
  source = await startStorageDaemon({ image, readOnly: true, nbd: { exportName: 'view' } });
});

function options(runDir: string): RemoteExportOptions {
  mkdirSync(runDir, { recursive: true });
  return {
    source: { socket: source.nbdSocket!, exportName: source.exportName! },
    tlsDir: serverDir, identities: ['CN=scanner'], bind: { host: '127.0.0.1' }, runDir,
  };
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** Kills `pid` at teardown if a failing test left it. */
function reap(pid: number): void {
  onCleanup(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
}

describe('the front end of an export for another host', () => {
  it('dies with its owner (kill -9), and a restart\'s sweep removes what is left', async () => {
    const runDir = join(dir, 'run-owner');
    const owner = execa(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(options(runDir))], { cwd: ROOT, reject: false, buffer: false });
    reap(owner.pid!);
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      owner.stdout!.on('data', (c: Buffer) => { out += c.toString(); if (out.includes('\n')) resolve(out.split('\n')[0]!); });
      void owner.then((r) => reject(new Error(`owner exited first: ${String(r.stderr ?? '')}`)));
    });
    const { pid, port } = JSON.parse(line) as { pid: number; port: number };
    reap(pid);
    expect(pidAlive(pid)).toBe(true);
    expect(await portOpen(port)).toBe(true);

    owner.kill('SIGKILL');
    await owner;
    await pollUntil(() => !pidAlive(pid), `front end ${pid} to die with its owner`, { timeoutMs: 10_000, intervalMs: 20 });
    expect(await portOpen(port)).toBe(false);
    // Its pid file is what a killed owner leaves; the restarted daemon's sweep removes it.
    expect(readdirSync(runDir)).toHaveLength(1);
    const swept = await sweepStaleRemoteExports(runDir);
    expect(swept.join('\n')).toMatch(/removed remote-export-[0-9a-f]{32}\.pid/);
    expect(readdirSync(runDir)).toEqual([]);
  });

  it('killStaleRemoteExport kills a front end of its run directory and nothing else', async () => {
    const ours = await startRemoteExport(options(join(dir, 'run-a')));
    onCleanup(() => ours.close());
    const elsewhere = await startRemoteExport(options(join(dir, 'run-b')));
    onCleanup(() => elsewhere.close());
    const sleeper = spawn('sleep', ['600'], { stdio: 'ignore' });
    onCleanup(() => { sleeper.kill('SIGKILL'); });

    const runDir = join(dir, 'run-a');
    for (const [what, pid] of [['another run directory\'s front end', elsewhere.pid], ['the source qemu-storage-daemon', source.pid], ['sleep', sleeper.pid!]] as const) {
      const r = await killStaleRemoteExport(pid, runDir);
      expect(r.killed, `${what}: ${r.why}`).toBe(false);
      expect(pidAlive(pid), what).toBe(true);
    }
    expect(await portOpen(elsewhere.port)).toBe(true);

    const r = await killStaleRemoteExport(ours.pid, runDir);
    expect(r.killed, r.why).toBe(true);
    expect(await ours.closed).toBe('exited');
    expect(pidAlive(ours.pid)).toBe(false);
    expect(await portOpen(ours.port)).toBe(false);
    expect(readdirSync(runDir)).toEqual([]);
  });
});
