// Disk-copy sync beside the other ways to bring a second copy of a disk up to date, on one
// libvirt domain in one run. Per round the guest writes 1 GiB of files on its ext4 disk (128 files
// of 8 MiB from /dev/urandom) and deletes 600 MiB of them (75 files, every other one or so), with no
// TRIM; then each way brings its own copy up to date and is timed, and the bytes it moved counted:
//   (a) virtcbt sync (incremental: its target was seeded before the first round);
//   (b) dirty-only: what a dirty-bitmap tool ships: every block modified since its last pass,
//       without the used-map intersection. virtcbt's own pass of a consumer of its own
//       (`pass begin --export`: the same snapshot, freeze and change log) whose changed extents
//       are copied by virtcbt's copy engine from the pass export into a qcow2 copy, then the pass
//       committed: the same machinery as (a), minus the used map;
//   (c) `qemu-img convert` of the whole image (every allocated cluster) into a fresh qcow2;
//   (d) `rsync --inplace --no-whole-file` of the raw image onto the raw copy of the round before
//       (bytes moved: rsync's "Literal data"; both raw copies made by `qemu-img convert`, untimed).
// (a) and (b) run with the guest running (their own freeze); (c) and (d) with it paused (a
// qcow2 in use cannot be read consistently otherwise). Then a sync with nothing changed, several
// times. Medians over the rounds, ratios to virtcbt.
//
// --prior-gib N (default 4) puts N GiB of files on the data disk before the guest starts (written
// on the host by mkfs.ext4 -d, seeded to virtcbt's target before round 1), as a guest's disk
// already holds its system and data: the whole-image ways (qemu-img convert, rsync) copy or read
// them every time, the change-based ones never again. 0 is a disk that holds only the rounds' files
// (the image is then the round's change: qemu-img convert copies ~1 GiB from the page cache).
//   node dist/bench/sync-vs-dirty-qemuimg-rsync.js [--rounds N] [--empty-rounds N] [--prior-gib N] [--no-ceiling] [--json FILE]
// (defaults: 2 rounds, 7 empty syncs, 4 GiB prior; --no-ceiling skips round 1's copy-path ceiling)
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, statfs, truncate, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdEndpoint, NullEndpoint, copyExtents, dataExtents, openImageEndpoint, wholeDisk } from '../src/copy/index.js';
import { QEMU_NBD_MALLOC } from '../src/copy/qemu-nbd.js';
import { CONTEXT_BASE_ALLOCATION } from '../src/nbd/index.js';
import { IMAGES_BASE, createLabDomain, startLabDaemon, virsh, type LabDaemon, type LabDomain } from '../src/demo/lab.js';
import { fromPairs, totalBytes } from '../src/extent/index.js';
import { DATA_LABEL } from '../src/guestimage/index.js';
import { childEnv, envNote } from './nbd-support.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The data disk: room for three rounds' kept files (3 × 424 MiB) plus one round's 1 GiB, and the prior data (--prior-gib). */
const ROUNDS_BYTES = 3 * GiB;
const FILE_MIB = 8;
const FILES = 128;
const DELETE = 75;

type Way = 'virtcbt sync' | 'dirty-only' | 'qemu-img convert' | 'rsync';
const WAYS: Way[] = ['virtcbt sync', 'dirty-only', 'qemu-img convert', 'rsync'];

interface Sample {
  way: Way;
  round: number;
  wallS: number;
  bytes: number;
  /** What else the way needed that is not in wallS (rsync: the raw copy of the image). */
  extraS?: number;
  /**
   * Wall time until the copy is on disk: qemu-img convert (its output cache mode is unsafe by
   * default) and rsync do not fsync what they wrote, virtcbt's engine flushes the target before it
   * moves the consumer: their time with an fsync of the output file (`sync FILE`) after it.
   */
  durableS?: number;
}

