// The receiving side of a sync (`virtcbt sync-target`, src/sync/receiver.ts) on this host, written to
// from a network namespace (the hypervisor): the named identity writes and the image then holds
// exactly that; a discard and a write of zeroes free the image's blocks; no certificate, another
// CA's, the same CA's for another identity and no TLS are refused and change nothing; after SIGTERM
// (or a kill -9 of the CLI) the image passes `qemu-img check` and no process is left.
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { pidAlive } from '../src/util/process.js';
import { pollUntil } from '../src/util/abort.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { makeNetns, type NetNs } from './support/netns.js';
import { lcg, tempDir } from './support/nbd-servers.js';
import { serving, startTargetCli } from './support/sync-target.js';
import { makeCa, makeClientDir, makeServerDir } from './support/tls-certs.js';

useCleanup();

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

let ns: NetNs;
let dir: string;
let serverDir: string;
const clients: Record<'hv' | 'intruder' | 'otherCa' | 'noCert', string> = {} as never;

beforeAll(async () => {
  const t = tempDir('sync-target');
  onCleanup(() => t.remove());
  dir = t.path;
  ns = await makeNetns();
  const ca = await makeCa(join(dir, 'ca'), 'virtcbt test CA');
  const other = await makeCa(join(dir, 'other-ca'), 'some other CA');
  serverDir = await makeServerDir(ca, join(dir, 'server'), ca, [ns.hostAddress]);
  clients.hv = await makeClientDir(ca, join(dir, 'hv'), ca, 'hv1', 'Example');
  clients.intruder = await makeClientDir(ca, join(dir, 'intruder'), ca, 'intruder');
  // The allowed name, signed by another CA.
  clients.otherCa = await makeClientDir(other, join(dir, 'other-ca-hv'), ca, 'hv1', 'Example');
  clients.noCert = join(dir, 'no-cert');
  await mkdir(clients.noCert);
  await execa('cp', [join(clients.hv, 'ca-cert.pem'), clients.noCert]);
});

let n = 0;
/** `virtcbt sync-target` on a fresh path (created, qcow2) or `image`, serving on the host end of the link. */
async function target(image?: string, extra: string[] = [], o: { ownGroup?: boolean } = {}) {
  const run = join(dir, `run-${++n}`);
  const img = image ?? join(dir, `target-${n}.qcow2`);
  const cli = startTargetCli([img, '--bind', ns.hostAddress, '--allow', 'O=Example,CN=hv1', '--tls-dir', serverDir,
    ...(image ? [] : ['--create', '64M']), ...extra], run, o);
  const info = await serving(cli);
  return { cli, info, run, image: img };
}

function withCerts(uri: string, certDir: string): string {
  return `${uri}?tls-certificates=${certDir}`;
}

/** qemu-io from the namespace against the target, with the client credentials in `certDir`. */
function qemuIoRemote(info: { host: string; port: number; exportName: string }, certDir: string, cmds: string[]) {
  return ns.exec('qemu-io', [
    '--object', `tls-creds-x509,id=tls0,dir=${certDir},endpoint=client`,
    '--image-opts', `driver=nbd,server.type=inet,server.host=${info.host},server.port=${info.port},export=${info.exportName},tls-creds=tls0`,
    ...cmds.flatMap((c) => ['-c', c]),
  ]);
}

async function sigterm(t: Awaited<ReturnType<typeof target>>): Promise<void> {
  t.cli.child.kill('SIGTERM');
  expect(await t.cli.exited, t.cli.stderr()).toBe(0);
  expect(t.cli.stderr()).toMatch(/closed .*target-\d+\.qcow2/);
}

async function nothingLeft(t: Awaited<ReturnType<typeof target>>): Promise<void> {
  expect(pidAlive(t.info.pid)).toBe(false);
  expect(readdirSync(t.run)).toEqual([]);
  const ps = await execa('ps', ['-eo', 'args'], { reject: false });
  expect(ps.stdout).not.toContain(t.info.exportName);
  const r = await ns.exec('nbdinfo', ['--size', withCerts(t.info.uri, clients.hv)]);
  expect(r.exitCode).not.toBe(0);
}

