// Benchmark: block status of a dirty bitmap on a 1 TiB qcow2 with 1% of its 64 KiB clusters dirty,
// scattered, `virtcbt nbd map` against `nbdinfo --map` (whole process, median of 5, identical output checked).
// Run: npx tsc -p tsconfig.json && node dist/bench/nbd-block-status.js [--runs 5] [--percent 1]
//      [--context qemu:dirty-bitmap:b0|base:allocation ...] [--keep-env]
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';
import { CLI, envNote, flag, load, median, qemuNbd, summarize, table, timed, workDir, type Sample } from './nbd-support.js';

/**
 * Child mode (`--walk URI CONTEXT OUT`): the library alone, timed inside a fresh process from
 * connect to the last line written, so Node's start-up and module loading are left out.
 */
async function walkOnce(uri: string, context: string, out: string): Promise<void> {
  const { openSync, writeSync, closeSync } = await import('node:fs');
  const { MapWriter, NbdClient } = await import('../src/nbd/index.js');
  const t0 = performance.now();
  const fd = openSync(out, 'w');
  const c = await NbdClient.connect(uri, { metaContexts: [context] });
  const w = new MapWriter(context, false, (b) => writeSync(fd, b));
  for await (const run of c.blockStatusRuns(context)) {
    let pos = run.offset;
    for (let i = 0; i < run.extents.length; i += 2) {
      w.extent(pos, run.extents[i]!, run.extents[i + 1]!);
      pos += run.extents[i]!;
    }
  }
  w.end();
  closeSync(fd);
  await c.close();
  console.log(JSON.stringify({ ms: performance.now() - t0 }));
}

const walkAt = process.argv.indexOf('--walk');
if (walkAt > 0) {
  const [uri, context, out] = process.argv.slice(walkAt + 1);
  await walkOnce(uri!, context!, out!);
  process.exit(0);
}

const runs = flag('runs', 5);
const percent = flag('percent', 1);
const TiB = 2 ** 40;
const CLUSTER = 64 * 1024;
const dir = workDir('nbd-bs');
try {
  const image = join(dir.path, 'disk.qcow2');
  await execa('qemu-img', ['create', '-f', 'qcow2', image, String(TiB)]);
  await execa('qemu-img', ['bitmap', '--add', image, 'b0']);
  // Scattered: distinct random clusters. Zero writes mark the bitmap like any write but
  // allocate no data, so the image stays small; cache=unsafe skips a flush per write.
  const clusters = TiB / CLUSTER;
  const want = Math.round((clusters * percent) / 100);
  const seen = new Set<number>();
  let s = 20240601;
  const cmds: string[] = [];
  while (seen.size < want) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const c = s % clusters;
    if (seen.has(c)) continue;
    seen.add(c);
    cmds.push(`write -z ${c * CLUSTER} ${CLUSTER}`);
  }
  const t0 = Date.now();
  await execa('qemu-io', ['-t', 'unsafe', '-f', 'qcow2', image], { input: cmds.join('\n') + '\nquit\n', stdout: 'ignore' });
  await execa('qemu-img', ['bitmap', '--disable', image, 'b0']);
  console.log(`built ${image}: ${want} dirty clusters in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  const server = await qemuNbd(image, dir.path, ['-r', '-f', 'qcow2', '-B', 'b0']);
  try {
    const picked = process.argv.flatMap((a, i) => (process.argv[i - 1] === '--context' ? [a] : []));
    for (const context of picked.length ? picked : ['qemu:dirty-bitmap:b0', 'base:allocation']) {
      const refOut = join(dir.path, 'ref.map');
      const ourOut = join(dir.path, 'ours.map');
      const loadBefore = load();
      const ref: Sample[] = [];
      const ours: Sample[] = [];
      await timed('nbdinfo', [`--map=${context}`, server.uri], dir.path, refOut);
      await timed('node', [CLI, 'nbd', 'map', '--context', context, server.uri], dir.path, ourOut);
      const a = readFileSync(refOut);
      const b = readFileSync(ourOut);
      const lines = a.toString().split('\n').length - 1;
      if (!a.equals(b)) {
        writeFileSync(join(process.cwd(), 'nbd-block-status-mismatch.txt'), b);
        throw new Error(`${context}: our map differs from nbdinfo's (${lines} reference lines); ours saved in nbd-block-status-mismatch.txt`);
      }
      for (let i = 0; i < runs; i++) {
        const pair = [
          async () => ref.push(await timed('nbdinfo', [`--map=${context}`, server.uri], dir.path, refOut, server.pid)),
          async () => ours.push(await timed('node', [CLI, 'nbd', 'map', '--context', context, server.uri], dir.path, ourOut, server.pid)),
        ];
        if (i % 2) pair.reverse();
        for (const f of pair) await f();
      }
      const walks: number[] = [];
      for (let i = 0; i < runs; i++) {
        const r = await execa('node', [fileURLToPath(import.meta.url), '--walk', server.uri, context, ourOut]);
        walks.push(JSON.parse(r.stdout).ms / 1000);
      }
      if (!readFileSync(ourOut).equals(a)) throw new Error(`${context}: the in-process walk printed something else than nbdinfo`);
      const r = summarize(`nbdinfo --map=${context}`, ref);
      const o = summarize(`virtcbt nbd map --context ${context}`, ours);
      console.log(`\nNBD block status: 1 TiB qcow2, ${percent}% of clusters dirty (scattered), context ${context}: ` +
        `${lines} extents, identical output; ${runs} runs, load average before ${loadBefore}, after ${load()}; ${envNote()}`);
      console.log(table([r, o], r));
      console.log(`library walk inside a fresh process (connect to last line, no Node start-up): median ${median(walks).toFixed(3)} s ` +
        `(${(median(walks) / r.wallS).toFixed(2)}x nbdinfo's whole process); all: ${walks.map((w) => w.toFixed(3)).join(' ')}`);
    }
  } finally {
    await server.stop();
  }
} finally {
  dir.remove();
}