interface SyncFigures {
  modifiedBytes: number;
  modifiedUsedBytes: number;
  skippedFreeBytes: number;
  copiedBytes: number;
  usedBytes: number;
  elapsedMs: number;
  freezeWindowMs: number | null;
  usedMapMs: number;
  phasesMs?: Record<string, number>;
}

const loadAverage = () => loadavg().map((x) => x.toFixed(2)).join(' ');
/** MemAvailable and MemFree from /proc/meminfo, as "N GiB available, N GiB free". */
const memAvailable = () => {
  const info = readFileSync('/proc/meminfo', 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(info)?.[1] ?? NaN);
  return `${(kib('MemAvailable') / 1024 / 1024).toFixed(1)} GiB available, ${(kib('MemFree') / 1024 / 1024).toFixed(1)} GiB free`;
};
const med = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const argNum = (name: string, dflt: number) => (process.argv.includes(name) ? Number(process.argv[process.argv.indexOf(name) + 1]) : dflt);
const seconds = async (fn: () => Promise<unknown>) => {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
};

/**
 * The prior data: `bytes` of files under prior/, a system's mix by count and size: a third of the
 * bytes in files of 4–256 KiB, the rest in files of 1–32 MiB, in directories of 200 files; contents
 * random (slices of one random pool: nothing is zero, nothing compresses).
 */
async function priorFiles(dir: string, bytes: number): Promise<{ files: number; bytes: number }> {
  const pool = randomBytes(64 * MiB);
  let written = 0;
  let files = 0;
  // xorshift32: the same sizes and slices every run.
  let x = 2463534242;
  const rand = () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 2 ** 32;
  };
  while (written < bytes) {
    const small = written < bytes / 3;
    const size = Math.min(bytes - written, small ? Math.floor(4096 + rand() * 252 * 1024) : Math.floor(MiB + rand() * 31 * MiB));
    const sub = join(dir, 'prior', `d${Math.floor(files / 200)}`);
    if (files % 200 === 0) await mkdir(sub, { recursive: true });
    const at = Math.floor(rand() * (pool.length - Math.min(size, pool.length)));
    const parts: Buffer[] = [];
    for (let left = size; left > 0; left -= pool.length) parts.push(pool.subarray(at, at + Math.min(left, pool.length - at)));
    await writeFile(join(sub, `f${files}.bin`), Buffer.concat(parts).subarray(0, size));
    written += size;
    files++;
  }
  return { files, bytes: written };
}

/**
 * A fresh ext4 data disk bigger than the built guest's, labelled so that the guest's /init mounts
 * it on /mnt/data, holding `prior` bytes of files already; inode tables and journal written now (no
 * lazy init in the guest, whose background writes would count as modified blocks).
 */
async function bigDataDisk(file: string, work: string, prior: number): Promise<{ files: number; bytes: number }> {
  const raw = join(work, 'data.raw');
  const tree = join(work, 'tree');
  await mkdir(tree, { recursive: true });
  const made = prior > 0 ? await priorFiles(tree, prior) : { files: 0, bytes: 0 };
  await writeFile(raw, '');
  await truncate(raw, diskBytes(prior));
  await execa('mkfs.ext4', ['-q', '-F', '-b', '4096', '-L', DATA_LABEL, '-E', 'root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0', '-d', tree, raw]);
  await rm(tree, { recursive: true });
  await rm(file, { force: true });
  await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
  await rm(raw);
  await execa('chown', ['libvirt-qemu:libvirt-qemu', file]);
  return made;
}

/** The data disk's size: the rounds' room plus the prior data and a tenth more for ext4's own. */
const diskBytes = (prior: number) => ROUNDS_BYTES + Math.ceil((prior * 1.1) / GiB) * GiB;

/** Files to delete: DELETE of FILES, spread evenly, so the freed space is scattered among kept files. */
const deleted = (i: number) => Math.floor(((i + 1) * DELETE) / FILES) > Math.floor((i * DELETE) / FILES);

