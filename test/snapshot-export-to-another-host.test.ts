// A pass exported to another host through virtcbtd (`pass begin --export-to IDENTITY`): from a
// network namespace the named identity reads each disk of a running domain as it was at the
// snapshot's instant while the guest keeps writing; a client without a certificate or with another
// identity is refused; at the export's deadline, and after a kill -9 of virtcbtd and a restart, the
// pass is aborted and no export, node, job, overlay file, front end or registry record is left.
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, guestDd, referenceCopy, sameContent, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';
import { makeNetns, type NetNs } from './support/netns.js';
import { makeCa, makeClientDir, makeServerDir } from './support/tls-certs.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let ns: NetNs;
let dir: string;
const certs: Record<'backupHost' | 'intruder' | 'noCert', string> = {} as never;

async function qmp(cmd: string): Promise<any[]> {
  return JSON.parse((await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute: cmd })])).stdout).return;
}

/** Everything of virtcbt's snapshots in QEMU, the fleecing directory, the registry and the process table. */
async function leftovers(): Promise<string[]> {
  const out: string[] = [];
  for (const n of await qmp('query-named-block-nodes')) if (/^vcbt-/.test(n['node-name'])) out.push(`node ${n['node-name']}`);
  for (const j of await qmp('query-block-jobs')) out.push(`job ${j.device}`);
  for (const e of await qmp('query-block-exports')) out.push(`export ${e.id}`);
  const fleece = join('/var/lib/libvirt/qemu/virtcbt-test/fleece', encodeURIComponent(guest.name));
  for (const f of (() => { try { return readdirSync(fleece); } catch { return []; } })()) out.push(`overlay ${f}`);
  for (const f of (() => { try { return readdirSync(join(daemon.stateDir, 'snapshots')); } catch { return []; } })()) out.push(`record ${f}`);
  const fronts = await execa('pgrep', ['-f', `qemu-storage-daemon.*${join('/var/lib/virtcbt-test', `run-${process.pid}`)}`], { reject: false });
  if (fronts.stdout.trim()) out.push(`front ends ${fronts.stdout.trim()}`);
  return out;
}

beforeAll(async () => {
  dir = tempDir('export-to');
  ns = await makeNetns();
  const ca = await makeCa(join(dir, 'ca'), 'virtcbt test CA');
  const server = await makeServerDir(ca, join(dir, 'server'), ca, [ns.hostAddress]);
  certs.backupHost = await makeClientDir(ca, join(dir, 'backup-host'), ca, 'backup-host');
  certs.intruder = await makeClientDir(ca, join(dir, 'intruder'), ca, 'intruder');
  certs.noCert = join(dir, 'no-cert');
  await execa('mkdir', ['-p', certs.noCert]);
  await execa('cp', [join(certs.backupHost, 'ca-cert.pem'), certs.noCert]);
  daemon = await startTestDaemon({ config: { snapshot: { remote: { bind: ns.hostAddress, port: 0, tlsDir: server, deadlineSeconds: 3600 } } } });
  guest = await startLibvirtGuest({ name: 'expto', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'offsite']);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
  await guestDd(agent, '/dev/vdb', 0, 8 * MiB);
});

async function beginRemotePass(): Promise<any> {
  return JSON.parse((await daemon.cli(['pass', 'begin', guest.name, '--consumer', 'offsite', '--export-to', 'CN=backup-host', '--json'])).stdout);
}

describe('a pass exported to another host', () => {
  it('the named identity reads the disks at the snapshot\'s instant from another host; others are refused', async () => {
    // The instant: the guest frozen by the test and its disks copied. vdb (written raw by the test,
    // not mounted) cannot change before the snapshot; vda's ext4 may (the pass's own freeze attempt
    // on an already frozen guest ends in a thaw, and ext4 writes its superblock then), so vda is
    // only read whole.
    await virsh(['domfsfreeze', guest.name]);
    let pass: any;
    let ref: Record<string, string>;
    try {
      ref = await referenceCopy(guest, dir, 'instant');
      pass = await beginRemotePass();
    } finally {
      await virsh(['domfsthaw', guest.name]);
    }
    // The guest keeps writing; the export must not see it.
    await guestDd(agent, '/dev/vdb', 0, 4 * MiB);
    await guestDd(agent, '/dev/vdb', 16 * MiB, 4 * MiB);
    expect(pass.exports.map((e: any) => e.target)).toEqual(['vda', 'vdb']);
    for (const e of pass.exports) {
      expect(e.remoteUri).toMatch(new RegExp(`^nbds://${ns.hostAddress.replace(/\./g, '\\.')}:\\d+/[0-9a-f]{32}$`));
      const out = join(dir, `remote-${e.target}.raw`);
      const r = await ns.exec('nbdcopy', ['--', `${e.remoteUri}?tls-certificates=${certs.backupHost}`, out]);
      expect(r.exitCode, r.stderr).toBe(0);
      if (e.target !== 'vdb') continue;
      const same = await sameContent(out, 'raw', ref![e.target]!, 'raw');
      expect(same.same, `${e.target}: ${same.detail}`).toBe(true);
    }
    const vdb = pass.exports.find((e: any) => e.target === 'vdb').remoteUri;
    for (const who of ['intruder', 'noCert'] as const) {
      const r = await ns.exec('nbdinfo', ['--size', `${vdb}?tls-certificates=${certs[who]}`]);
      expect(r.exitCode, who).not.toBe(0);
    }
    await daemon.cli(['pass', 'abort', guest.name, '--consumer', 'offsite', '--pass', String(pass.pass)]);
    await pollUntil(async () => (await leftovers()).length === 0, 'the pass\'s snapshot and front ends to go', { timeoutMs: 30_000, intervalMs: 100 });
  });

  it('kill -9 of virtcbtd: the front ends die with it, and the restarted virtcbtd aborts the pass and removes its snapshot', async () => {
    const pass = await beginRemotePass();
    expect((await leftovers()).some((l) => l.startsWith('front ends'))).toBe(true);
    await daemon.kill('SIGKILL');
    await daemon.start();
    await pollUntil(async () => (await leftovers()).length === 0, 'the dead virtcbtd\'s snapshot to go', { timeoutMs: 60_000, intervalMs: 100 });
    const status = await daemon.cliJson(['status', guest.name]);
    expect(status.openPasses.map((p: { id: number }) => p.id)).not.toContain(pass.pass);
    // The consumer did not move: its next pass still sees the first pass's changes.
    const next = await daemon.cliJson(['changes', guest.name, '--consumer', 'offsite']);
    expect(next.disks.find((d: any) => d.target === 'vdb').changedBytes).toBeGreaterThan(0);
  });

  it('at its deadline the export ends, the pass is aborted and nothing is left', async () => {
    await daemon.stop();
    const cfg = JSON.parse(readFileSync(daemon.configFile, 'utf8'));
    cfg.snapshot.remote.deadlineSeconds = 2;
    writeFileSync(daemon.configFile, JSON.stringify(cfg));
    await daemon.start();
    await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
    const pass = await beginRemotePass();
    expect(pass.exports[0].remoteUri).toBeTruthy();
    await pollUntil(async () => (await leftovers()).length === 0, 'the export to end at its deadline', { timeoutMs: 30_000, intervalMs: 100 });
    expect(daemon.log()).toContain(`pass ${pass.pass} ended (deadline)`);
  });
});
