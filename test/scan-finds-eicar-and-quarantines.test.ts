// Offloaded scanning end to end: virtcbt-scanner in its own network namespace with a real clamd;
// `virtcbt scan` on the hypervisor snapshots the running domain, exports its disks to the scanner's
// identity over TLS and hands the job over (to the next configured scanner when one does not answer). A clean domain is untouched. The EICAR-like file
// written into the guest through the agent is found by an incremental scan (few files opened),
// the domain's links go down and stay down across a restart, and `quarantine release` brings back
// exactly the earlier states. No snapshot is left behind.
import { lstatSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it, onTestFinished } from 'vitest';
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
let idle: LibvirtGuest;
let agent: GuestAgent;
let w: ScannerWorld;

beforeAll(async () => {
  const dir = tempDir('scan-e2e');
  w = await scannerWorld(dir);
  const scanner = await startScanner(dir, w.config(), w.ns, 'nobody');
  // A scanner whose size limit skips nearly every file: its verdict can never be complete.
  const capped = await startScanner(dir, w.config({ limits: { maxFileBytes: 4 } }), w.ns, 'nobody');
  guest = await startLibvirtGuest({ name: 'scan', scratchFormat: 'qcow2', start: false, interfaces: [{ mac: MAC }] });
  // Listed in the scan job beside the guest, and never started.
  idle = await startLibvirtGuest({ name: 'scanoff', scratchFormat: 'qcow2', start: false });
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  daemon = await startTestDaemon({
    config: {
      snapshot: { remote: { bind: w.ns.hostAddress, port: 0, tlsDir: w.exportServerDir, deadlineSeconds: 600 } },
      // The first configured scanner does not answer: the next one is used.
      scan: {
        scanners: [{ name: 'down', url: `https://${w.ns.nsAddress}:1`, identity: 'CN=scanner', tlsDir: w.hv }, { name: 's1', url: scanner.url, identity: 'CN=scanner', tlsDir: w.hv },
          { name: 'capped', url: capped.url, identity: 'CN=scanner', tlsDir: w.hv }],
        quarantine: 'link-down', fullEveryHours: 0,
        jobs: [{ name: 'hourly', domains: [guest.name, idle.name], calendar: 'hourly' }],
      },
    },
  });
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['enable', idle.name]);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
});

async function scan(extra: string[] = []): Promise<{ exitCode: number; result: any; events: any[] }> {
  const r = await daemon.cli(['scan', guest.name, '--json', ...extra], { reject: false });
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const result = lines.at(-1);
  expect(result?.type, `${r.stderr}\n${r.stdout.slice(-2000)}`).toBe('result');
  return { exitCode: r.exitCode, result, events: lines };
}

/** Where the scanner found the changed blocks' owners, per filesystem it scanned incrementally. */
const ownersFrom = (s: { events: any[] }) => s.events.filter((e) => e.type === 'scanner' && e.event.type === 'filesystem').map((e) => e.event.ownersFrom);

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

it('a scan that did not look at everything exits 11, never 0: its report says INCOMPLETE and what was skipped', async () => {
  const json = await scan(['--scanner', 'capped']);
  expect(json.result.scanner).toBe('capped');
  expect(json.result.verdict.infected).toEqual([]);
  expect(json.result.verdict.complete).toBe(false);
  expect(json.result.verdict.limitsHit).toContainEqual(expect.objectContaining({ limit: 'maxFileBytes', value: 4 }));
  expect(json.exitCode).toBe(11);
  // (Full again: an incremental scan of nothing changed would have nothing to skip.)
  const text = await daemon.cli(['scan', guest.name, '--scanner', 'capped', '--full'], { reject: false });
  expect(text.exitCode, text.stderr).toBe(11);
  expect(text.stdout).toMatch(/nothing found in what was scanned, but the scan is INCOMPLETE/);
  expect(text.stdout).toMatch(/skipped: vda:\S+: size limit/);
  // Nothing was found: no quarantine.
  expect(await link()).toMatch(/up$/);
});

