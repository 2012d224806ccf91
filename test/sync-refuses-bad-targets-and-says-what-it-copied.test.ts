// Disk-copy sync on bad input, one booted guest shared by the cases: a target smaller than the
// disk, the domain's own image (also through a symlink or a hard link), an image another process
// holds writable, another disk's copy, unknown/damaged filesystems, LVM, a GPT disk, --map agent on
// a stopped domain, a kill mid-copy, tampered sync records, and --discard into a qcow2 target. Each
// gives a clear error that changed nothing, or a sync that says what it copied and why; the target
// image is checked by e2fsprogs, not by virtcbt's numbers.
import { execa } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { chown, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent, LibvirtTransport } from '../src/guest/index.js';
import { guestDomainXml } from '../src/guestimage/domain.js';
import { syncConsumerName, targetKey } from '../src/sync/index.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, guestFile, tempDir } from './support/backup.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';
import { startStorageDaemon } from './support/storage-daemon.js';
import { fsHashes as fsHashesIn, guestHashes as guestHashesOf } from './support/sync.js';

useCleanup();

const PART_START = 1 * MiB;
const PART_BYTES = 40 * MiB;
const GPT_BYTES = 48 * MiB;

let daemon: TestDaemon;
let guest: LibvirtGuest;
let stopped: LibvirtGuest;
let agent: GuestAgent;
let dir: string;
/**
 * Raw originals of the disks (the guest has qcow2 copies, as tracking needs): vdb random data, vdc
 * GPT with ext4 in partition 1, vdd an LVM physical volume, vde ext4 with a damaged superblock.
 */
let scratch: string;
let gpt: string;
let lvm: string;
let damaged: string;

async function libvirtQemuIds(): Promise<[number, number]> {
  const { stdout } = await execa('id', ['libvirt-qemu']);
  return [Number(/uid=(\d+)/.exec(stdout)![1]), Number(/gid=(\d+)/.exec(stdout)![1])];
}