async function guestRound(lab: LabDomain, round: number): Promise<void> {
  const dir = `/mnt/data/r${round}`;
  const names = Array.from({ length: FILES }, (_, i) => `${dir}/f${i}.bin`);
  await lab.exec('/bin/sh', ['-c', [`mkdir -p ${dir}`, ...names.map((n) => `dd if=/dev/urandom of=${n} bs=1M count=${FILE_MIB} 2>/dev/null || exit 1`), 'sync'].join('\n')], 900_000);
  await lab.exec('/bin/sh', ['-c', `rm ${names.filter((_, i) => deleted(i)).join(' ')} && sync`]);
}

/** Bytes of the image's allocated clusters (what qemu-img convert reads), from qemu-img map. */
async function allocatedBytes(image: string): Promise<number> {
  const r = await execa('qemu-img', ['map', '-U', '--output=json', '-f', 'qcow2', image]);
  return (JSON.parse(r.stdout) as { length: number; data: boolean }[]).filter((e) => e.data).reduce((s, e) => s + e.length, 0);
}

/**
 * `virtcbt sync --json`, timed as a whole; each JSON line is stamped when it arrives, so that the
 * phases show from outside virtcbtd: start → snapshot (freeze, transaction) → plan (export, target
 * opened, used map read) → last progress (the copy) → result (flush, target closed, record, commit,
 * snapshot released).
 */
async function virtcbtSync(d: LabDaemon, domain: string, target: string): Promise<{ wallS: number; r: SyncFigures & { seed: boolean }; phasesMs: Record<string, number> }> {
  await execa('sync');
  const t0 = performance.now();
  const child = execa(process.execPath, [join(process.cwd(), 'dist/src/cli/main.js'), '--config', d.configFile, 'sync', domain, '--disk', 'vda', '--to', target, '--json'], { env: childEnv, extendEnv: false });
  const seen: Record<string, number> = {};
  let partial = '';
  child.stdout!.on('data', (b: Buffer) => {
    const lines = (partial + b.toString()).split('\n');
    partial = lines.pop()!;
    for (const l of lines) if (l.trim()) seen[(JSON.parse(l) as { type: string }).type] = performance.now() - t0;
  });
  const out = await child;
  const wallS = (performance.now() - t0) / 1000;
  const res = JSON.parse(out.stdout.trim().split('\n').pop()!);
  const at = (k: string, dflt: number) => seen[k] ?? dflt;
  const end = wallS * 1000;
  const phasesMs = {
    'to start': at('start', 0),
    snapshot: at('snapshot', 0) - at('start', 0),
    'export, target, used map': at('plan', 0) - at('snapshot', 0),
    copy: at('progress', at('plan', 0)) - at('plan', 0),
    'flush, record, commit, release': at('result', end) - at('progress', at('plan', 0)),
    'after the result': end - at('result', end),
  };
  return { wallS, r: { ...res, usedMapMs: res.usedMap.elapsedMs }, phasesMs };
}

/** (b): the consumer's pass, its changed extents of vda copied whole from the pass export, committed. */
async function dirtyOnly(d: LabDaemon, domain: string, consumer: string, target: string, runDir: string): Promise<{ wallS: number; bytes: number }> {
  await execa('sync');
  const cli = (args: string[]) => execa(process.execPath, [join(process.cwd(), 'dist/src/cli/main.js'), '--config', d.configFile, ...args], { env: childEnv, extendEnv: false });
  const t0 = performance.now();
  const p = JSON.parse((await cli(['pass', 'begin', domain, '--consumer', consumer, '--export', '--json'])).stdout);
  const extents = fromPairs((p.disks as { target: string; extents: [number, number][] }[]).find((x) => x.target === 'vda')!.extents);
  const uri = (p.exports as { target: string; uri: string }[]).find((e) => e.target === 'vda')!.uri;
  const src = await NbdEndpoint.open(uri);
  const dst = await openImageEndpoint(target, { runDir, writable: true, format: 'qcow2' });
  try {
    await copyExtents(src, dst.endpoint, dataExtents(extents));
    await dst.endpoint.flush();
  } finally {
    await dst.close();
    await src.close();
  }
  await cli(['pass', 'commit', domain, '--consumer', consumer, '--pass', String(p.pass)]);
  return { wallS: (performance.now() - t0) / 1000, bytes: totalBytes(extents) };
}