it('a filesystem the scanner could not read at one scan is read in whole at the next: a file written while it was unreadable is found', async () => {
  const sh = async (script: string) => {
    const r = await agent.exec('/bin/sh', ['-c', script], { timeoutMs: 60_000 });
    expect(r.exitCode, `${script}: ${r.stderr}`).toBe(0);
    return r.stdout.trim();
  };
  await scan();
  const dev = await sh('awk \'$2=="/mnt/data"{print $1}\' /proc/mounts');
  expect(dev).toMatch(/^\/dev\/vd[a-z]$/);
  // A file written, and the ext4 magic zeroed on the disk (the guest's kernel never reads it again):
  // the scanner sees no filesystem it knows, so nothing there is scanned.
  await agent.writeFile('/mnt/data/docs/later.com', EICAR);
  const restore = () => sh(`printf '\\123\\357' | dd of=${dev} bs=1 seek=1080 count=2 conv=notrunc,fsync 2>/dev/null`);
  // Whatever happens below, the guest's filesystem is whole again for the other cases.
  onTestFinished(async () => {
    await restore();
    await sh('rm -f /mnt/data/docs/later.com && sync');
    await daemon.cli(['quarantine', 'release', guest.name], { reject: false });
  });
  await sh(`sync && dd if=/dev/zero of=${dev} bs=1 seek=1080 count=2 conv=notrunc,fsync 2>/dev/null`);
  const hidden = await scan();
  expect(hidden.exitCode).toBe(11);
  expect(hidden.result.verdict.notScanned).toContainEqual(expect.objectContaining({ disk: 'vda', partition: 0, kind: 'unknown' }));
  expect(hidden.result.verdict.infected).toEqual([]);
  // virtcbtd's record names what could not be read, and when that scan's freeze began.
  const record = () => JSON.parse(readFileSync(join(daemon.stateDir, 'scan', encodeURIComponent(guest.name), 's1.json'), 'utf8'));
  expect(record().unscanned).toEqual([expect.objectContaining({ disk: 'vda', offset: 0, kind: 'unknown' })]);
  expect(record().changedSince).toEqual(expect.any(Number));
  // On the guest's clock, which is not the host's (seen 2 s behind, and 0.1 s ahead after a reboot).
  expect(Math.abs(record().changedSince - Date.parse(hidden.result.time) / 1000)).toBeLessThan(60);
  // The magic put back: the blocks changed since are the superblock's alone, yet the file is found,
  // because the last scan could not read that filesystem.
  await restore();
  const back = await scan();
  expect(back.result.full).toBe(false);
  expect(back.result.verdict.infected.map((f: { path: string }) => f.path)).toContainEqual(expect.stringMatching(/docs\/later\.com$/));
  expect(back.exitCode).toBe(10);
  expect(record().unscanned).toEqual([]);
  expect(back.result.notes.join('\n')).toMatch(/scanned in whole, as the last scan could not read them: vda unknown at 0/);
  // Undo: the domain released (and, in onTestFinished, the file gone).
  await daemon.cli(['quarantine', 'release', guest.name]);
  expect(await link()).toMatch(/up$/);
});

it('a scan record virtcbtd did not write (tampered, truncated, a symlink) makes the next scan full, and is replaced by a good one', async () => {
  await scan();
  const file = join(daemon.stateDir, 'scan', encodeURIComponent(guest.name), 's1.json');
  for (const tamper of [
    () => writeFileSync(file, '{"format":"virtcbt-scan/1","unscanned":[{"disk":"vda","offset":-1,"length":4096,"kind":"x"}]}'),
    () => writeFileSync(file, '{"format":"virtcbt-scan/1","changedSince":"yesterday"}'),
    () => writeFileSync(file, '{"format":"virtcbt-scan/1","unowned":[{"disk":"vda","extents":[[0,-5]]}]}'),
    () => writeFileSync(file, '{"format":"virtcbt-sc'),
    () => { rmSync(file); symlinkSync('/etc/hostname', file); },
  ]) {
    tamper();
    const r = await scan();
    expect(r.result.full).toBe(true);
    expect(r.result.reason).toMatch(/record was not one virtcbtd wrote/);
    expect(lstatSync(file).isFile()).toBe(true);
    expect(JSON.parse(readFileSync(file, 'utf8')).changedSince).toEqual(expect.any(Number));
    // The one after is incremental again.
    expect((await scan()).result.full).toBe(false);
  }
});

