// `npm test`: the suite in its two lanes side by side (vitest.config.ts says which file goes where),
// one vitest process per lane. vitest itself runs every project with one worker as a single queue,
// so on a 2-core machine the host-side files would wait for the guest files instead of using the
// other core.
//
// Arguments go to the lanes: file filters (`npm test -- nbd-uri`) only to a lane holding a match;
// other options to both, and a lane left with no file then passes empty. With --project, vitest
// runs as given. VIRTCBT_TEST_REPORT (the path .ci/run reads) gets both lanes' JSON reports
// merged: counts summed, results concatenated.
import { spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { testLanes } from './test-lanes.mjs';

const LANES = ['guests', 'host'];
const COUNTS = ['numTotalTestSuites', 'numPassedTestSuites', 'numFailedTestSuites', 'numPendingTestSuites',
  'numTotalTests', 'numPassedTests', 'numFailedTests', 'numPendingTests', 'numTodoTests'];

const vitest = join(dirname(fileURLToPath(import.meta.url)), '..', 'node_modules', 'vitest', 'vitest.mjs');
const args = process.argv.slice(2);
const report = process.env.VIRTCBT_TEST_REPORT;

function run(lane) {
  const laneArgs = lane ? ['--project', lane, ...(args.length ? ['--passWithNoTests'] : [])] : [];
  const env = { ...process.env };
  if (report && lane) env.VIRTCBT_TEST_REPORT = `${report}.${lane}`;
  const child = spawn(process.execPath, [vitest, 'run', ...laneArgs, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  // Whole lines, each marked with its lane: the two reporters write at once.
  const prefix = lane ? `${lane.padEnd(6)}│ ` : '';
  for (const [from, to] of [[child.stdout, process.stdout], [child.stderr, process.stderr]]) {
    createInterface({ input: from, crlfDelay: Infinity }).on('line', (line) => to.write(prefix + line + '\n'));
  }
  return new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? (signal ? 128 : 1))));
}

function mergeReports() {
  const merged = { success: true, startTime: Infinity, testResults: [] };
  for (const k of COUNTS) merged[k] = 0;
  for (const lane of wanted) {
    const file = `${report}.${lane}`;
    let r;
    try { r = JSON.parse(readFileSync(file, 'utf8')); } catch { merged.success = false; continue; }
    rmSync(file, { force: true });
    for (const k of COUNTS) merged[k] += r[k] ?? 0;
    merged.success &&= r.success !== false;
    merged.startTime = Math.min(merged.startTime, r.startTime ?? Infinity);
    merged.testResults.push(...(r.testResults ?? []));
  }
  writeFileSync(report, JSON.stringify(merged));
}

const started = Date.now();
const ownProject = args.some((a) => a === '--project' || a.startsWith('--project='));
const filters = args.every((a) => !a.startsWith('-')) ? args : [];
const lanes = testLanes(new URL('../', import.meta.url));
const wanted = LANES.filter((l) => !filters.length || lanes[l].some((f) => filters.some((p) => f.includes(p))));
const codes = await Promise.all(ownProject ? [run(undefined)] : LANES.map((l) => (wanted.includes(l) ? run(l) : 0)));
if (report && !ownProject) mergeReports();
if (!ownProject) {
  const each = LANES.map((l, i) => `${l} ${!wanted.includes(l) ? 'not run' : codes[i] === 0 ? 'passed' : `failed (exit ${codes[i]})`}`).join(', ');
  console.log(`lanes: ${each}; ${((Date.now() - started) / 1000).toFixed(0)} s`);
}
process.exit(codes.find((c) => c !== 0) ?? 0);
