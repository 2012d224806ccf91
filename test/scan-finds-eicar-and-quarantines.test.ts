// Offloaded scanning end to end: virtcbt-scanner in its own network namespace with a real clamd;
// `virtcbt scan` on the hypervisor snapshots the running domain, exports its disks to the scanner's
// identity over TLS and hands the job over (to the next configured scanner when one does not answer). A clean domain is untouched. The EICAR-like file
// written into the guest through the agent is found by an incremental scan (few files opened),
// the domain's links go down and stay down across a restart, and `quarantine release` brings back
// exactly the earlier states. No snapshot is left behind.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { pollUntil } from '../src/util/abort.js';
import { tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';
import { EICAR, SIGNATURE, scannerWorld, startScanner, type ScannerWorld } from './support/scanner.js';

useCleanup();

const MAC = '52:54:00:5c:a0:01';
let daemon: TestDaemon;
let guest: LibvirtGuest;
let agent: GuestAgent;
let w: ScannerWorld;

beforeAll(async () => {
  const dir = tempDir('scan-e2e');
  w = await scannerWorld(dir);
  const scanner = await startScanner(dir, w.config(), w.ns, 'nobody');
  guest = await startLibvirtGuest({ name: 'scan', scratchFormat: 'qcow2', start: false, interfaces: [{ mac: MAC }] });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  daemon = await startTestDaemon({
    config: {
      snapshot: { remote: { bind: w.ns.hostAddress, port: 0, tlsDir: w.exportServerDir, deadlineSeconds: 600 } },
      // The first configured scanner does not answer: the next one is used.
      scan: {
        scanners: [{ name: 'down', url: `https://${w.ns.nsAddress}:1`, identity: 'CN=scanner', tlsDir: w.hv }, { name: 's1', url: scanner.url, identity: 'CN=scanner', tlsDir: w.hv }],
        quarantine: 'link-down', fullEveryHours: 0,
      },
    },
  });
  await daemon.cli(['enable', guest.name]);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
});

async function scan(extra: string[] = []): Promise<{ exitCode: number; result: any }> {
  const r = await daemon.cli(['scan', guest.name, '--json', ...extra], { reject: false });
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const result = lines.at(-1);
  expect(result?.type, `${r.stderr}\n${r.stdout.slice(-2000)}`).toBe('result');
  return { exitCode: r.exitCode, result };
}

const link = async () => (await virsh(['domif-getlink', guest.name, MAC])).stdout.trim();
const persistentLink = async () => (await virsh(['dumpxml', '--inactive', guest.name])).stdout.includes("<link state='down'/>") ? 'down' : 'up';

it('a clean domain is scanned and untouched; EICAR written into the guest is found and the domain quarantined until released', async () => {
  // Enough files that an incremental scan's few opened files stand out.
  const many = await agent.exec('/bin/sh', ['-c', 'mkdir -p /mnt/data/many && for i in $(seq 1 60); do echo "file $i" > /mnt/data/many/f$i.txt; done && sync'], { timeoutMs: 60_000 });
  expect(many.exitCode, many.stderr).toBe(0);
  const clean = await scan();
  expect(clean.exitCode).toBe(0);
  expect(clean.result.scanner).toBe('s1');
  expect(clean.result.notes.join('\n')).toMatch(/scanner down at .* cannot be reached/);
  expect(clean.result.verdict.infected).toEqual([]);
  expect(clean.result.verdict.scanned.files).toBeGreaterThan(0);
  expect(await link()).toMatch(/up$/);

  await agent.writeFile('/mnt/data/docs/eicar.com', EICAR);
  expect((await agent.exec('/bin/sync', [], { timeoutMs: 60_000 })).exitCode).toBe(0);
  const found = await scan();
  expect(found.exitCode).toBe(10);
  expect(found.result.full).toBe(false);
  expect(found.result.verdict.infected).toEqual([expect.objectContaining({ disk: 'vda', path: expect.stringMatching(/docs\/eicar\.com$/), signature: expect.stringContaining(SIGNATURE) })]);
  // Incremental: only the files whose blocks changed were opened.
  expect(clean.result.verdict.scanned.filesOpened).toBeGreaterThan(60);
  // (The change log's 64 KiB blocks cover the small files beside eicar.com too.)
  expect(found.result.verdict.scanned.filesOpened).toBeLessThan(clean.result.verdict.scanned.filesOpened / 3);
  // (Bytes read over NBD: on this tiny filesystem the inode-table walk outweighs the files; see
  // scanner-incremental-reads-only-changed-files for a filesystem where the files dominate.)
  expect(await link()).toMatch(/down$/);
  expect(await persistentLink()).toBe('down');

  const status = await daemon.cliJson(['quarantine', 'status', guest.name]);
  expect(JSON.stringify(status)).toContain('eicar.com');
  await virsh(['destroy', guest.name]);
  await guest.start();
  expect(await link()).toMatch(/down$/);

  await daemon.cli(['quarantine', 'release', guest.name]);
  expect(await link()).toMatch(/up$/);
  expect(await persistentLink()).toBe('up');
  // The scans' snapshots are gone: no registry record, no overlay.
  expect(readdirSync(join(daemon.stateDir, 'snapshots'))).toEqual([]);
});