async function check(image: string): Promise<void> {
  const r = await execa('qemu-img', ['check', image], { reject: false });
  expect(r.exitCode, r.stdout + r.stderr).toBe(0);
  expect(r.stdout).toMatch(/No errors were found/);
}

/** Byte ranges qemu-img map reports as holding data (allocated in the file). */
async function dataRanges(image: string): Promise<{ start: number; length: number }[]> {
  const r = await execa('qemu-img', ['map', '--output=json', image]);
  return (JSON.parse(r.stdout) as { start: number; length: number; data: boolean }[])
    .filter((e) => e.data).map(({ start, length }) => ({ start, length }));
}

describe('a sync target over TLS', () => {
  it('takes writes from the named identity: the image equals what was written, and discards and zero writes free its blocks', async () => {
    const t = await target();
    expect(t.info.uri).toBe(`nbds://${ns.hostAddress}:${t.info.port}/${t.info.exportName}`);
    expect(t.info).toMatchObject({ format: 'qcow2', created: true, image: t.image });
    // 16 MiB of data, a hole, 4 MiB more: what a first sync (a seed) writes.
    const src = join(dir, 'src.raw');
    const rnd = lcg(7);
    const data = Buffer.alloc(SIZE);
    for (const [off, len] of [[0, 16 * MiB], [40 * MiB, 4 * MiB]] as const) {
      for (let i = off; i < off + len; i += 4) data.writeUInt32LE(rnd() >>> 0, i);
    }
    await writeFile(src, data);
    const copy = await ns.exec('nbdcopy', ['--', src, withCerts(t.info.uri, clients.hv)]);
    expect(copy.exitCode, copy.stderr).toBe(0);

    // The next sync: 2 MiB freed by a discard, 2 MiB written as zeroes (detect-zeroes), 1 MiB of new data.
    const w = await qemuIoRemote(t.info, clients.hv, [
      'discard 0 2M', `write -P 0 ${2 * MiB} 2M`, `write -P 0x5a ${50 * MiB} 1M`, 'flush',
    ]);
    expect(w.exitCode, w.stdout + w.stderr).toBe(0);
    data.fill(0, 0, 4 * MiB);
    data.fill(0x5a, 50 * MiB, 51 * MiB);
    await writeFile(src, data);

    await sigterm(t);
    await nothingLeft(t);
    await check(t.image);
    const cmp = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, t.image], { reject: false });
    expect(cmp.stdout, cmp.stderr).toMatch(/Images are identical/);
    // The freed 4 MiB hold no data in the file: they were unmapped, not written as zeroes.
    const ranges = await dataRanges(t.image);
    expect(ranges).toEqual([
      { start: 4 * MiB, length: 12 * MiB }, { start: 40 * MiB, length: 4 * MiB }, { start: 50 * MiB, length: MiB },
    ]);
  });

  it('serves an existing raw image (format detected) and a discard punches a hole in it', async () => {
    const raw = join(dir, 'target-raw.img');
    await writeFile(raw, Buffer.alloc(8 * MiB, 0x77));
    await execa('truncate', ['-s', String(SIZE), raw]);
    const t = await target(raw);
    expect(t.info).toMatchObject({ format: 'raw', created: false });
    const w = await qemuIoRemote(t.info, clients.hv, ['discard 0 4M', `write -P 0 ${4 * MiB} 1M`, 'flush']);
    expect(w.exitCode, w.stdout + w.stderr).toBe(0);
    t.cli.child.kill('SIGTERM');
    expect(await t.cli.exited, t.cli.stderr()).toBe(0);
    await nothingLeft(t);
    const map = JSON.parse((await execa('qemu-img', ['map', '--output=json', '-f', 'raw', raw])).stdout) as { start: number; length: number; data: boolean }[];
    expect(map.filter((e) => e.data).map(({ start, length }) => ({ start, length }))).toEqual([{ start: 5 * MiB, length: 3 * MiB }]);
  });

  it('refuses a client without a certificate, with another CA\'s, with another identity, or without TLS, and nothing is written', async () => {
    const t = await target();
    const cases = {
      'no certificate': withCerts(t.info.uri, clients.noCert),
      'another CA': withCerts(t.info.uri, clients.otherCa),
      'another identity': withCerts(t.info.uri, clients.intruder),
      'no TLS': t.info.uri.replace(/^nbds:/, 'nbd:'),
    };
    const src = join(dir, 'intruder.raw');
    await writeFile(src, Buffer.alloc(MiB, 0x66));
    for (const [what, uri] of Object.entries(cases)) {
      const r = await ns.exec('nbdinfo', ['--size', uri]);
      expect(r.exitCode, `${what}: ${r.stdout}`).not.toBe(0);
      expect(r.stdout, what).toBe('');
      const c = await ns.exec('nbdcopy', ['--', src, uri]);
      expect(c.exitCode, what).not.toBe(0);
    }
    for (const [what, certs] of [['another CA', clients.otherCa], ['another identity', clients.intruder]] as const) {
      const w = await qemuIoRemote(t.info, certs, ['write -P 0x66 0 1M']);
      expect(w.exitCode, what).not.toBe(0);
    }
    // A refused identity is named on stderr as the DN an admin would have to allow.
    await pollUntil(() => /TLS x509 authz check for CN=intruder is denied/.test(t.cli.stderr()), 'the refusal on stderr', { timeoutMs: 10_000, intervalMs: 20 });
    // The refusals were the identity check, not a broken target.
    const ok = await ns.exec('nbdinfo', ['--size', withCerts(t.info.uri, clients.hv)]);
    expect(ok.stdout.trim()).toBe(String(SIZE));
    await sigterm(t);
    await check(t.image);
    expect(await dataRanges(t.image)).toEqual([]);
  });

  it('a Ctrl-C (SIGINT to its whole process group, storage daemon included) ends it with exit 0 and a clean image', async () => {
    const t = await target(undefined, [], { ownGroup: true });
    const src = join(dir, 'c.raw');
    await writeFile(src, Buffer.alloc(4 * MiB, 0x43));
    const copy = await ns.exec('nbdcopy', ['--', src, withCerts(t.info.uri, clients.hv)]);
    expect(copy.exitCode, copy.stderr).toBe(0);
    process.kill(-t.cli.child.pid!, 'SIGINT');
    expect(await t.cli.exited, t.cli.stderr()).toBe(0);
    expect(t.cli.stderr()).toMatch(/closed .*target-\d+\.qcow2/);
    await nothingLeft(t);
    await check(t.image);
    expect(await dataRanges(t.image)).toEqual([{ start: 0, length: 4 * MiB }]);
  });

  it('after a kill -9 of the CLI, its storage daemon still closes the image cleanly and exits', async () => {
    const t = await target();
    const src = join(dir, 'k.raw');
    await writeFile(src, Buffer.alloc(8 * MiB, 0x42));
    const copy = await ns.exec('nbdcopy', ['--', src, withCerts(t.info.uri, clients.hv)]);
    expect(copy.exitCode, copy.stderr).toBe(0);
    expect(pidAlive(t.info.pid)).toBe(true);
    t.cli.child.kill('SIGKILL');
    await t.cli.exited;
    await pollUntil(() => !pidAlive(t.info.pid), 'the storage daemon to exit with its owner', { timeoutMs: 20_000, intervalMs: 20 });
    await check(t.image);
    expect(await dataRanges(t.image)).toEqual([{ start: 0, length: 8 * MiB }]);
    // Its pid file is what a killed owner leaves behind; the image is free for the next run.
    expect(existsSync(t.image)).toBe(true);
    const again = await target(t.image);
    await sigterm(again);
  });
});
