// `virtcbt sync-target` refuses, changing nothing and naming what to do: a symlink, a directory, a
// missing image without --create, an image another process holds (QEMU's lock; the holder is
// named), a wildcard address, no --allow, a bad export name. A created image that cannot be
// served is removed again.
import { existsSync, readdirSync, symlinkSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { tempDir } from './support/nbd-servers.js';
import { startStorageDaemon } from './support/storage-daemon.js';
import { CLI } from './support/sync-target.js';
import { makeCa, makeServerDir } from './support/tls-certs.js';

useCleanup();

let dir: string;
let serverDir: string;
let image: string;

beforeAll(async () => {
  const t = tempDir('sync-target-bad');
  onCleanup(() => t.remove());
  dir = t.path;
  serverDir = await makeServerDir(await makeCa(join(dir, 'ca'), 'CA'), join(dir, 'server'));
  image = join(dir, 'disk.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(8 << 20)]);
});

let n = 0;
async function run(args: string[]) {
  const runDir = join(dir, `run-${++n}`);
  const r = await execa('node', [CLI, 'sync-target', ...args], { reject: false, env: { VIRTCBT_RUN_DIR: runDir }, timeout: 60_000 });
  return { ...r, runDir };
}

const base = (img: string) => [img, '--bind', '127.0.0.1', '--allow', 'CN=hv1', '--tls-dir', serverDir];

describe('virtcbt sync-target with bad input', () => {
  it('refuses a symlink, a directory and a missing image without --create, creating nothing', async () => {
    const link = join(dir, 'link.qcow2');
    symlinkSync(image, link);
    const sub = join(dir, 'a-dir');
    await mkdir(sub);
    const missing = join(dir, 'missing.qcow2');
    for (const [img, message] of [
      [link, /is a symlink, not a regular file.*symlinks are not followed/],
      [sub, /is a directory, not a regular file/],
      [missing, /cannot open image .*missing\.qcow2.*let virtcbt create the image/],
    ] as const) {
      const r = await run(base(img));
      expect(r.exitCode, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stdout).toBe('');
    }
    expect(existsSync(missing)).toBe(false);
  });

  it('refuses an image another process holds, naming it', async () => {
    const held = join(dir, 'held.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', held, String(8 << 20)]);
    const qsd = await startStorageDaemon({ image: held, nbd: { writable: true } });
    onCleanup(() => qsd.stop());
    const r = await run(base(held));
    expect(r.exitCode, r.stderr).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`sync target .*held\\.qcow2 is in use by another process .*lock.*it is open in pid ${qsd.pid} \\(qemu-storage-d`));
    expect(readdirSync(r.runDir)).toEqual([]);
  });

  it('refuses a wildcard address, no --allow, a bad export name or a bad size before anything starts', async () => {
    const created = join(dir, 'never.qcow2');
    for (const [args, message] of [
      [[created, '--create', '8M', '--bind', '0.0.0.0', '--allow', 'CN=hv1', '--tls-dir', serverDir], /must not listen on every address/],
      [[created, '--create', '8M', '--bind', '127.0.0.1', '--tls-dir', serverDir], /missing --allow DN/],
      [[created, '--create', '8M', '--bind', '127.0.0.1', '--allow', 'hv1', '--tls-dir', serverDir], /not a distinguished name/],
      [[...base(created), '--create', '8M', '--name', 'a/b'], /export name "a\/b" is not/],
      [[...base(created), '--create', 'lots'], /--create "lots" is not a size/],
      [[...base(created), '--create', '8M', '--tls-dir', join(dir, 'nowhere')], /ca-cert\.pem is missing/],
      [[created, '--create', '8M', '--bind', '127.0.0.1:99999', '--allow', 'CN=hv1', '--tls-dir', serverDir], /99999 is not a TCP port/],
    ] as const) {
      const r = await run([...args]);
      expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    expect(existsSync(created)).toBe(false);
  });

  it('removes an image it created when it cannot serve it (port in use)', async () => {
    const taken: Server = await new Promise((resolve) => { const s = createServer(); s.listen(0, '127.0.0.1', () => resolve(s)); });
    onCleanup(() => new Promise((r) => taken.close(r)));
    const port = (taken.address() as { port: number }).port;
    const img = join(dir, 'made.qcow2');
    const r = await run([img, '--create', '8M', '--bind', `127.0.0.1:${port}`, '--allow', 'CN=hv1', '--tls-dir', serverDir]);
    expect(r.exitCode, r.stderr).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port} .*EADDRINUSE.*--bind`));
    expect(existsSync(img)).toBe(false);
    expect(readdirSync(r.runDir)).toEqual([]);
  });
});