interface Ceiling { what: string; bytes: number; wallS: number }

/**
 * The copy path's ceiling, round 1 (untimed for the four ways): a pass export of a consumer of
 * its own (the same kind of export a sync reads: QEMU's NBD server in the TCG QEMU process), every
 * allocated block of vda read whole, as nbdcopy reads it: by nbdcopy and by virtcbt's copy engine,
 * to null: (the source's rate) and into a fresh qcow2 through qemu-nbd with virtcbt's flags and
 * flushed (nbdcopy's qemu-nbd with and without virtcbt's malloc settings). The pass is aborted.
 */
async function ceiling(d: LabDaemon, domain: string, consumer: string, work: string, runDir: string, size: number): Promise<Ceiling[]> {
  const cli = (args: string[]) => execa(process.execPath, [join(process.cwd(), 'dist/src/cli/main.js'), '--config', d.configFile, ...args], { env: childEnv, extendEnv: false });
  const p = JSON.parse((await cli(['pass', 'begin', domain, '--consumer', consumer, '--export', '--json'])).stdout);
  const uri = (p.exports as { target: string; uri: string }[]).find((e) => e.target === 'vda')!.uri;
  const out: Ceiling[] = [];
  const qcow = join(work, 'ceiling.qcow2');
  const fresh = async () => {
    await rm(qcow, { force: true });
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, String(size)]);
  };
  const ours = async (what: string, toQcow2: boolean) => {
    if (toQcow2) await rm(qcow, { force: true });
    await execa('sync');
    const t0 = performance.now();
    const src = await NbdEndpoint.open(uri, { metaContexts: [CONTEXT_BASE_ALLOCATION] });
    const dst = toQcow2 ? await openImageEndpoint(qcow, { runDir, writable: true, format: 'qcow2', create: { size } }) : undefined;
    try {
      const r = await copyExtents(src, dst?.endpoint ?? new NullEndpoint(src.size), wholeDisk(src));
      await dst?.endpoint.flush();
      await dst?.close();
      out.push({ what, bytes: r.read, wallS: (performance.now() - t0) / 1000 });
    } finally {
      await src.close();
    }
  };
  const nbdcopy = async (what: string, to: string[], env?: Record<string, string>) => {
    if (to.length > 1) await fresh();
    await execa('sync');
    const t0 = performance.now();
    await execa('nbdcopy', ['--flush', uri, ...to], { env: { ...childEnv, ...env }, extendEnv: false });
    out.push({ what, bytes: NaN, wallS: (performance.now() - t0) / 1000 });
  };
  const qemuNbd = ['--', '[', 'qemu-nbd', '-f', 'qcow2', '--cache=writeback', '--aio=threads', '--discard=unmap', '--detect-zeroes=unmap', qcow, ']'];
  try {
    await nbdcopy('nbdcopy → null:', ['null:']);
    await ours('virtcbt engine → null:', false);
    await nbdcopy('nbdcopy → qcow2 via qemu-nbd, glibc malloc defaults', qemuNbd);
    await nbdcopy('nbdcopy → qcow2 via qemu-nbd, virtcbt\'s malloc settings', qemuNbd, QEMU_NBD_MALLOC);
    await ours('virtcbt engine → qcow2 via qemu-nbd (as a sync)', true);
  } finally {
    await cli(['pass', 'abort', domain, '--consumer', consumer, '--pass', String(p.pass)]);
    await rm(qcow, { force: true });
  }
  // nbdcopy says nothing of its bytes: every allocated byte, as the engine's wholeDisk read.
  const all = out.find((c) => c.what.startsWith('virtcbt engine → null'))!.bytes;
  return out.map((c) => ({ ...c, bytes: Number.isNaN(c.bytes) ? all : c.bytes }));
}

