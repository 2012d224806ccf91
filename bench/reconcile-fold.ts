// Benchmark of the reconciler folding a dirty bitmap through QEMU (qemu-storage-daemon, 1 TiB sparse qcow2, 64 KiB
// blocks): rotateAndFold time split into the bitmap read over NBD and the SQLite fold, beside `nbdinfo --map` reading
// the same bitmap in the same run; then the `changes` query time and the change log's size on disk.
// Run: npx tsc -p tsconfig.json && node dist/bench/reconcile-fold.js [--runs N] [--cases 1c,1s,10c,10s,100c,100s] [--json]
import { execa } from 'execa';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ChangeLog } from '../src/changelog/index.js';
import { NbdClient } from '../src/nbd/index.js';
import { blockDirtyBitmapAdd, blockDirtyBitmapMerge, blockDirtyBitmapRemove, blockExportAddNbd } from '../src/qmp/index.js';
import { withStorageDaemon, type QsdSession } from '../src/qsd/index.js';
import { readDirtyExtents, Reconciler, storageDaemonDisks, type TrackedDisk } from '../src/reconciler/index.js';
import { addReadOnlyExport, ensureNbdServer, nbdUnixUri, removeExport } from '../src/snapshot/index.js';

const TiB = 2 ** 40;
const BLOCK = 64 * 1024;
const BLOCKS = TiB / BLOCK;
/** Clustered writes come in 1 MiB runs: 16 blocks. */
const CLUSTER_BLOCKS = (1024 * 1024) / BLOCK;
/** Writes kept in flight while dirtying: enough to keep qemu-storage-daemon busy, bounded so memory stays flat. */
const WRITE_WINDOW = 64;
/** `changes` queries per fold run. */
const QUERY_RUNS = 5;
const DOMAIN = 'bench';
const TARGET = 'vda';

type Pattern = 'clustered' | 'scattered';

