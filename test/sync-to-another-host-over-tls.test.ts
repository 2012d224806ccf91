// A sync to a copy on a second host: `virtcbt sync-target` serves the target image in a network
// namespace (NBD over TLS, only the hypervisor's identity may write); `virtcbt sync --to nbds://`
// seeds it and then ships only what was modified and is in use; after the target host closes the
// image it is a clean copy of the guest's filesystem. A client without the right certificate is
// refused by the target.
import { execa, type ResultPromise } from 'execa';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, guestFile, tempDir } from './support/backup.js';
import { fsHashes, guestHashes as guestHashesOf } from './support/sync.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';
import { makeNetns, type NetNs } from './support/netns.js';
import { makeCa, makeClientDir, makeServerDir } from './support/tls-certs.js';

useCleanup();

const CLI = join(import.meta.dirname, '..', 'dist/src/cli/main.js');

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let ns: NetNs;
let dir: string;
let image: string;
let server: ResultPromise | undefined;
let uri: string;
const certs: Record<'hypervisor' | 'intruder', string> = {} as never;

beforeAll(async () => {
  dir = tempDir('sync-remote');
  image = join(dir, 'target-host', 'replica.qcow2');
  await execa('mkdir', ['-p', join(dir, 'target-host')]);
  ns = await makeNetns();
  const ca = await makeCa(join(dir, 'ca'), 'virtcbt test CA');
  const serverDir = await makeServerDir(ca, join(dir, 'server'), ca, [ns.nsAddress]);
  certs.hypervisor = await makeClientDir(ca, join(dir, 'hypervisor'), ca, 'hypervisor');
  certs.intruder = await makeClientDir(ca, join(dir, 'intruder'), ca, 'intruder');
  guest = await startLibvirtGuest({ name: 'syncrem', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  daemon = await startTestDaemon({ config: { sync: { tlsCertificates: certs.hypervisor } } });
  await daemon.cli(['enable', guest.name]);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });

  // The target host: sync-target inside the namespace, bound to the namespace's own address.
  const size = (await execa('qemu-img', ['info', '--output=json', '-U', guest.disks.data])).stdout;
  server = execa('ip', ['netns', 'exec', ns.name, 'node', CLI, 'sync-target', image, '--bind', ns.nsAddress,
    '--allow', 'CN=hypervisor', '--tls-dir', serverDir, '--create', String(JSON.parse(size)['virtual-size']), '--json'], { reject: false, buffer: false });
  uri = await new Promise<string>((resolve, reject) => {
    let out = '';
    server!.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const line = out.split('\n').find((l) => l.trim().startsWith('{'));
      if (line) resolve(JSON.parse(line).uri);
    });
    void server!.then((r) => reject(new Error(`sync-target exited ${r.exitCode}`)));
  });
});

afterAll(async () => {
  server?.kill('SIGTERM');
  await server;
});

const guestHashes = () => guestHashesOf(agent);

async function sync(): Promise<any> {
  const r = await daemon.cli(['sync', guest.name, '--disk', 'vda', '--to', uri, '--json']);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

it('seeds and then updates a copy on another host over NBD with TLS; others are refused; the copy is clean', async () => {
  expect(uri).toMatch(new RegExp(`^nbds://${ns.nsAddress.replace(/\./g, '\\.')}:\\d+/`));
  const first = await sync();
  expect(first.seed).toBe(true);
  await guestFile(agent, 'kept.bin', 4 * MiB);
  await guestFile(agent, 'gone.bin', 24 * MiB);
  expect((await agent.exec('/bin/sh', ['-c', 'rm /mnt/data/gone.bin && sync'])).exitCode).toBe(0);
  const second = await sync();
  expect(second.seed, second.reason).toBe(false);
  expect(second.copiedBytes).toBeLessThan(second.modifiedBytes / 2);
  const hashes = await guestHashes();

  // The target refuses a client with another identity, and one without a certificate.
  const intruder = await execa('nbdinfo', ['--size', `${uri}?tls-certificates=${certs.intruder}`], { reject: false });
  expect(intruder.exitCode).not.toBe(0);
  const plain = await execa('nbdinfo', ['--size', uri.replace(/^nbds:/, 'nbd:')], { reject: false });
  expect(plain.exitCode).not.toBe(0);

  // The target host closes the image: a clean copy of what the guest had.
  server!.kill('SIGTERM');
  expect((await server!).exitCode).toBe(0);
  server = undefined;
  const raw = join(dir, 'check.raw');
  await execa('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, raw]);
  const got = await fsHashes(raw, 'the copy on the other host', dir);
  expect(got).toEqual(hashes);
});