/**
 * Refuses to start without room for the run: the images grow by up to 1 GiB a round on top of the
 * prior data, and the work directory holds about five copies of that at once (the two copies
 * virtcbt and dirty-only keep, the raw images rsync compares, qemu-img convert's output), the
 * libvirt image directory the guest's disk.
 */
async function ensureSpace(work: string, prior: number, rounds: number): Promise<void> {
  const image = prior + (rounds + 1) * GiB;
  const need = new Map<number, { bytes: number; where: string[] }>();
  for (const [dir, bytes] of [[work, 5 * image], [IMAGES_BASE, image]] as const) {
    const dev = (await stat(dir)).dev;
    const e = need.get(dev) ?? { bytes: 0, where: [] };
    need.set(dev, { bytes: e.bytes + bytes, where: [...e.where, dir] });
  }
  for (const { bytes, where } of need.values()) {
    const fs = await statfs(where[0]!);
    const free = fs.bavail * fs.bsize;
    if (free < bytes) {
      throw new Error(`the bench needs about ${(bytes / GiB).toFixed(0)} GiB free in ${where.join(' and ')} (--prior-gib ${prior / GiB}, --rounds ${rounds}); ` +
        `${(free / GiB).toFixed(1)} GiB are: give fewer rounds or less prior data (--prior-gib), or set TMPDIR to a bigger filesystem`);
    }
  }
}

