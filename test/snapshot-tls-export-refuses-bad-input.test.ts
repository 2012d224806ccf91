// Bad settings for an export for another host are refused before anything starts, naming what to
// fix: no configured address (snapshot.remote.bind), no identities, incomplete credentials, an
// address of another host or every address, a port in use, an aborted signal. Nothing is left behind.
import { readdirSync, rmSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { schemaDefaults } from '../src/config/index.js';
import { remoteExportSettings, startRemoteExport, type RemoteExportOptions } from '../src/snapshot/remote-export.js';
import { UsageError, VirtcbtError } from '../src/util/errors.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { tempDir } from './support/nbd-servers.js';
import { startStorageDaemon, type StorageDaemon } from './support/storage-daemon.js';
import { makeCa, makeServerDir } from './support/tls-certs.js';

useCleanup();

let dir: string;
let serverDir: string;
let source: StorageDaemon;

beforeAll(async () => {
  const t = tempDir('tls-export-bad');
  onCleanup(() => t.remove());
  dir = t.path;
  serverDir = await makeServerDir(await makeCa(join(dir, 'ca'), 'CA'), join(dir, 'server'));
  const image = join(dir, 'disk.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(1 << 20)]);
  source = await startStorageDaemon({ image, readOnly: true, nbd: { exportName: 'view' } });
});

async function opts(extra: Partial<RemoteExportOptions>): Promise<RemoteExportOptions> {
  const runDir = join(dir, `run-${Math.random().toString(36).slice(2)}`);
  await mkdir(runDir);
  return {
    source: { socket: source.nbdSocket!, exportName: 'view' }, tlsDir: serverDir, identities: ['CN=scanner'],
    bind: { host: '127.0.0.1' }, runDir, domain: 'vm1', disk: 'vda', ...extra,
  };
}

/** No qemu-storage-daemon runs with a pid file in `runDir`, and the directory is empty. */
async function nothingLeft(runDir: string): Promise<void> {
  expect(readdirSync(runDir)).toEqual([]);
  const ps = await execa('ps', ['-eo', 'args'], { reject: false });
  expect(ps.stdout).not.toContain(runDir);
}

describe('an export for another host with bad settings', () => {
  it('is refused without a configured address, naming snapshot.remote.bind', () => {
    const cfg = schemaDefaults();
    expect(cfg.snapshot.remote).toEqual({ bind: '', port: 0, tlsDir: '/etc/pki/virtcbt/server', deadlineSeconds: 3600 });
    expect(() => remoteExportSettings(cfg)).toThrow(UsageError);
    expect(() => remoteExportSettings(cfg)).toThrow(/snapshot\.remote\.bind/);
    cfg.snapshot.remote.bind = '10.0.0.5';
    expect(remoteExportSettings(cfg)).toEqual({ bind: { host: '10.0.0.5', port: 0 }, tlsDir: '/etc/pki/virtcbt/server', deadlineMs: 3_600_000 });
  });

  it('is refused with no identities, a malformed identity or incomplete credentials', async () => {
    for (const [extra, message] of [
      [{ identities: [] }, /at least one allowed client identity/],
      [{ identities: ['scanner'] }, /not a distinguished name/],
      [{ tlsDir: join(dir, 'no-such-dir') }, /ca-cert\.pem is missing/],
      [{ bind: { host: '0.0.0.0' } }, /must not listen on every address/],
      [{ bind: { host: '::' } }, /must not listen on every address/],
      // Longer than a Node timer can wait: it would fire at once.
      [{ deadlineMs: 30 * 24 * 3600 * 1000 }, /deadline .* is not between/],
    ] as const) {
      const o = await opts(extra);
      const err = await startRemoteExport(o).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(UsageError);
      expect((err as Error).message).toMatch(message);
      expect((err as UsageError).domain).toBe('vm1');
      await nothingLeft(o.runDir);
    }
    const partial = join(dir, 'partial');
    await execa('cp', ['-r', serverDir, partial]);
    rmSync(join(partial, 'server-key.pem'));
    const o = await opts({ tlsDir: partial });
    await expect(startRemoteExport(o)).rejects.toThrow(/server-key\.pem is missing/);
    await nothingLeft(o.runDir);
  });

  it('is refused on an address of another host or a port in use, and after its signal aborted', async () => {
    const taken: Server = await new Promise((resolve) => { const s = createServer(); s.listen(0, '127.0.0.1', () => resolve(s)); });
    onCleanup(() => new Promise((r) => taken.close(r)));
    const port = (taken.address() as { port: number }).port;
    let o = await opts({ bind: { host: '127.0.0.1', port } });
    await expect(startRemoteExport(o)).rejects.toThrow(new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port} .*EADDRINUSE`));
    await nothingLeft(o.runDir);
    // TEST-NET-1 (RFC 5737): never an address of this host.
    o = await opts({ bind: { host: '192.0.2.1' } });
    const err = await startRemoteExport(o).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(VirtcbtError);
    expect((err as VirtcbtError).message).toMatch(/EADDRNOTAVAIL/);
    expect((err as VirtcbtError).hint).toMatch(/snapshot\.remote\.bind/);
    await nothingLeft(o.runDir);
    o = await opts({ signal: AbortSignal.abort(new Error('job cancelled')) });
    await expect(startRemoteExport(o)).rejects.toThrow(/job cancelled/);
    await nothingLeft(o.runDir);
  });
});