it('an incremental scan reads a file whose inode alone changed since the last scan (a chmod), though none of its blocks did', async () => {
  const sh = async (script: string) => {
    const r = await agent.exec('/bin/sh', ['-c', script], { timeoutMs: 60_000 });
    expect(r.exitCode, `${script}: ${r.stderr}`).toBe(0);
  };
  await sh('echo "a script, harmless so far" > /mnt/data/docs/tool.sh && sync');
  await scan();
  await sh('chmod 755 /mnt/data/docs/tool.sh && sync');
  const r = await scan();
  expect(r.result.full).toBe(false);
  // Its inode-table block changed, not its data: the owner index the scanner kept since the last
  // scan (labelled with that scan's generation, where this one's changes start) tells its changed
  // inode from the slot's neighbours.
  expect(ownersFrom(r)).toContain('owner index');
  expect(r.result.verdict.scanned.filesOpened).toBeGreaterThanOrEqual(1);
  expect(r.exitCode).toBe(0);
  await sh('rm -f /mnt/data/docs/tool.sh && sync');
});

it('with the owner index, EICAR written into an existing file in place and appended to another is found', async () => {
  const sh = async (script: string) => {
    const r = await agent.exec('/bin/sh', ['-c', script], { timeoutMs: 60_000 });
    expect(r.exitCode, `${script}: ${r.stderr}`).toBe(0);
  };
  onTestFinished(async () => {
    await sh('rm -rf /mnt/data/inplace && sync');
    await daemon.cli(['quarantine', 'release', guest.name], { reject: false });
  });
  await sh('mkdir -p /mnt/data/inplace && for f in a b; do head -c 20000 /dev/zero | tr "\\0" "x" > /mnt/data/inplace/$f.txt; done && sync');
  await scan();
  // The payload is staged in the agent's file, then written over a.txt's first bytes (its blocks,
  // its size unchanged) and onto the end of b.txt.
  await agent.writeFile('/mnt/data/inplace/.payload', EICAR);
  await sh('dd if=/mnt/data/inplace/.payload of=/mnt/data/inplace/a.txt conv=notrunc 2>/dev/null && cat /mnt/data/inplace/.payload >> /mnt/data/inplace/b.txt && rm /mnt/data/inplace/.payload && sync');
  const r = await scan();
  expect(r.result.full).toBe(false);
  expect(ownersFrom(r)).toContain('owner index');
  expect(r.exitCode).toBe(10);
  const paths = r.result.verdict.infected.map((f: { path: string }) => f.path);
  expect(paths).toEqual(expect.arrayContaining([expect.stringMatching(/inplace\/a\.txt$/), expect.stringMatching(/inplace\/b\.txt$/)]));
});

