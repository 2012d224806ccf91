// Benchmark of the change log on a 1 TiB disk at 64 KiB blocks: fold time, bytes on disk per changed block, and
// `changes` query time, for 1%, 10% and 100% dirty blocks, clustered in 1 MiB runs or scattered.
// Run: npx tsc -p tsconfig.json && node dist/bench/changelog-fold.js [--runs N] [--json]
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ChangeLog } from '../src/changelog/index.js';
import { totalBytes } from '../src/extent/index.js';

const TiB = 2 ** 40;
const BLOCK = 64 * 1024;
const BLOCKS = TiB / BLOCK;
/** Clustered writes come in 1 MiB runs: 16 blocks. */
const CLUSTER_BLOCKS = (1024 * 1024) / BLOCK;

export interface ChangelogBenchRow {
  case: string;
  dirtyPercent: number;
  pattern: 'clustered' | 'scattered';
  changedBlocks: number;
  inputExtents: number;
  foldMs: number;
  dbBytes: number;
  bytesPerChangedBlock: number;
  changesMs: number;
  changesExtents: number;
  runs: number;
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

/** Dirty extents as an NBD block-status reader returns them: merged runs, in bytes. */
function dirtyExtents(percent: number, pattern: 'clustered' | 'scattered', seed: number): { extents: [number, number][]; blocks: number } {
  const r = rng(seed);
  const p = percent / 100;
  const unit = pattern === 'clustered' ? CLUSTER_BLOCKS : 1;
  const extents: [number, number][] = [];
  let blocks = 0;
  let runStart = -1;
  for (let u = 0; u < BLOCKS / unit; u++) {
    const dirty = p >= 1 || r() < p;
    if (dirty) {
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
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/**
 * Steady state rather than one big fold: `folds` folds of percent/folds each, a pass of consumer "backup" after each
 * (so every fold has its own generation), while consumer "anchor" stays at its first pass and keeps all of them in
 * the log (nothing pruned). Fold time is the median single fold; `changes` is anchor's query over all of them.
 */
function runGenerationsCase(percent: number, folds: number, runs: number): ChangelogBenchRow {
  const foldMs: number[] = [];
  const changesMs: number[] = [];
  let dbBytes = 0;
  let changedBlocks = 0;
  let inputExtents = 0;
  let changesExtents = 0;
  for (let run = 0; run < runs; run++) {
    const dir = mkdtempSync(join(tmpdir(), 'virtcbt-bench-changelog-'));
    const path = join(dir, 'changelog.db');
    const log = ChangeLog.open(path);
    try {
      log.ensureDomain('vm');
      log.upsertDisk('vm', 'vda', { blockSize: BLOCK, sizeBytes: TiB });
      for (const c of ['anchor', 'backup']) {
        log.addConsumer('vm', c);
        log.commitPass(log.beginPass('vm', c).id);
      }
      inputExtents = 0;
      for (let f = 0; f < folds; f++) {
        const { extents } = dirtyExtents(percent / folds, 'scattered', 5000 + 100 * run + f);
        inputExtents += extents.length;
        log.recordBitmap('vm', 'vda', `b${f}`, log.currentGeneration('vm'), 'frozen');
        const t0 = process.hrtime.bigint();
        log.fold('vm', 'vda', `b${f}`, extents);
        foldMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
        log.commitPass(log.beginPass('vm', 'backup').id);
      }
      log.checkpoint();
      dbBytes = statSync(path).size + walSize(path);
      for (let q = 0; q < 5; q++) {
        const t1 = process.hrtime.bigint();
        const c = log.changes('vm', 'anchor');
        changesMs.push(Number(process.hrtime.bigint() - t1) / 1e6);
        changesExtents = c[0].extents.length;
        changedBlocks = totalBytes(c[0].extents) / BLOCK;
      }
    } finally {
      log.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return {
    case: `${percent}% scattered in ${folds} generations`,
    dirtyPercent: percent,
    pattern: 'scattered',
    changedBlocks,
    inputExtents,
    foldMs: median(foldMs),
    dbBytes,
    bytesPerChangedBlock: dbBytes / changedBlocks,
    changesMs: median(changesMs),
    changesExtents,
    runs,
  };
}

function runCase(percent: number, pattern: 'clustered' | 'scattered', runs: number): ChangelogBenchRow {
  const foldMs: number[] = [];
  const changesMs: number[] = [];
  let dbBytes = 0;
  let changedBlocks = 0;
  let inputExtents = 0;
  let changesExtents = 0;
  for (let run = 0; run < runs; run++) {
    const { extents, blocks } = dirtyExtents(percent, pattern, 1000 * percent + run + (pattern === 'clustered' ? 7 : 0));
    changedBlocks = blocks;
    inputExtents = extents.length;
    const dir = mkdtempSync(join(tmpdir(), 'virtcbt-bench-changelog-'));
    const path = join(dir, 'changelog.db');
    const log = ChangeLog.open(path);
    try {
      log.ensureDomain('vm');
      log.upsertDisk('vm', 'vda', { blockSize: BLOCK, sizeBytes: TiB });
      log.addConsumer('vm', 'backup');
      const p = log.beginPass('vm', 'backup');
      log.commitPass(p.id);
      log.recordBitmap('vm', 'vda', 'b', log.currentGeneration('vm'), 'frozen');

      const t0 = process.hrtime.bigint();
      log.fold('vm', 'vda', 'b', extents);
      foldMs.push(Number(process.hrtime.bigint() - t0) / 1e6);

      log.checkpoint();
      dbBytes = statSync(path).size + walSize(path);

      // Several queries per run; the median of all of them.
      for (let q = 0; q < 5; q++) {
        const t1 = process.hrtime.bigint();
        const c = log.changes('vm', 'backup');
        changesMs.push(Number(process.hrtime.bigint() - t1) / 1e6);
        changesExtents = c[0].extents.length;
      }
    } finally {
      log.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return {
    case: `${percent}% ${pattern}`,
    dirtyPercent: percent,
    pattern,
    changedBlocks,
    inputExtents,
    foldMs: median(foldMs),
    dbBytes,
    bytesPerChangedBlock: dbBytes / changedBlocks,
    changesMs: median(changesMs),
    changesExtents,
    runs,
  };
}

function walSize(path: string): number {
  try {
    return statSync(`${path}-wal`).size;
  } catch {
    return 0;
  }
}

export function runChangelogBench(opts: { runs?: number; log?: (line: string) => void } = {}): ChangelogBenchRow[] {
  const runs = opts.runs ?? 5;
  const rows: ChangelogBenchRow[] = [];
  for (const percent of [1, 10, 100]) {
    for (const pattern of ['clustered', 'scattered'] as const) {
      const row = runCase(percent, pattern, runs);
      rows.push(row);
      opts.log?.(formatRow(row));
    }
  }
  const steady = runGenerationsCase(1, 10, runs);
  rows.push(steady);
  opts.log?.(formatRow(steady));
  return rows;
}

export const HEADER = '| case | changed blocks | input extents | fold (ms) | DB after checkpoint | bytes / changed block | `changes` (ms) | extents returned |\n|---|---:|---:|---:|---:|---:|---:|---:|';

export function formatRow(r: ChangelogBenchRow): string {
  const kb = r.dbBytes >= 1024 * 1024 ? `${(r.dbBytes / 1024 / 1024).toFixed(1)} MiB` : `${(r.dbBytes / 1024).toFixed(0)} KiB`;
  return `| ${r.case} | ${r.changedBlocks.toLocaleString('en-US')} | ${r.inputExtents.toLocaleString('en-US')} | ${r.foldMs.toFixed(1)} | ${kb} | ${r.bytesPerChangedBlock.toFixed(3)} | ${r.changesMs.toFixed(1)} | ${r.changesExtents.toLocaleString('en-US')} |`;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const i = args.indexOf('--runs');
  const runs = i >= 0 ? Number(args[i + 1]) : 5;
  if (!json) console.log(`change log: 1 TiB disk, ${BLOCK / 1024} KiB blocks, median of ${runs} runs\n${HEADER}`);
  const rows = runChangelogBench({ runs, log: json ? undefined : (l) => console.log(l) });
  if (json) console.log(JSON.stringify(rows, null, 2));
  const one = rows.find((r) => r.case === '1% scattered')!;
  const ok = one.changesMs < 100 && one.bytesPerChangedBlock < 4;
  console.error(`targets (changes < 100 ms at 1% scattered, < 4 bytes per changed block): ${ok ? 'met' : 'NOT met'}`);
}
