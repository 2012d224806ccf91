// `virtcbt certs ca|server|client` make credentials QEMU and libnbd accept: a sync target served with
// the server directory admits the client whose printed identity it was given, and no other of the
// same CA; keys are mode 0600; nothing is ever overwritten (a refusal writes nothing); one directory
// may hold a host's server and client credentials of one CA, never of two.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { tempDir } from './support/nbd-servers.js';
import { CLI, serving, startTargetCli } from './support/sync-target.js';

useCleanup();

let dir: string;

beforeAll(() => {
  const t = tempDir('cli-certs');
  onCleanup(() => t.remove());
  dir = t.path;
});

function certs(args: string[]) {
  return execa('node', [CLI, 'certs', ...args], { reject: false, timeout: 60_000 });
}

/** Every file of `d` with its bytes: what "nothing changed" is checked against. */
function snapshot(d: string): Record<string, string> {
  return Object.fromEntries(readdirSync(d).sort().map((f) => [f, readFileSync(join(d, f), 'hex')]));
}

describe('virtcbt certs', () => {
  it('makes a CA, server and client credentials that a sync target and its client accept, with the printed identity', async () => {
    const ca = join(dir, 'ca');
    const server = join(dir, 'target');
    const hv = join(dir, 'hv');
    const other = join(dir, 'other');
    const made = await certs(['ca', ca, '--cn', 'Test CA']);
    expect(made.exitCode, made.stderr).toBe(0);
    expect(made.stdout).toBe('CN=Test CA');
    const s = await certs(['server', server, '--ca', ca, '--cn', 'target1', '--address', '127.0.0.1', '--address', 'target1.example']);
    expect(s.exitCode, s.stderr).toBe(0);
    expect(s.stdout).toBe('CN=target1');
    const c = await certs(['client', hv, '--ca', ca, '--cn', 'hv1', '--org', 'Example Org', '--json']);
    expect(c.exitCode, c.stderr).toBe(0);
    const client = JSON.parse(c.stdout) as { kind: string; identity: string; files: Record<string, string> };
    expect(client).toMatchObject({ kind: 'client', identity: 'O=Example Org,CN=hv1' });
    expect((await certs(['client', other, '--ca', ca, '--cn', 'hv2'])).stdout).toBe('CN=hv2');
    // The identity of an existing certificate (another PKI's) in the same form.
    expect((await certs(['identity', join(hv, 'client-cert.pem')])).stdout).toBe('O=Example Org,CN=hv1');

    expect(readdirSync(ca).sort()).toEqual(['ca-cert.pem', 'ca-key.pem']);
    expect(readdirSync(server).sort()).toEqual(['ca-cert.pem', 'server-cert.pem', 'server-key.pem']);
    expect(readdirSync(hv).sort()).toEqual(['ca-cert.pem', 'client-cert.pem', 'client-key.pem']);
    for (const key of [join(ca, 'ca-key.pem'), join(server, 'server-key.pem'), join(hv, 'client-key.pem')]) {
      expect(statSync(key).mode & 0o777, key).toBe(0o600);
    }

    // QEMU takes the server directory and admits exactly the printed identity.
    const t = startTargetCli([join(dir, 'img.qcow2'), '--create', '16M', '--bind', '127.0.0.1', '--allow', client.identity, '--tls-dir', server], join(dir, 'run'));
    const info = await serving(t);
    const src = join(dir, 'src.raw');
    await writeFile(src, Buffer.alloc(16 << 20, 0x33));
    const copy = await execa('nbdcopy', ['--', src, `${info.uri}?tls-certificates=${hv}`], { reject: false });
    expect(copy.exitCode, copy.stderr).toBe(0);
    const refused = await execa('nbdinfo', ['--size', `${info.uri}?tls-certificates=${other}`], { reject: false });
    expect(refused.exitCode).not.toBe(0);
    t.child.kill('SIGTERM');
    expect(await t.exited, t.stderr()).toBe(0);
    const cmp = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, join(dir, 'img.qcow2')], { reject: false });
    expect(cmp.stdout).toMatch(/Images are identical/);
  });

  it('never overwrites: a second run into the same directory fails and changes nothing', async () => {
    const ca = join(dir, 'ca2');
    expect((await certs(['ca', ca])).exitCode).toBe(0);
    const hv = join(dir, 'hv2');
    expect((await certs(['client', hv, '--ca', ca, '--cn', 'hv1'])).exitCode).toBe(0);
    const beforeCa = snapshot(ca);
    const beforeHv = snapshot(hv);
    for (const args of [['ca', ca], ['client', hv, '--ca', ca, '--cn', 'hv9']]) {
      const r = await certs(args);
      expect(r.exitCode, args.join(' ')).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/already exists.*nothing was overwritten/);
    }
    expect(snapshot(ca)).toEqual(beforeCa);
    expect(snapshot(hv)).toEqual(beforeHv);
    // Usage errors write nothing either.
    for (const [args, message] of [
      [['server', join(dir, 'x'), '--cn', 'h'], /missing --ca/],
      [['client', join(dir, 'x'), '--ca', join(dir, 'nope'), '--cn', 'h'], /ca-cert\.pem is missing/],
      [['client', join(dir, 'x'), '--ca', ca], /missing --cn/],
      [['server', join(dir, 'x'), '--ca', ca, '--cn', 'h', '--org', 'O'], /--org is not an option of certs server/],
      [['client', join(dir, 'x'), '--ca', ca, '--cn', 'a"b'], /holds a quote/],
      [['key', join(dir, 'x')], /ca, server or client/],
    ] as const) {
      const r = await certs([...args]);
      expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    expect(readdirSync(dir)).not.toContain('x');
  });

  it('puts a host\'s server and client credentials of one CA in one directory, and refuses another CA\'s there', async () => {
    const ca = join(dir, 'ca3');
    const otherCa = join(dir, 'ca4');
    expect((await certs(['ca', ca])).exitCode).toBe(0);
    expect((await certs(['ca', otherCa])).exitCode).toBe(0);
    const host = join(dir, 'host');
    expect((await certs(['server', host, '--ca', ca, '--cn', 'hv1', '--address', '127.0.0.1'])).exitCode).toBe(0);
    const c = await certs(['client', host, '--ca', ca, '--cn', 'hv1']);
    expect(c.exitCode, c.stderr).toBe(0);
    expect(readdirSync(host).sort()).toEqual(['ca-cert.pem', 'client-cert.pem', 'client-key.pem', 'server-cert.pem', 'server-key.pem']);
    const host2 = join(dir, 'host2');
    expect((await certs(['server', host2, '--ca', ca, '--cn', 'hv2'])).exitCode).toBe(0);
    const before = snapshot(host2);
    const r = await certs(['client', host2, '--ca', otherCa, '--cn', 'hv2']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/ca-cert\.pem already exists and holds another CA/);
    expect(snapshot(host2)).toEqual(before);
  });
});