it('changed blocks no file owns are carried from scan to scan until a file owns them (virtcbtd sends them again)', async () => {
  const sh = async (script: string) => {
    const r = await agent.exec('/bin/sh', ['-c', script], { timeoutMs: 60_000 });
    expect(r.exitCode, `${script}: ${r.stderr}`).toBe(0);
  };
  const record = () => JSON.parse(readFileSync(join(daemon.stateDir, 'scan', encodeURIComponent(guest.name), 's1.json'), 'utf8'));
  const carried = (): [number, number][] => record().unowned?.find((u: { disk: string }) => u.disk === 'vda')?.extents ?? [];
  const bytes = (x: [number, number][]) => x.reduce((n, e) => n + e[1], 0);
  await scan();
  // 1 MiB written to disk and freed again before the next scan: changed, and free at that scan.
  await sh('dd if=/dev/urandom of=/mnt/data/scratch.bin bs=64k count=16 conv=fsync 2>/dev/null && rm /mnt/data/scratch.bin && sync');
  const first = await scan();
  expect(first.result.full).toBe(false);
  const after = carried();
  expect(bytes(after)).toBeGreaterThanOrEqual(1024 * 1024);
  // Not changed since, yet still carried: virtcbtd sent them again and the scanner found them still free.
  const second = await scan();
  expect(second.result.full).toBe(false);
  const again = carried();
  const covered = (e: [number, number]) => again.some(([o, l]) => o <= e[0] && e[0] + e[1] <= o + l);
  expect(after.filter((e) => !covered(e)), JSON.stringify({ after, again })).toEqual([]);
  // The verdict shown to the admin (and kept with a quarantine) does not carry the list.
  expect(second.result.verdict.unowned).toBeUndefined();
  // A disk without a change keeps its carried ranges unsent (no block there can have gained an
  // owner): vdb, never written, given one in the record.
  const file = join(daemon.stateDir, 'scan', encodeURIComponent(guest.name), 's1.json');
  const rec = record();
  writeFileSync(file, JSON.stringify({ ...rec, unowned: [...(rec.unowned ?? []), { disk: 'vdb', extents: [[0, 65536]] }] }));
  const third = await scan();
  expect(third.result.full).toBe(false);
  expect(record().unowned).toContainEqual({ disk: 'vdb', extents: [[0, 65536]] });
});

it('scan --job scans its running domains and skips one that is shut off (said so), without failing the job', async () => {
  const r = await daemon.cli(['scan', '--job', 'hourly', '--json'], { reject: false });
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  expect(lines).toContainEqual({ type: 'skipped', domain: idle.name, reason: 'not running (shut off)' });
  expect(lines.filter((l) => l.type === 'result').map((l) => l.domain)).toEqual([guest.name]);
  expect([0, 10, 11], r.stderr).toContain(r.exitCode);
  const plain = await daemon.cli(['scan', '--job', 'hourly'], { reject: false });
  expect(plain.stdout).toMatch(new RegExp(`${idle.name}: not running \\(shut off\\): skipped`));
  expect(plain.stderr).not.toMatch(/failed/);
});

it('scan status shows per scanner the last completed scan and what it found, what changed since, and the next full scan', async () => {
  const t0 = new Date().toISOString();
  const r = await scan(['--scanner', 's1']);
  expect([0, 10, 11]).toContain(r.exitCode);
  const entry = async () => (await daemon.cliJson(['scan', 'status', guest.name])).scans.find((s: any) => s.scanner === 's1');
  const after = await entry();
  expect(after.lastScanAt >= t0, after.lastScanAt).toBe(true);
  expect(after.last).toMatchObject({ full: r.result.full, filesOpened: r.result.verdict.scanned.filesOpened, infected: r.result.verdict.infected.length, complete: r.result.verdict.complete });
  // fullEveryHours 0: after the first full scan, full ones come only with --full.
  expect(after.nextFull).toBe('only with --full');
  expect(after.modifiedSince.bytes).toBeLessThan(1024 * 1024);
  // The guest writes; once folded, the next incremental scan's share shows.
  expect((await agent.exec('/bin/sh', ['-c', 'head -c 2097152 /dev/urandom > /mnt/data/status.bin && sync'], { timeoutMs: 60_000 })).exitCode).toBe(0);
  await daemon.cli(['reconcile', guest.name]);
  expect((await entry()).modifiedSince.bytes).toBeGreaterThanOrEqual(2 * 1024 * 1024);
  // A scanner that never scanned this domain says so; every tracked domain is listed without DOMAIN.
  const all = (await daemon.cliJson(['scan', 'status'])).scans;
  expect(all.find((s: any) => s.domain === idle.name && s.scanner === 'down')).toMatchObject({ nextFull: 'next scan' });
  expect(all.find((s: any) => s.domain === idle.name && s.scanner === 'down').lastScanAt).toBeUndefined();
  const text = (await daemon.cli(['scan', 'status', guest.name])).stdout;
  expect(text).toMatch(new RegExp(`${guest.name} \\(scanner s1\\): last (full|incremental) scan \\S+: \\d+ files? read`));
  expect((await daemon.cli(['scan', 'status', 'no-such-domain'], { reject: false })).exitCode).toBe(4);
});