beforeAll(async () => {
  dir = tempDir('syncbad');
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'syncbad', start: false, scratchFormat: 'qcow2' });
  const ids = await libvirtQemuIds();
  // vdb: the raw scratch disk full of random data (no filesystem).
  scratch = join(dir, 'scratch.raw');
  writeFileSync(scratch, randomBytes(24 * MiB));
  // vdc: GPT, ext4 with a few files in partition 1 at 1 MiB.
  gpt = join(dir, 'gpt.raw');
  const part = join(dir, 'part.raw');
  const files = join(dir, 'gpt-files');
  mkdirSync(files);
  writeFileSync(join(files, 'a.bin'), randomBytes(3 * MiB));
  writeFileSync(join(files, 'b.txt'), 'partitioned\n');
  await execa('mkfs.ext4', ['-q', '-F', '-d', files, part, `${PART_BYTES / 1024}k`]);
  await execa('truncate', ['-s', String(GPT_BYTES), gpt]);
  await execa('sfdisk', ['-q', gpt], { input: `label: gpt\nstart=${PART_START / 512}, size=${PART_BYTES / 512}, type=linux\n` });
  await execa('dd', [`if=${part}`, `of=${gpt}`, 'bs=1M', `seek=${PART_START / MiB}`, 'conv=notrunc,sparse', 'status=none']);
  // vdd: an LVM physical volume's label (lvm2 is not installed: the label is what names it).
  lvm = join(dir, 'lvm.raw');
  const pv = Buffer.alloc(16 * MiB);
  randomBytes(8 * MiB).copy(pv, 4 * MiB);
  pv.write('LABELONE', 512, 'latin1');
  pv.write('LVM2 001', 512 + 24, 'latin1');
  writeFileSync(lvm, pv);
  // vde: ext4 whose superblock says a block is 2^40 bytes (its magic intact: detected as ext4, not readable).
  damaged = join(dir, 'damaged.raw');
  await execa('mkfs.ext4', ['-q', '-F', damaged, '16M']);
  await execa('dd', ['of=' + damaged, 'bs=1', 'seek=1048', 'conv=notrunc', 'status=none'], { input: Buffer.from([30, 0, 0, 0]) });
  const image = (disk: string) => join(guest.dir, `${disk}.qcow2`);
  for (const [disk, raw] of [['vdb', scratch], ['vdc', gpt], ['vdd', lvm], ['vde', damaged]] as const) {
    const qcow = disk === 'vdb' ? guest.disks.scratch : image(disk);
    await rm(qcow, { force: true });
    await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, qcow]);
    await chown(qcow, ...ids);
  }
  await rm(part);
  const xml = guestDomainXml({
    name: guest.name, kernel: join(guest.dir, 'vmlinuz'), initrd: join(guest.dir, 'initrd.gz'), serialLog: guest.serialLog, memoryMiB: 256,
    disks: [
      { target: 'vda', file: guest.disks.data, format: 'qcow2' }, { target: 'vdb', file: guest.disks.scratch, format: 'qcow2' },
      { target: 'vdc', file: image('vdc'), format: 'qcow2' }, { target: 'vdd', file: image('vdd'), format: 'qcow2' }, { target: 'vde', file: image('vde'), format: 'qcow2' },
    ],
  });
  const xmlFile = join(guest.dir, 'domain-syncbad.xml');
  // Redefined with the same uuid: the domain is already defined (not started).
  const uuid = (await virsh(['domuuid', guest.name])).stdout.trim();
  await writeFile(xmlFile, xml.replace('</name>', `</name>\n  <uuid>${uuid}</uuid>`));
  await virsh(['define', xmlFile]);
  stopped = await startLibvirtGuest({ name: 'syncbad-off', start: false, scratchFormat: 'qcow2' });
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['enable', stopped.name]);
  await guest.start();
  agent = new GuestAgent(new LibvirtTransport(guest.name, { uri: 'qemu:///system' }));
  await waitConnected();
}, 300_000);

async function waitConnected(): Promise<void> {
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
}

interface Run { exitCode: number; stderr: string; events: any[]; result?: any }

async function sync(domain: string, disk: string, to: string, extra: string[] = []): Promise<Run> {
  const r = await daemon.cli(['sync', domain, '--disk', disk, '--to', to, '--json', ...extra], { reject: false });
  const events = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const result = events.find((e) => e.type === 'result');
  return { exitCode: r.exitCode, stderr: r.stderr, events, result };
}

async function synced(disk: string, to: string, extra: string[] = []): Promise<any> {
  const r = await sync(guest.name, disk, to, extra);
  expect(r.exitCode, `${r.stderr}\n--- daemon log ---\n${daemon.log().slice(-3000)}`).toBe(0);
  return r.result;
}

async function consumers(domain: string): Promise<string[]> {
  return (await daemon.cliJson(['consumer', 'list', domain])).consumers.map((c: any) => `${c.name}@${c.last}`);
}

async function consumerOf(disk: string, to: string): Promise<string> {
  return syncConsumerName(disk, await targetKey({ kind: 'file', path: to }));
}

function fileState(path: string): { sha: string; mtimeMs: number; size: number } {
  const st = statSync(path);
  return { sha: createHash('sha256').update(readFileSync(path)).digest('hex'), mtimeMs: st.mtimeMs, size: st.size };
}

const fsHashes = (raw: string, what: string) => fsHashesIn(raw, what, dir);

async function toRaw(image: string, format: 'qcow2' | 'raw'): Promise<string> {
  const raw = join(dir, `check-${randomBytes(3).toString('hex')}.raw`);
  await execa('qemu-img', ['convert', '-U', '-f', format, '-O', 'raw', image, raw]);
  onCleanup(() => rm(raw, { force: true }));
  return raw;
}

async function targetHashes(target: string): Promise<Record<string, string>> {
  return fsHashes(await toRaw(target, 'qcow2'), `the target ${target}`);
}