async function main(): Promise<void> {
  const rounds = argNum('--rounds', 2);
  const emptyRounds = argNum('--empty-rounds', 7);
  const prior = argNum('--prior-gib', 4) * GiB;
  const withCeiling = !process.argv.includes('--no-ceiling');
  const jsonOut = process.argv.includes('--json') ? process.argv[process.argv.indexOf('--json') + 1] : undefined;
  const loadStart = loadAverage();
  await mkdir(IMAGES_BASE, { recursive: true });
  await ensureSpace(tmpdir(), prior, rounds);
  const work = await mkdtemp(join(tmpdir(), 'virtcbt-bench-sync-'));
  const name = `virtcbt-bench-sync-${process.pid}`;
  let lab: LabDomain | undefined;
  let daemon: LabDaemon | undefined;
  const samples: Sample[] = [];
  const syncs: SyncFigures[] = [];
  const empty: { wallS: number; elapsedMs: number; copiedBytes: number; phasesMs: Record<string, number> }[] = [];
  let ceilings: Ceiling[] = [];
  let priorMade = { files: 0, bytes: 0 };
  let memBeforeEmpty = '';
  try {
    lab = await createLabDomain({ name, memoryMiB: 512 });
    const vda = lab.disks[0]!.file;
    const tp = performance.now();
    priorMade = await bigDataDisk(vda, work, prior);
    if (prior > 0) console.error(`prior data: ${priorMade.files} files, ${(priorMade.bytes / GiB).toFixed(2)} GiB, on the data disk in ${((performance.now() - tp) / 1000).toFixed(0)} s`);
    daemon = await startLabDaemon(join(work, 'daemon'));
    await daemon.cli(['enable', name]);
    await daemon.cli(['consumer', 'add', name, 'dirty']);
    await daemon.cli(['consumer', 'add', name, 'ceiling']);
    await lab.start();
    const targets = { sync: join(work, 'sync.qcow2'), dirty: join(work, 'dirty.qcow2'), prevRaw: join(work, 'prev.raw'), newRaw: join(work, 'new.raw') };
    const runDir = join(work, 'run');
    await mkdir(runDir, { recursive: true });

    // Starting points (untimed): the dirty-only consumer placed, virtcbt's target seeded, the
    // dirty-only target a copy of it (the guest is idle: the same content), the raw copy for rsync.
    const first = JSON.parse((await daemon.cli(['pass', 'begin', name, '--consumer', 'dirty', '--json'])).stdout);
    await daemon.cli(['pass', 'commit', name, '--consumer', 'dirty', '--pass', String(first.pass)]);
    const seed = await virtcbtSync(daemon, name, targets.sync);
    if (!seed.r.seed) throw new Error('the first sync did not seed its target');
    await execa('cp', ['--sparse=always', targets.sync, targets.dirty]);
    await virsh(['suspend', name]);
    await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', vda, targets.prevRaw]);
    await virsh(['resume', name]);

    for (let round = 1; round <= rounds; round++) {
      const tw = performance.now();
      await guestRound(lab, round);
      console.error(`round ${round}: the guest wrote and deleted its files in ${((performance.now() - tw) / 1000).toFixed(0)} s`);
      // (a) and (b) take turns going first.
      const live = [
        async () => {
          const s = await virtcbtSync(daemon!, name, targets.sync);
          if (s.r.seed) throw new Error(`round ${round}: virtcbt seeded its target again`);
          syncs.push({ ...s.r, phasesMs: s.phasesMs });
          samples.push({ way: 'virtcbt sync', round, wallS: s.wallS, bytes: s.r.copiedBytes });
        },
        async () => samples.push({ way: 'dirty-only', round, ...(await dirtyOnly(daemon!, name, 'dirty', targets.dirty, runDir)) }),
      ];
      for (const run of round % 2 ? live : live.reverse()) await run();
      if (round === 1 && withCeiling) ceilings = await ceiling(daemon, name, 'ceiling', work, runDir, diskBytes(prior));

      await virsh(['suspend', name]);
      try {
        const fresh = join(work, `convert-${round}.qcow2`);
        const bytes = await allocatedBytes(vda);
        await execa('sync');
        const t0 = performance.now();
        const wallS = await seconds(() => execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', vda, fresh]));
        await execa('sync', [fresh]);
        samples.push({ way: 'qemu-img convert', round, wallS, bytes, durableS: (performance.now() - t0) / 1000 });
        await rm(fresh);
        const extraS = await seconds(() => execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', vda, targets.newRaw]));
        await execa('sync');
        let stats = '';
        const t0r = performance.now();
        const rs = await seconds(async () => {
          stats = (await execa('rsync', ['--inplace', '--no-whole-file', '--stats', targets.newRaw, targets.prevRaw])).stdout;
        });
        await execa('sync', [targets.prevRaw]);
        const rsDurable = (performance.now() - t0r) / 1000;
        const literal = /Literal data: ([\d,]+) bytes/.exec(stats);
        if (!literal) throw new Error(`no "Literal data" in rsync's --stats:\n${stats}`);
        samples.push({ way: 'rsync', round, wallS: rs, bytes: Number(literal[1]!.replaceAll(',', '')), extraS, durableS: rsDurable });
        await rm(targets.newRaw);
        console.error(`round ${round}: ${samples.filter((x) => x.round === round).map((x) => `${x.way} ${x.wallS.toFixed(2)} s ${(x.bytes / MiB).toFixed(0)} MiB`).join(', ')}`);
      } finally {
        await virsh(['resume', name]);
      }
    }

    // The other ways' copies are done with: gone before the empty syncs, which otherwise run with
    // the page cache full of them (several GiB each), every new process's pages then reclaimed first.
    const sizes = { sync: statSync(targets.sync).blocks * 512, dirty: statSync(targets.dirty).blocks * 512 };
    await rm(targets.dirty, { force: true });
    await rm(targets.prevRaw, { force: true });
    await execa('sync');
    memBeforeEmpty = memAvailable();
    for (let i = 0; i < emptyRounds; i++) {
      const s = await virtcbtSync(daemon, name, targets.sync);
      empty.push({ wallS: s.wallS, elapsedMs: s.r.elapsedMs, copiedBytes: s.r.copiedBytes, phasesMs: s.phasesMs });
    }
    const report = { when: new Date().toISOString(), load: { start: loadStart, end: loadAverage() }, ceilings, rounds, diskBytes: diskBytes(prior), prior: priorMade, samples, syncs, empty, memBeforeEmpty, sizes };
    if (jsonOut) writeFileSync(jsonOut, JSON.stringify(report, null, 2));
    print(report);
  } finally {
    await daemon?.stop();
    await lab?.remove();
    await rm(work, { recursive: true, force: true });
  }
}

function print(r: { load: { start: string; end: string }; memBeforeEmpty: string; diskBytes: number; prior: { files: number; bytes: number }; ceilings: Ceiling[]; rounds: number; samples: Sample[]; syncs: SyncFigures[]; empty: { wallS: number; elapsedMs: number; copiedBytes: number; phasesMs: Record<string, number> }[] }): void {
  const mib = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
  const kept = (FILES - DELETE) * FILE_MIB * MiB;
  console.log(`CLI environment: ${envNote()}; load average at the start ${r.load.start}, at the end ${r.load.end} (1, 5, 15 min)`);
  console.log(`per round: ${FILES * FILE_MIB} MiB written in ${FILES} files, ${DELETE * FILE_MIB} MiB of them deleted, ${mib(kept)} kept; ${r.rounds} rounds; ${r.diskBytes / GiB} GiB ext4 qcow2 ` +
    `holding ${r.prior.files ? `${(r.prior.bytes / GiB).toFixed(2)} GiB in ${r.prior.files} files before round 1 (--prior-gib)` : 'nothing before round 1'}, TCG guest\n`);
  const base = r.samples.filter((s) => s.way === 'virtcbt sync');
  // Ratios per round (the image grows every round: qemu-img convert's share with it), then their median.
  const ratio = (w: Way, pick: (x: Sample) => number) => med(Array.from({ length: r.rounds }, (_, i) => {
    const a = base.find((x) => x.round === i + 1)!;
    const b = r.samples.find((x) => x.way === w && x.round === i + 1)!;
    return pick(b) / pick(a);
  }));
  if (r.rounds === 0) {
    // --rounds 0: only the empty syncs were measured; the four ways and their targets were not.
    console.log('no round: the four ways, the bytes target and the least-wall-time target were not measured');
  }
  if (r.rounds > 0) printRounds(r, base, ratio, mib, kept);
  printEmpty(r, mib);
}

function printRounds(r: Parameters<typeof print>[0], base: Sample[], ratio: (w: Way, pick: (x: Sample) => number) => number, mib: (b: number) => string, kept: number): void {
  console.log('| way | bytes moved (median) | × virtcbt | wall time (median) | × virtcbt | until on disk (fsync) | × virtcbt | per round: wall / bytes |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  for (const w of WAYS) {
    const xs = r.samples.filter((s) => s.way === w);
    const wall = med(xs.map((s) => s.wallS));
    const bytes = med(xs.map((s) => s.bytes));
    const durable = med(xs.map((s) => s.durableS ?? s.wallS));
    const extra = xs.some((s) => s.extraS !== undefined) ? ` (+ ${med(xs.map((s) => s.extraS ?? 0)).toFixed(2)} s for the raw copy)` : '';
    console.log(`| ${w} | ${mib(bytes)} | ${ratio(w, (x) => x.bytes).toFixed(2)}x | ${wall.toFixed(2)} s${extra} | ${ratio(w, (x) => x.wallS).toFixed(2)}x | ` +
      `${durable.toFixed(2)} s | ${ratio(w, (x) => x.durableS ?? x.wallS).toFixed(2)}x | ${xs.map((s) => `${s.wallS.toFixed(2)} s / ${mib(s.bytes)}`).join('; ')} |`);
  }
  const f = (k: keyof SyncFigures) => med(r.syncs.map((s) => (s[k] ?? NaN) as number));
  console.log(`\nvirtcbt sync, medians: modified ${mib(f('modifiedBytes'))}, modified and used ${mib(f('modifiedUsedBytes'))}, copied ${mib(f('copiedBytes'))} ` +
    `(${(f('copiedBytes') / f('modifiedUsedBytes')).toFixed(3)}x modified ∩ used; ${(f('copiedBytes') / kept).toFixed(3)}x the ${mib(kept)} of kept file data, the rest filesystem metadata and journal), ` +
    `skipped because free ${mib(f('skippedFreeBytes'))}; in virtcbtd ${f('elapsedMs').toFixed(0)} ms, of which used map ${f('usedMapMs').toFixed(0)} ms; freeze window ${f('freezeWindowMs').toFixed(0)} ms; ` +
    `phases seen from the CLI's output (medians, ms): ${Object.keys(r.syncs[0]?.phasesMs ?? {}).map((k) => `${k} ${med(r.syncs.map((x) => x.phasesMs![k]!)).toFixed(0)}`).join(', ')}`);
  // The targets, said plainly: per round, virtcbt against the fastest of the other three, by wall
  // time and by time until the copy is on disk (virtcbt flushes its target before it records the
  // sync; qemu-img convert and rsync get an fsync of their output for that column).
  for (const [what, pick] of [['wall time', (x: Sample) => x.wallS], ['until on disk', (x: Sample) => x.durableS ?? x.wallS]] as const) {
    const rounds = Array.from({ length: r.rounds }, (_, i) => {
      const mine = base.find((x) => x.round === i + 1)!;
      const others = r.samples.filter((x) => x.round === i + 1 && x.way !== 'virtcbt sync').sort((a, b) => pick(a) - pick(b));
      return { round: i + 1, mine: pick(mine), best: others[0]! };
    });
    const met = rounds.filter((x) => x.mine <= pick(x.best)).length;
    console.log(`least ${what} of the four: ${met === r.rounds ? 'met' : 'NOT met'} (virtcbt fastest in ${met} of ${r.rounds} rounds: ` +
      rounds.map((x) => `round ${x.round}: virtcbt ${x.mine.toFixed(2)} s, fastest other ${x.best.way} ${pick(x.best).toFixed(2)} s = ${(pick(x.best) / x.mine).toFixed(2)}x virtcbt`).join('; ') + ')');
  }
  if (r.ceilings.length > 0) {
    console.log(`copy path's ceiling, round 1 (every allocated block of vda from a pass export of QEMU's NBD server; flushed): ` +
      r.ceilings.map((c) => `${c.what} ${c.wallS.toFixed(2)} s (${(c.bytes / 1e6 / c.wallS).toFixed(0)} MB/s)`).join('; ') + ` of ${mib(r.ceilings[0]!.bytes)}`);
  }
}

function printEmpty(r: Parameters<typeof print>[0], mib: (b: number) => string): void {
  const e = r.empty;
  if (e.length === 0) return;
  console.log(`before the empty syncs (the other ways' copies removed, sync run): memory ${r.memBeforeEmpty}`);
  console.log(`sync with nothing changed under 0.3 s: ${med(e.map((x) => x.wallS)) < 0.3 ? 'met' : 'NOT met'} (median of ${e.length} runs)`);
  console.log(`sync with nothing changed, ${e.length} runs: wall median ${(med(e.map((x) => x.wallS)) * 1000).toFixed(0)} ms ` +
    `(${Math.min(...e.map((x) => x.wallS * 1000)).toFixed(0)}–${Math.max(...e.map((x) => x.wallS * 1000)).toFixed(0)}; target < 300), ` +
    `in virtcbtd ${med(e.map((x) => x.elapsedMs)).toFixed(0)} ms, copied ${mib(med(e.map((x) => x.copiedBytes)))}; ` +
    `phases seen from the CLI's output (medians, ms): ${Object.keys(e[0]?.phasesMs ?? {}).map((k) => `${k} ${med(e.map((x) => x.phasesMs[k]!)).toFixed(0)}`).join(', ')}`);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