export interface ReconcileBenchRow {
  case: string;
  dirtyPercent: number;
  pattern: Pattern;
  dirtyBlocks: number;
  /** Dirty extents as the reader returns them (merged runs). */
  extents: number;
  /** Writes sent to dirty the bitmap, and how long they took (not part of any figure below). */
  writes: number;
  dirtyS: number;
  /** Median wall time of `nbdinfo --map=qemu:dirty-bitmap:NAME URI >/dev/null`, whole process. */
  nbdinfoMs: number;
  /** Median of readDirtyExtents() alone on the same export (connect, walk, close), in this process. */
  ourReadStandaloneMs: number;
  /** Inside rotateAndFold: the readDirty callback (connect, BLOCK_STATUS walk, close). */
  ourReadMs: number;
  /** Inside rotateAndFold: ChangeLog.fold (SQLite). */
  sqliteFoldMs: number;
  /** The whole rotateAndFold: recover checks, QMP transaction, export, read, fold, export and bitmap removal. */
  foldMs: number;
  /** foldMs less the read and the SQLite fold: QMP round trips (query, transaction, export add/remove, bitmap remove). */
  restMs: number;
  foldVsNbdinfo: number;
  changesMs: number;
  dbBytes: number;
  bytesPerChangedBlock: number;
  foldRuns: number;
  /** Load averages (1, 5, 15 min) when the case ended: the host may be running other work. */
  load: string;
}

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The dirty set, as merged [offset, length] runs in bytes: 1 MiB units or single blocks, each dirty with `percent`. */
function dirtySet(percent: number, pattern: Pattern, seed: number): { extents: [number, number][]; blocks: number } {
  if (percent >= 100) return { extents: [[0, TiB]], blocks: BLOCKS };
  const r = rng(seed);
  const p = percent / 100;
  const unit = pattern === 'clustered' ? CLUSTER_BLOCKS : 1;
  const extents: [number, number][] = [];
  let blocks = 0;
  let runStart = -1;
  for (let u = 0; u < BLOCKS / unit; u++) {
    if (r() < p) {
      blocks += unit;
      if (runStart < 0) runStart = u;
    } else if (runStart >= 0) {
      extents.push([runStart * unit * BLOCK, (u - runStart) * unit * BLOCK]);
      runStart = -1;
    }
  }
  if (runStart >= 0) extents.push([runStart * unit * BLOCK, (BLOCKS / unit - runStart) * unit * BLOCK]);
  return { extents, blocks };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

/**
 * Dirties the active bitmap the way a guest would: writes through QEMU's block layer, here NBD WRITE_ZEROES on a
 * writable export of the same node (marks the bitmap like any write, allocates no data). In offset order, so that
 * qcow2's small L2 cache sees one table at a time. Large runs go as 1 GiB requests (the client splits them).
 */
async function dirty(s: QsdSession, extents: [number, number][]): Promise<number> {
  await ensureNbdServer(s.qmp, s.nbdSocket);
  await blockExportAddNbd(s.qmp, { id: 'bench-w', 'node-name': s.nodes[0]!.node, name: 'bench-w', writable: true });
  const nbd = await NbdClient.connect(nbdUnixUri(s.nbdSocket, 'bench-w'), { inflight: WRITE_WINDOW });
  let writes = 0;
  try {
    const inflight = new Set<Promise<void>>();
    let failure: unknown;
    for (const [offset, length] of extents) {
      while (inflight.size >= WRITE_WINDOW) await Promise.race(inflight);
      if (failure) throw failure;
      const p: Promise<void> = nbd.writeZeroes(offset, length).then(
        () => { inflight.delete(p); },
        (err) => { inflight.delete(p); failure ??= err; },
      );
      inflight.add(p);
      writes += Math.ceil(length / 2 ** 30);
    }
    await Promise.all(inflight);
    if (failure) throw failure;
    await nbd.flush();
  } finally {
    await nbd.close();
    await removeExport(s.qmp, 'bench-w');
  }
  return writes;
}

async function onlyDisk(s: QsdSession): Promise<TrackedDisk> {
  return (await storageDaemonDisks(s.qmp, s.nodes))[0]!;
}

function activeBitmap(disk: TrackedDisk): string {
  const b = disk.bitmaps.find((x) => x.recording && x.name?.startsWith('virtcbt-'));
  if (!b?.name) throw new Error(`no recording virtcbt bitmap on ${disk.node}: ${JSON.stringify(disk.bitmaps)}`);
  return b.name;
}

function walSize(path: string): number {
  try {
    return statSync(`${path}-wal`).size;
  } catch {
    return 0;
  }
}

interface FoldSample {
  foldMs: number;
  readMs: number;
  sqliteMs: number;
  changesMs: number;
  dbBytes: number;
  extents: number;
  dirtyBytes: number;
}

/**
 * One fold with a fresh change log: start tracking (recover creates the bitmap; a first pass of consumer "backup"
 * folds it empty), let `fill` dirty the new active bitmap, then time rotateAndFold, `changes` and the size.
 */
async function foldOnce(s: QsdSession, fill: (active: string) => Promise<void>): Promise<FoldSample> {
  const dir = mkdtempSync(join(tmpdir(), 'virtcbt-bench-reconcile-log-'));
  const path = join(dir, 'changelog.db');
  const log = ChangeLog.open(path);
  try {
    log.ensureDomain(DOMAIN);
    log.addConsumer(DOMAIN, 'backup');
    let readMs = 0;
    let extents = 0;
    const rec = new Reconciler({
      log, qmp: s.qmp, domain: DOMAIN, nbdSocket: s.nbdSocket, granularity: BLOCK,
      readDirty: async (uri, bitmap, size) => {
        const t = process.hrtime.bigint();
        const out = await readDirtyExtents(uri, bitmap, size);
        readMs += ms(t);
        extents = out.length;
        return out;
      },
    });
    // Time the SQLite fold on this log only, by wrapping the instance's method.
    let sqliteMs = 0;
    const fold = log.fold.bind(log);
    log.fold = (...a: Parameters<ChangeLog['fold']>) => {
      const t = process.hrtime.bigint();
      try {
        return fold(...a);
      } finally {
        sqliteMs += ms(t);
      }
    };
    await rec.recover(await onlyDisk(s));
    log.commitPass((await rec.rotateAndFold([await onlyDisk(s)], { pass: { consumer: 'backup' } })).passId!);
    await fill(activeBitmap(await onlyDisk(s)));
    readMs = 0;
    sqliteMs = 0;
    const disks = [await onlyDisk(s)];
    const t0 = process.hrtime.bigint();
    const r = await rec.rotateAndFold(disks);
    const foldMs = ms(t0);
    const changesMs: number[] = [];
    for (let q = 0; q < QUERY_RUNS; q++) {
      const t = process.hrtime.bigint();
      const c = log.changes(DOMAIN, 'backup');
      changesMs.push(ms(t));
      if (c[0]!.full) throw new Error('consumer "backup" got a full pass: the fold did not count');
    }
    log.checkpoint();
    const dbBytes = statSync(path).size + walSize(path);
    return { foldMs, readMs, sqliteMs, changesMs: median(changesMs), dbBytes, extents, dirtyBytes: r.disks[0]!.dirtyBytes };
  } finally {
    log.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function timeNbdinfo(uri: string, bitmap: string): Promise<number> {
  const t = process.hrtime.bigint();
  await execa('nbdinfo', [`--map=qemu:dirty-bitmap:${bitmap}`, uri], { stdout: 'ignore' });
  return ms(t);
}

/**
 * One case on a fresh 1 TiB qcow2 in one storage-daemon session. The first fold's bitmap is dirtied by real writes;
 * a disabled copy of it ("ref") is then what nbdinfo and our standalone reader read, and what later fold runs merge
 * into their freshly created active bitmap (the same bits, without writing the image again).
 */
export async function runCase(percent: number, pattern: Pattern, runs: number, log?: (line: string) => void): Promise<ReconcileBenchRow> {
  const { extents: want, blocks } = dirtySet(percent, pattern, 1000 * percent + (pattern === 'clustered' ? 7 : 0));
  const dir = mkdtempSync(join(tmpdir(), 'virtcbt-bench-reconcile-'));
  try {
    const image = join(dir, 'disk.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(TiB)]);
    return await withStorageDaemon(dir, DOMAIN, [{ target: TARGET, image }], async (s) => {
      const node = s.nodes[0]!.node;
      const samples: FoldSample[] = [];
      let writes = 0;
      let dirtyS = 0;
      const nbdinfo: number[] = [];
      const ours: number[] = [];
      const uri = nbdUnixUri(s.nbdSocket, 'bench-ref');
      // Each fold run is preceded by one nbdinfo and one standalone read of the same bits, so that the three see
      // the same machine load (other work on the host moves all of them together). An exported bitmap is busy (it
      // cannot be merged from), so the export lives only for these two reads.
      const readRef = async () => {
        await ensureNbdServer(s.qmp, s.nbdSocket);
        await addReadOnlyExport(s.qmp, { id: 'bench-ref', node, name: 'bench-ref', bitmaps: ['ref'] });
        try {
          nbdinfo.push(await timeNbdinfo(uri, 'ref'));
          const t = process.hrtime.bigint();
          const ex = await readDirtyExtents(uri, 'ref', TiB);
          ours.push(ms(t));
          if (ex.length !== want.length) throw new Error(`our reader returned ${ex.length} extents, the writes made ${want.length}`);
        } finally {
          await removeExport(s.qmp, 'bench-ref');
        }
      };
      samples.push(await foldOnce(s, async (active) => {
        const t = process.hrtime.bigint();
        writes = await dirty(s, want);
        dirtyS = ms(t) / 1000;
        const count = (await onlyDisk(s)).bitmaps.find((b) => b.name === active)!.count;
        if (count !== blocks * BLOCK) {
          throw new Error(`after ${writes} writes the bitmap counts ${count / BLOCK} dirty blocks, expected ${blocks}: the writes did not all mark it`);
        }
        log?.(`  ${percent}% ${pattern}: ${blocks.toLocaleString('en-US')} blocks dirtied by ${writes.toLocaleString('en-US')} WRITE_ZEROES in ${dirtyS.toFixed(1)} s`);
        // The reference copy, in the same state: disabled (exportable) and not persistent (nothing left in the image).
        await blockDirtyBitmapAdd(s.qmp, { node, name: 'ref', granularity: BLOCK, disabled: true });
        await blockDirtyBitmapMerge(s.qmp, { node, target: 'ref', bitmaps: [active] });
        await readRef();
      }));
      for (let r = 1; r < runs; r++) {
        samples.push(await foldOnce(s, async (active) => {
          await blockDirtyBitmapMerge(s.qmp, { node, target: active, bitmaps: ['ref'] });
          await readRef();
        }));
      }
      await blockDirtyBitmapRemove(s.qmp, { node, name: 'ref' });
      for (const x of samples) {
        if (x.dirtyBytes !== blocks * BLOCK || x.extents !== want.length) {
          throw new Error(`a fold saw ${x.dirtyBytes / BLOCK} blocks in ${x.extents} extents, expected ${blocks} in ${want.length}`);
        }
      }
      const foldMs = median(samples.map((x) => x.foldMs));
      const nbdinfoMs = median(nbdinfo);
      const dbBytes = median(samples.map((x) => x.dbBytes));
      return {
        case: `${percent}% ${pattern}`,
        dirtyPercent: percent,
        pattern,
        dirtyBlocks: blocks,
        extents: want.length,
        writes,
        dirtyS,
        nbdinfoMs,
        ourReadStandaloneMs: median(ours),
        ourReadMs: median(samples.map((x) => x.readMs)),
        sqliteFoldMs: median(samples.map((x) => x.sqliteMs)),
        foldMs,
        restMs: median(samples.map((x) => x.foldMs - x.readMs - x.sqliteMs)),
        foldVsNbdinfo: foldMs / nbdinfoMs,
        changesMs: median(samples.map((x) => x.changesMs)),
        dbBytes,
        bytesPerChangedBlock: dbBytes / blocks,
        foldRuns: samples.length,
        load: loadavg().map((l) => l.toFixed(2)).join(' '),
      };
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const HEADER = '| case | dirty blocks | extents | `nbdinfo --map` (ms) | our NBD read (ms) | SQLite fold (ms) | fold total (ms) | fold / nbdinfo | `changes` (ms) | log on disk | bytes / changed block | fold runs |\n' +
  '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|';

export function formatRow(r: ReconcileBenchRow): string {
  const size = r.dbBytes >= 1024 * 1024 ? `${(r.dbBytes / 1024 / 1024).toFixed(1)} MiB` : `${(r.dbBytes / 1024).toFixed(0)} KiB`;
  return `| ${r.case} | ${r.dirtyBlocks.toLocaleString('en-US')} | ${r.extents.toLocaleString('en-US')} | ${r.nbdinfoMs.toFixed(0)} | ` +
    `${r.ourReadMs.toFixed(0)} | ${r.sqliteFoldMs.toFixed(0)} | ${r.foldMs.toFixed(0)} | ${r.foldVsNbdinfo.toFixed(2)}x | ${r.changesMs.toFixed(1)} | ` +
    `${size} | ${r.bytesPerChangedBlock.toFixed(3)} | ${r.foldRuns} |`;
}

const ALL_CASES: [number, Pattern][] = [[1, 'clustered'], [1, 'scattered'], [10, 'clustered'], [10, 'scattered'], [100, 'clustered'], [100, 'scattered']];

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const opt = (name: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const runs = Number(opt('runs') ?? 5);
  const pick = opt('cases')?.split(',');
  const cases = ALL_CASES.filter(([p, k]) => !pick || pick.includes(`${p}${k[0]}`));
  const say = (l: string) => (json ? console.error(l) : console.log(l));
  say(`reconciler fold through qemu-storage-daemon: 1 TiB qcow2, ${BLOCK / 1024} KiB blocks; fold runs per case ${runs}; nbdinfo and standalone reader once before each fold; load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const rows: ReconcileBenchRow[] = [];
  const t0 = Date.now();
  for (const [percent, pattern] of cases) {
    const row = await runCase(percent, pattern, runs, say);
    rows.push(row);
    if (!json) {
      if (rows.length === 1) console.log(HEADER);
      console.log(formatRow(row));
    }
  }
  say(`total ${((Date.now() - t0) / 1000).toFixed(0)} s; load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  if (json) console.log(JSON.stringify(rows, null, 2));
  const verdict = (name: string, ok: boolean | undefined) => say(`target ${name}: ${ok === undefined ? 'not measured' : ok ? 'met' : 'NOT met'}`);
  const row = (c: string) => rows.find((r) => r.case === c);
  verdict('clustered 1% fold within 3x of nbdinfo --map', row('1% clustered') && row('1% clustered')!.foldVsNbdinfo <= 3);
  verdict('scattered 1% fold within 5x of nbdinfo --map', row('1% scattered') && row('1% scattered')!.foldVsNbdinfo <= 5);
  const ones = rows.filter((r) => r.dirtyPercent === 1);
  verdict('changes under 100 ms at 1%', ones.length ? ones.every((r) => r.changesMs < 100) : undefined);
  verdict('under 4 bytes per changed block', rows.length ? rows.every((r) => r.bytesPerChangedBlock < 4) : undefined);
}