const guestHashes = () => guestHashesOf(agent);

function withoutLostFound(h: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(h).filter(([k]) => !k.startsWith('lost+found')));
}

async function guestSh(script: string): Promise<void> {
  const r = await agent.exec('/bin/sh', ['-c', script], { timeoutMs: 60_000 });
  expect(r.exitCode, r.stderr).toBe(0);
}

describe('virtcbt sync refuses bad targets, changing nothing', () => {
  it('a raw or qcow2 target smaller than the disk: UsageError naming target and sizes, exit 2, target and consumers untouched', async () => {
    const raw = join(dir, 'small.raw');
    writeFileSync(raw, randomBytes(1 * MiB));
    const qcow = join(dir, 'small.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '64M']);
    for (const t of [raw, qcow]) {
      const before = fileState(t);
      const consumersBefore = await consumers(guest.name);
      const r = await sync(guest.name, 'vda', t);
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toContain(t);
      expect(r.stderr).toMatch(/holds \d+ bytes .*less than disk vda's \d+ bytes/);
      expect(r.stderr).toContain(t.endsWith('.raw') ? String(MiB) : String(64 * MiB));
      expect(r.result).toBeUndefined();
      expect(fileState(t)).toEqual(before);
      expect(await consumers(guest.name)).toEqual(consumersBefore);
    }
  });

  it('the domain\'s own image as target, by name, through a symlink or a hard link: refused, nothing written', async () => {
    const link = join(dir, 'own.qcow2');
    await symlink(guest.disks.data, link);
    const hard = join(guest.dir, 'hard.qcow2');
    linkSync(guest.disks.scratch, hard);
    onCleanup(() => rm(hard, { force: true }));
    for (const [disk, t, own] of [['vda', guest.disks.data, 'vda'], ['vda', link, 'vda'], ['vdc', hard, 'vdb']] as const) {
      const consumersBefore = await consumers(guest.name);
      const scratch = fileState(guest.disks.scratch);
      const r = await sync(guest.name, disk, t);
      expect(r.exitCode, r.stderr).toBe(2);
      expect(r.stderr).toContain(`sync target ${t} is the image of disk ${own} of the domain itself`);
      expect(r.events.filter((e) => e.type !== undefined)).toEqual([]);
      expect(await consumers(guest.name)).toEqual(consumersBefore);
      // vdb is not written by the guest: its bytes show nothing was written.
      expect(fileState(guest.disks.scratch)).toEqual(scratch);
    }
  });

  it('the backing file of a stopped domain\'s image (named relative in the overlay): refused as part of the disk\'s chain, nothing written', async () => {
    // vdb of the stopped domain becomes an overlay of a full copy of itself: what the guest reads is unchanged.
    const base = join(stopped.dir, 'scratch-base.qcow2');
    await execa('qemu-img', ['convert', '-q', '-f', 'qcow2', '-O', 'qcow2', stopped.disks.scratch, base]);
    onCleanup(async () => {
      await execa('qemu-img', ['rebase', '-u', '-b', '', stopped.disks.scratch]);
      await rm(base, { force: true });
    });
    await execa('qemu-img', ['rebase', '-u', '-b', 'scratch-base.qcow2', '-F', 'qcow2', stopped.disks.scratch]);
    const link = join(dir, 'base-link.qcow2');
    await symlink(base, link);
    for (const t of [base, link]) {
      const before = fileState(base);
      const consumersBefore = await consumers(stopped.name);
      const r = await sync(stopped.name, 'vdb', t);
      expect(r.exitCode, r.stderr).toBe(2);
      expect(r.stderr).toContain(`sync target ${t} is the backing file of ${stopped.disks.scratch}, in disk vdb's chain`);
      expect(r.result).toBeUndefined();
      expect(fileState(base)).toEqual(before);
      expect(await consumers(stopped.name)).toEqual(consumersBefore);
    }
  });

  it('another (stopped) domain\'s disk: refused naming that domain and disk, nothing written; this disk\'s copy as virtcbt left it may be a standby domain\'s disk', async () => {
    const theirs = stopped.disks.data;
    const before = fileState(theirs);
    const consumersBefore = await consumers(guest.name);
    const r = await sync(guest.name, 'vda', theirs);
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stderr).toContain(`sync target ${theirs} is the image of disk vda of domain ${stopped.name}: a sync would overwrite that domain's disk`);
    expect(r.result).toBeUndefined();
    expect(fileState(theirs)).toEqual(before);
    expect(await consumers(guest.name)).toEqual(consumersBefore);
    // A replica made by virtcbt, then given to a standby domain: still synced to.
    const replica = join(dir, 'standby.qcow2');
    expect((await synced('vda', replica)).seed).toBe(true);
    await virsh(['attach-disk', stopped.name, replica, 'vdz', '--config', '--subdriver', 'qcow2']);
    onCleanup(() => virsh(['detach-disk', stopped.name, 'vdz', '--config']));
    const again = await synced('vda', replica);
    expect(again.seed).toBe(false);
  });

  it('an image qemu-storage-daemon holds writable: a clear error naming the file and that it is in use, nothing written', async () => {
    const t = join(dir, 'held.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', t, '256M']);
    const qsd = await startStorageDaemon({ image: t, format: 'qcow2' });
    onCleanup(() => qsd.stop());
    const before = fileState(t);
    const consumersBefore = await consumers(guest.name);
    const r = await sync(guest.name, 'vda', t);
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stderr).toContain(`sync target ${t} is in use`);
    expect(r.stderr).toMatch(/image lock/);
    expect(r.result).toBeUndefined();
    expect(fileState(t)).toEqual(before);
    expect(await consumers(guest.name)).toEqual(consumersBefore);
  });

  it('--map agent on a stopped domain: a clear UsageError, nothing made or moved', async () => {
    const t = join(dir, 'agent-off.qcow2');
    const consumersBefore = await consumers(stopped.name);
    const r = await sync(stopped.name, 'vda', t, ['--map', 'agent']);
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/guest agent's used map needs the running domain's guest agent.*not running/);
    expect(existsSync(t)).toBe(false);
    expect(await consumers(stopped.name)).toEqual(consumersBefore);
  });
});

