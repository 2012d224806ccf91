// Quarantine on a real libvirt domain with user-mode NICs: link-down takes every link down live
// and in the persistent definition (so a domain restart keeps them down), status shows the
// verdict, release restores exactly the earlier states (one that was down stays down); a clean
// domain is untouched; suspend is undone by release; the command action gets the domain and paths
// as argv (never a shell); the webhook gets the verdict, and a dead or hanging one holds nothing up.
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Libvirt } from '../src/libvirt/index.js';
import { quarantine, release, type QuarantineDeps, type Verdict } from '../src/scan/quarantine.js';
import { pollUntil } from '../src/util/abort.js';
import { createLogger } from '../src/util/log.js';
import { tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { LIBVIRT_URI, startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';

useCleanup();

const NIC_A = '52:54:00:51:00:0a';
const NIC_B = '52:54:00:51:00:0b';
const EICAR = 'Eicar-Test-Signature';

let daemon: TestDaemon;
const hooks: { body: any }[] = [];
let hookUrl: string;

async function listen(server: Server): Promise<string> {
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  onCleanup(() => new Promise<void>((res) => { server.closeAllConnections(); server.close(() => res()); }));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
}

beforeAll(async () => {
  const server = createServer((req, res) => {
    let text = '';
    req.on('data', (c: Buffer) => { text += c.toString(); });
    req.on('end', () => { hooks.push({ body: JSON.parse(text) }); res.end('ok'); });
  });
  hookUrl = await listen(server);
  daemon = await startTestDaemon({ config: { scan: { quarantine: 'link-down', webhook: hookUrl } } });
  // socketGroup root: the group socket exists (the socket a request comes through is its credential).
  const cfg = JSON.parse(await readFile(daemon.configFile, 'utf8'));
  cfg.daemon.socketGroup = 'root';
  await writeFile(daemon.configFile, JSON.stringify(cfg, null, 2));
  await daemon.stop();
  await daemon.start();
});

/**
 * Two NICs, the second already down (in the definition, hence live too). Running is enough: links
 * are the QEMU process's, whether or not the guest inside has booted.
 */
async function twoNicGuest(name: string): Promise<LibvirtGuest> {
  const g = await startLibvirtGuest({ name, interfaces: [{ mac: NIC_A }, { mac: NIC_B, linkDown: true }], start: false });
  await virsh(['start', g.name]);
  return g;
}

async function getLink(domain: string, mac: string, config = false): Promise<string> {
  const r = await virsh(['domif-getlink', domain, mac, ...(config ? ['--config'] : [])]);
  return r.stdout.trim().split(/\s+/).pop()!;
}

/** Each NIC's link as `live/config`. */
async function links(domain: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const mac of [NIC_A, NIC_B]) out[mac] = `${await getLink(domain, mac)}/${await getLink(domain, mac, true)}`;
  return out;
}

const verdict = (paths: string[]): Verdict => ({ scanner: 'test-scanner', at: new Date().toISOString(), infected: paths.map((path) => ({ path, signature: EICAR, disk: 'vda' })) });

function directDeps(extra: Partial<QuarantineDeps> = {}): QuarantineDeps & { lines: string[] } {
  const lines: string[] = [];
  const libvirt = new Libvirt(LIBVIRT_URI);
  onCleanup(() => libvirt.close());
  return { libvirt, stateDir: tempDir('quarantine-state'), logger: createLogger('debug', (l) => lines.push(l)), lines, ...extra };
}

describe('quarantine', () => {
  it('link-down: every link down live and persistent, still down after a restart; status; release restores exactly; a clean domain is untouched', async () => {
    const [g, clean] = await Promise.all([twoNicGuest('qlink'), twoNicGuest('qclean')]);
    expect(await links(g.name)).toEqual({ [NIC_A]: 'up/up', [NIC_B]: 'down/down' });
    // The one that was down before: made up only in the running domain, so live and persistent differ.
    await virsh(['domif-setlink', g.name, NIC_B, 'up']);
    expect(await links(g.name)).toEqual({ [NIC_A]: 'up/up', [NIC_B]: 'up/down' });

    const paths = ['/root/eicar.com', '/home/a b/$(touch x)\nnext'];
    const rec = await daemon.cliJson(['quarantine', 'status', g.name]);
    expect(rec.state).toBe('clean');
    const { callDaemon } = await import('../src/cli/daemon-client.js');
    const r = await callDaemon<any>(daemon.socket, 'POST', `/v1/domains/${encodeURIComponent(g.name)}/quarantine`, { body: verdict(paths) });
    expect(r).toMatchObject({ state: 'quarantined', action: 'link-down' });
    expect(await links(g.name)).toEqual({ [NIC_A]: 'down/down', [NIC_B]: 'down/down' });

    // Destroy and start: the persistent definition says down, so the new QEMU starts with them down.
    await g.destroy();
    await virsh(['start', g.name]);
    expect(await links(g.name)).toEqual({ [NIC_A]: 'down/down', [NIC_B]: 'down/down' });

    // A second verdict adds to the first; the domain stays quarantined.
    await callDaemon(daemon.socket, 'POST', `/v1/domains/${encodeURIComponent(g.name)}/quarantine`, { body: verdict(['/tmp/second']) });
    const status = await daemon.cliJson(['quarantine', 'status', g.name]);
    expect(status.state).toBe('quarantined');
    expect(status.record.verdicts.flatMap((v: Verdict) => v.infected.map((f) => [f.path, f.signature]))).toEqual([...paths, '/tmp/second'].map((p) => [p, EICAR]));
    const human = await daemon.cli(['quarantine', 'status']);
    expect(human.stdout).toContain(`${g.name}: QUARANTINED`);
    expect(human.stdout).toContain(JSON.stringify(paths[1]));
    expect(human.stdout).not.toContain(clean.name);

    const rel = await daemon.cliJson(['quarantine', 'release', g.name]);
    expect(rel.state).toBe('released');
    // Exactly as before: A up everywhere; B up in the running domain, down in the definition.
    expect(await links(g.name)).toEqual({ [NIC_A]: 'up/up', [NIC_B]: 'up/down' });
    expect((await daemon.cliJson(['quarantine', 'status', g.name])).state).toBe('released');
    const again = await daemon.cli(['quarantine', 'release', g.name], { reject: false });
    expect(again.exitCode).toBe(4);
    expect(again.stderr).toMatch(/is not quarantined/);

    expect(await links(clean.name)).toEqual({ [NIC_A]: 'up/up', [NIC_B]: 'down/down' });
    expect((await daemon.cliJson(['quarantine', 'status', clean.name])).state).toBe('clean');
    // The webhook got the verdict as JSON.
    const hook = await pollUntil(() => hooks.find((h) => h.body.domain === g.name && h.body.event === 'quarantine'), 'the webhook', { timeoutMs: 15_000 });
    expect(hook.body).toMatchObject({ action: 'link-down', ok: true, verdict: { scanner: 'test-scanner', infected: [{ path: paths[0], signature: EICAR }, { path: paths[1] }] } });
  });

  it('a verdict for an unknown domain or a malformed one is refused and records nothing', async () => {
    const { callDaemon } = await import('../src/cli/daemon-client.js');
    await expect(callDaemon(daemon.socket, 'POST', '/v1/domains/virtcbt-test-no-such-domain/quarantine', { body: verdict(['/x']) })).rejects.toThrow(/no libvirt domain named/);
    await expect(callDaemon(daemon.socket, 'POST', '/v1/domains/virtcbt-test-no-such-domain/quarantine', { body: { infected: [] } })).rejects.toThrow(/non-empty list/);
    await expect(callDaemon(daemon.socket, 'POST', '/v1/domains/virtcbt-test-no-such-domain/quarantine', { body: { infected: [{ path: '/x', signature: 'a\nb' }] } })).rejects.toThrow(/signature/);
    expect((await daemon.cliJson(['quarantine', 'status', 'virtcbt-test-no-such-domain'])).state).toBe('clean');
    // The group socket may read the status, not report or release.
    const group = daemon.socket.replace(/\.sock$/, '-group.sock');
    expect(await callDaemon(group, 'GET', '/v1/quarantine')).toHaveProperty('domains');
    await expect(callDaemon(group, 'POST', '/v1/domains/x/quarantine/release')).rejects.toThrow(/quarantine release needs root/);
    await expect(callDaemon(group, 'POST', '/v1/domains/x/quarantine', { body: verdict(['/x']) })).rejects.toThrow(/quarantine report needs root/);
  });

  it('shutdown: graceful first, forced off when the guest does not go; a damaged record is set aside, never read as clean', async () => {
    const g = await startLibvirtGuest({ name: 'qdown', start: false });
    await virsh(['start', g.name]);
    const deps = directDeps({ shutdownTimeoutMs: 3_000 });
    // A damaged record: status still says quarantined (with the problem), release refuses it.
    const { mkdir } = await import('node:fs/promises');
    await mkdir(join(deps.stateDir, 'quarantine'), { recursive: true });
    await writeFile(join(deps.stateDir, 'quarantine', `${encodeURIComponent(g.name)}.json`), '{"format":"virtcbt-quarantine/1","domain":');
    const { quarantineStatus } = await import('../src/scan/quarantine.js');
    expect(await quarantineStatus(g.name, deps.stateDir)).toMatchObject({ state: 'quarantined', problem: expect.stringMatching(/cannot be trusted/) });
    await expect(release(g.name, deps)).rejects.toThrow(/cannot be trusted/);

    const rec = await quarantine(g.name, verdict(['/evil']), { action: 'shutdown' }, deps);
    expect((await virsh(['domstate', g.name])).stdout.trim()).toBe('shut off');
    expect(rec.events.find((e) => e.what === 'damaged-record')).toBeDefined();
    expect(rec.events.filter((e) => e.what === 'shutdown' && e.ok).at(-1)!.detail).toMatch(/shut down|forced off/);
    const released = await release(g.name, deps);
    expect(released.state).toBe('released');
    // Release does not start a domain the quarantine shut down.
    expect((await virsh(['domstate', g.name])).stdout.trim()).toBe('shut off');
  });

  it('suspend pauses the domain; release resumes it', async () => {
    const g = await startLibvirtGuest({ name: 'qsusp', interfaces: [{ mac: NIC_A }], start: false });
    // Running is enough: the guest's own boot does not matter to a pause.
    await virsh(['start', g.name]);
    const { callDaemon } = await import('../src/cli/daemon-client.js');
    await callDaemon(daemon.socket, 'POST', `/v1/domains/${encodeURIComponent(g.name)}/quarantine`, { body: { ...verdict(['/evil']), action: 'suspend' } });
    expect((await virsh(['domstate', g.name])).stdout.trim()).toBe('paused');
    expect(await getLink(g.name, NIC_A)).toBe('up');
    await daemon.cli(['quarantine', 'release', g.name]);
    expect((await virsh(['domstate', g.name])).stdout.trim()).toBe('running');
  });

  it('command: runs with the domain and the paths as argv and the verdict in the environment, no shell', async () => {
    const g = await startLibvirtGuest({ name: 'qcmd', start: false });
    const dir = tempDir('quarantine-cmd');
    const script = join(dir, 'isolate.sh');
    const out = join(dir, 'out.json');
    await writeFile(script, `#!/bin/sh\nexec node -e 'require("fs").writeFileSync(process.argv[1], JSON.stringify({argv: process.argv.slice(2), domain: process.env.VIRTCBT_DOMAIN, sigs: process.env.VIRTCBT_SIGNATURES, verdict: JSON.parse(process.env.VIRTCBT_VERDICT)}))' ${out} "$@"\n`);
    await chmod(script, 0o755);
    const paths = ['/a b', '$(touch /tmp/virtcbt-pwned)', '/x;y'];
    const deps = directDeps();
    const rec = await quarantine(g.name, verdict(paths), { action: 'command', command: [script, '--flag'] }, deps);
    expect(rec.events.at(-1)).toMatchObject({ what: 'command', ok: true });
    const got = JSON.parse(await readFile(out, 'utf8'));
    expect(got).toMatchObject({ argv: ['--flag', g.name, ...paths], domain: g.name, sigs: [EICAR, EICAR, EICAR].join('\n') });
    expect(got.verdict.infected.map((f: { path: string }) => f.path)).toEqual(paths);
    // A command that fails: the verdict is still recorded, the error says so.
    await expect(quarantine(g.name, verdict(['/z']), { action: 'command', command: ['/bin/false'] }, deps)).rejects.toThrow(/verdict is recorded but action command failed.*exited 1/);
    await release(g.name, deps);
  });

  it('a dead or hanging webhook does not hold the quarantine back', async () => {
    const g = await startLibvirtGuest({ name: 'qhook', interfaces: [{ mac: NIC_A }], start: false });
    await virsh(['start', g.name]);
    // Accepts the connection, never answers.
    const hang = createServer(() => undefined);
    const hangUrl = await listen(hang);
    const deps = directDeps({ webhook: hangUrl });
    const t0 = Date.now();
    await quarantine(g.name, verdict(['/evil']), { action: 'link-down' }, deps);
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(await getLink(g.name, NIC_A)).toBe('down');
    await release(g.name, deps);
    expect(await getLink(g.name, NIC_A)).toBe('up');

    const dead = directDeps({ webhook: 'http://127.0.0.1:1/hook' });
    await quarantine(g.name, verdict(['/evil']), { action: 'link-down' }, dead);
    expect(await getLink(g.name, NIC_A)).toBe('down');
    await pollUntil(() => dead.lines.some((l) => /quarantine webhook failed; the quarantine itself is in place/.test(l)), 'the webhook failure to be logged', { timeoutMs: 15_000 });
    await release(g.name, dead);
  });
});
