// A process folding into the change log is SIGKILLed mid-stream, three times; after each kill the reopened log is
// consistent: every fold is either entirely there (blocks and "folded" record) or entirely absent.
import Database from 'better-sqlite3';
import { execa, type ResultPromise } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ChangeLog } from '../src/changelog/index.js';
import { forEachRun } from '../src/changelog/page-codec.js';
import {
  BLOCK, BLOCKS, CONSUMER, DOMAIN, PASS_EVERY, STRIDE, TARGET,
} from './support/changelog-kill-plan.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHILD = fileURLToPath(new URL('./support/changelog-fold-child.ts', import.meta.url));

/** Resolves when the child has printed "folded N" with N >= target; rejects if it exits first or time runs out. */
function waitForFold(child: ResultPromise, target: number, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`child did not reach fold ${target} within ${timeoutMs} ms; output so far: ${buf}`)), timeoutMs);
    child.stdout!.on('data', (chunk: Buffer) => {
      buf += chunk.toString();
      for (const m of buf.matchAll(/folded (\d+)\n/g)) {
        if (Number(m[1]) >= target) { clearTimeout(timer); resolve(Number(m[1])); return; }
      }
    });
    child.then((r) => {
      clearTimeout(timer);
      reject(new Error(`child exited (code ${r.exitCode}, signal ${r.signal}) before fold ${target}: ${r.stderr}`));
    }, reject);
  });
}

interface Verified { folded: number[]; frozen: number[]; lastIndex: number }

/** Reopens the log (quick_check, WAL recovery) and checks every block against the bitmap records. */
function verify(path: string): Verified {
  const log = ChangeLog.open(path);
  try {
    const gens = new Array<number>(STRIDE).fill(0);
    const folded: number[] = [];
    const frozen: number[] = [];
    for (const b of log.listBitmaps(DOMAIN, TARGET)) {
      const i = Number(b.name.slice(1));
      expect(['folded', 'frozen'], b.name).toContain(b.state);
      if (b.state === 'folded') { gens[i] = b.generation; folded.push(i); } else frozen.push(i);
    }
    folded.sort((a, b) => a - b);
    // The child folds in order: folds 0..n-1 are all there, at most one recorded but not folded after them.
    expect(folded).toEqual(folded.map((_, k) => k));
    expect(frozen.length).toBeLessThanOrEqual(1);
    if (frozen.length === 1) expect(frozen[0]).toBe(folded.length);

    const dense = new Uint32Array(BLOCKS);
    const raw = new Database(path, { readonly: true });
    try {
      for (const row of raw.prepare('SELECT page_no, runs FROM pages').all() as { page_no: number; runs: Buffer }[]) {
        const base = row.page_no * 65536;
        forEachRun(row.runs, (s, l, g) => dense.fill(g, base + s, base + s + l));
      }
    } finally {
      raw.close();
    }
    let wrong = 0;
    let firstWrong = -1;
    for (let b = 0; b < BLOCKS; b++) {
      if (dense[b] !== gens[b % STRIDE]) { wrong++; if (firstWrong < 0) firstWrong = b; }
    }
    expect(wrong, `block ${firstWrong} has generation ${dense[firstWrong]}, its fold says ${gens[firstWrong % STRIDE]}`).toBe(0);

    // The fold counter lives in the same transaction as the blocks.
    const st = log.status(DOMAIN);
    expect(st.disks[0].foldCount).toBe(folded.length);
    // The consumer only ever moves to a generation a pass was given, and no more than one pass is left open.
    const c = st.consumers.find((x) => x.name === CONSUMER)!;
    expect(st.openPasses.length).toBeLessThanOrEqual(1);
    if (c.last !== null) expect(c.last).toBeLessThan(st.generation);
    const lastIndex = Math.max(-1, ...folded, ...frozen);
    return { folded, frozen, lastIndex };
  } finally {
    log.close();
  }
}

describe('change log under SIGKILL', () => {
  let dir: string | undefined;
  let child: ResultPromise | undefined;
  afterEach(async () => {
    if (child && child.exitCode === null) { child.kill('SIGKILL'); await child.catch(() => undefined); }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('every fold is all there or absent after the folding process is killed', async () => {
    dir = mkdtempSync(join(tmpdir(), 'virtcbt-kill-'));
    const path = join(dir, 'changelog.db');
    const setup = ChangeLog.open(path);
    setup.ensureDomain(DOMAIN);
    setup.upsertDisk(DOMAIN, TARGET, { blockSize: BLOCK, sizeBytes: BLOCKS * BLOCK });
    setup.addConsumer(DOMAIN, CONSUMER);
    // A consumer that passed once and never again keeps every later fold in the log (nothing is pruned).
    setup.addConsumer(DOMAIN, 'anchor');
    setup.commitPass(setup.beginPass(DOMAIN, 'anchor').id);
    setup.close();

    let start = 0;
    let killedMidFold = 0;
    for (const ahead of [4, 6, 5]) {
      child = execa(process.execPath, ['--import', 'tsx', CHILD, path, String(start)], { cwd: ROOT, reject: false });
      const seen = await waitForFold(child, start + ahead, 60_000);
      child.kill('SIGKILL');
      const r = await child;
      expect(r.signal).toBe('SIGKILL');
      const v = verify(path);
      expect(v.folded.length).toBeGreaterThanOrEqual(seen + 1);
      if (v.frozen.length > 0) killedMidFold++;
      // The next child resumes with the last recorded bitmap (folding it if the kill left it unfolded).
      start = Math.max(0, v.lastIndex);
    }
    expect(start).toBeLessThan(STRIDE - 1);
    // A last clean run: the interrupted fold completes and everything still checks out.
    child = execa(process.execPath, ['--import', 'tsx', CHILD, path, String(start)], { cwd: ROOT, reject: false });
    await waitForFold(child, start + 1, 60_000);
    child.kill('SIGKILL');
    await child;
    const end = verify(path);
    expect(end.folded.length).toBeGreaterThan(start);
    // Generations moved on with the child's passes.
    const log = ChangeLog.open(path);
    try {
      expect(log.currentGeneration(DOMAIN)).toBeGreaterThan(Math.floor(end.folded.length / PASS_EVERY));
    } finally {
      log.close();
    }
    console.log(`survives-kill: ${end.folded.length} folds, ${killedMidFold} of 3 kills landed between recording a bitmap and its fold commit`);
  });
});