describe('virtcbt sync says what it copied and why', () => {
  it('another disk\'s copy is seeded again, saying whose copy it was; the same path for two disks never syncs incrementally', async () => {
    const t = join(dir, 'shared.qcow2');
    expect((await synced('vda', t)).seed).toBe(true);
    const b = await synced('vdb', t);
    expect(b.seed).toBe(true);
    expect(b.reason).toMatch(/holds a copy of disk vda of domain/);
    expect(b.notes.join('\n')).toMatch(/copy of disk vda.*seeded/);
    const a = await synced('vda', t);
    expect(a.seed).toBe(true);
    expect(a.reason).toMatch(/holds a copy of disk vdb of domain/);
    expect(withoutLostFound(await targetHashes(t))).toEqual(await guestHashes());
    // vda again, with nothing in between: its own copy now, incremental.
    expect((await synced('vda', t)).seed).toBe(false);
  });

  it('a disk with no filesystem (random data) and one whose ext4 superblock is damaged: counted as used whole, copied whole, and said why', async () => {
    for (const [disk, file, why] of [['vdb', scratch, /no filesystem virtcbt recognises/], ['vde', damaged, /ext4 not mapped/]] as const) {
      const t = join(dir, `whole-${disk}.qcow2`);
      const r = await synced(disk, t);
      const size = statSync(file).size;
      expect(r.copiedBytes).toBe(size);
      expect(r.usedBytes).toBe(size);
      expect(r.usedMap.regions).toEqual([expect.objectContaining({ offset: 0, length: size, mapped: false, why: expect.stringMatching(why) })]);
      // The copy is the disk, byte for byte.
      expect(fileState(await toRaw(t, 'qcow2')).sha).toBe(fileState(file).sha);
    }
  });

  it('an LVM physical volume counts as used whole, with LVM as the reason', async () => {
    const t = join(dir, 'lvm.qcow2');
    const r = await synced('vdd', t);
    expect(r.copiedBytes).toBe(16 * MiB);
    expect(r.usedMap.regions).toEqual([expect.objectContaining({ offset: 0, length: 16 * MiB, mapped: false, what: expect.stringMatching(/^lvm/), why: expect.stringMatching(/LVM/) })]);
    expect(fileState(await toRaw(t, 'qcow2')).sha).toBe(fileState(lvm).sha);
  });

  it('the unpartitioned ext4 disk maps its filesystem whole-disk; the GPT disk copies the used blocks of its partition plus table and gaps', async () => {
    const a = await synced('vda', join(dir, 'flat.qcow2'));
    expect(a.usedMap.regions).toEqual([expect.objectContaining({ offset: 0, what: 'ext4 (whole disk)', mapped: true })]);
    const t = join(dir, 'gpt.qcow2');
    const r = await synced('vdc', t);
    const regions = r.usedMap.regions;
    expect(regions).toContainEqual(expect.objectContaining({ offset: 0, length: PART_START, what: 'partition table', mapped: false }));
    expect(regions).toContainEqual(expect.objectContaining({ offset: PART_START, length: PART_BYTES, what: 'ext4 (partition 1)', mapped: true }));
    expect(regions).toContainEqual(expect.objectContaining({ offset: PART_START + PART_BYTES, what: 'outside partitions', mapped: false }));
    // Table and gaps (8 MiB) plus the partition's used blocks, far less than the disk.
    expect(r.copiedBytes).toBe(r.usedBytes);
    expect(r.usedBytes).toBeGreaterThan(GPT_BYTES - PART_BYTES + 3 * MiB);
    expect(r.usedBytes).toBeLessThan(GPT_BYTES - PART_BYTES + 12 * MiB);
    // From the target alone: the same partition table, and the filesystem in it clean with the same files.
    const raw = await toRaw(t, 'qcow2');
    const table = async (f: string) => (await execa('sfdisk', ['-d', f])).stdout.replace(/^(label-id|device):.*$/gm, '').replaceAll(f, 'DISK');
    expect(await table(raw)).toEqual(await table(gpt));
    const cut = async (f: string) => {
      const p = join(dir, `part-${randomBytes(3).toString('hex')}.raw`);
      await execa('dd', [`if=${f}`, `of=${p}`, 'bs=1M', `skip=${PART_START / MiB}`, `count=${PART_BYTES / MiB}`, 'status=none']);
      return p;
    };
    expect(await fsHashes(await cut(raw), 'the target\'s partition 1')).toEqual(await fsHashes(await cut(gpt), 'vdc partition 1'));
  });

  it('a tampered sync record (junk, a symlink, a huge file) is never trusted: the target is seeded again with a note', async () => {
    const t = join(dir, 'records.qcow2');
    expect((await synced('vda', t)).seed).toBe(true);
    const rec = join(daemon.stateDir, 'sync', encodeURIComponent(guest.name), `${await consumerOf('vda', t)}.json`);
    expect(existsSync(rec)).toBe(true);
    const good = readFileSync(rec);
    const tamper: [string, () => Promise<void>, RegExp][] = [
      ['junk', async () => writeFileSync(rec, '{"format":"virtcbt-sync/1", junk'), /is not one virtcbt wrote/],
      ['symlink', async () => { const real = join(dir, 'record-elsewhere.json'); writeFileSync(real, good); await rm(rec); symlinkSync(real, rec); }, /is a symlink/],
      ['huge', async () => { await rm(rec); writeFileSync(rec, good); await truncate(rec, 64 * MiB); }, /is a file of \d+ bytes/],
    ];
    for (const [what, spoil, note] of tamper) {
      await guestFile(agent, `record-${what}.bin`, 1 * MiB);
      await spoil();
      const r = await synced('vda', t);
      expect(r.seed, what).toBe(true);
      expect(r.reason, what).toMatch(note);
      expect(r.notes.join('\n'), what).toMatch(/record is not trusted.*seeded/);
      expect(withoutLostFound(await targetHashes(t))).toEqual(await guestHashes());
      // Rewritten by the sync: trusted again.
      expect((await synced('vda', t)).seed, what).toBe(false);
    }
  });
});

describe('virtcbt sync after a kill and with --discard', () => {
  it('a sync killed mid-copy (SIGKILL of virtcbtd): the next sync covers everything since the last good one', async () => {
    const t = join(dir, 'killed.qcow2');
    expect((await synced('vda', t)).seed).toBe(true);
    const good = statSync(t).mtimeMs;
    await guestFile(agent, 'kill-big.bin', 96 * MiB);
    const cli = execa('node', [join(process.cwd(), 'dist/src/cli/main.js'), '--config', daemon.configFile, 'sync', guest.name, '--disk', 'vda', '--to', t, '--json'], { reject: false, buffer: false });
    let copying!: () => void;
    const planned = new Promise<void>((res) => { copying = res; });
    let seen = '';
    cli.stdout!.on('data', (b: Buffer) => {
      seen += b.toString();
      if (/"type":"plan"/.test(seen)) copying();
    });
    await planned;
    // Mid-copy: the target has taken writes, the copy has not ended.
    await pollUntil(() => statSync(t).mtimeMs !== good || /"type":"result"/.test(seen), 'the copy to write the target', { timeoutMs: 60_000, intervalMs: 5 });
    await daemon.kill('SIGKILL');
    const end = await cli;
    expect(end.exitCode).not.toBe(0);
    expect(seen).not.toMatch(/"type":"result"/);
    await daemon.start();
    await waitConnected();
    await guestSh('rm /mnt/data/kill-big.bin && sync');
    await guestFile(agent, 'kill-after.bin', 4 * MiB);
    const r = await synced('vda', t);
    // Half-written since the last good sync by the killed one (its marker says so): still incremental,
    // everything since the last good sync copied again.
    expect(r.seed, r.reason).toBe(false);
    expect(r.notes.join('\n')).toMatch(/ended with its virtcbtd|interrupted after it began writing/);
    expect(withoutLostFound(await targetHashes(t))).toEqual(await guestHashes());
  });

  it('--discard into a qcow2 target: the deleted file\'s blocks are unallocated in the target, whose filesystem stays clean', async () => {
    const t = join(dir, 'discard.qcow2');
    expect((await synced('vda', t)).seed).toBe(true);
    await guestFile(agent, 'discard-me.bin', 24 * MiB);
    await synced('vda', t);
    // Where the file lies, read from the target itself.
    const raw = await toRaw(t, 'qcow2');
    const bs = Number(/Block size:\s+(\d+)/.exec((await execa('dumpe2fs', ['-h', raw])).stdout)![1]);
    const blocks = (await execa('debugfs', ['-R', 'blocks /discard-me.bin', raw])).stdout.trim().split(/\s+/).map(Number);
    expect(blocks.length * bs).toBe(24 * MiB);
    await guestSh('rm /mnt/data/discard-me.bin && sync');
    const r = await synced('vda', t, ['--discard']);
    expect(r.discardedBytes).toBeGreaterThanOrEqual(24 * MiB);
    const map: { start: number; length: number; data: boolean; zero: boolean }[] = JSON.parse((await execa('qemu-img', ['map', '-U', '--output=json', t])).stdout);
    const stillData = blocks.filter((b) => map.some((m) => m.data && !m.zero && m.start <= b * bs && b * bs < m.start + m.length));
    expect(stillData).toEqual([]);
    expect(withoutLostFound(await targetHashes(t))).toEqual(await guestHashes());
  });
});
