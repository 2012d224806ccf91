// Benchmark: block status of a dirty bitmap on a 1 TiB qcow2 with 1% of its 64 KiB clusters dirty,
// scattered, `virtcbt nbd map` against `nbdinfo --map` (whole process, median of 5, identical output checked).
// Run: npx tsc -p tsconfig.json && node dist/bench/nbd-block-status.js [--runs 5] [--percent 1]
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { CLI, flag, load, qemuNbd, summarize, table, timed, workDir, type Sample } from './nbd-support.js';

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
    for (const context of ['qemu:dirty-bitmap:b0', 'base:allocation']) {
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
          async () => ref.push(await timed('nbdinfo', [`--map=${context}`, server.uri], dir.path, refOut)),
          async () => ours.push(await timed('node', [CLI, 'nbd', 'map', '--context', context, server.uri], dir.path, ourOut)),
        ];
        if (i % 2) pair.reverse();
        for (const f of pair) await f();
      }
      const r = summarize(`nbdinfo --map=${context}`, ref);
      const o = summarize(`virtcbt nbd map --context ${context}`, ours);
      console.log(`\nNBD block status: 1 TiB qcow2, ${percent}% of clusters dirty (scattered), context ${context}: ` +
        `${lines} extents, identical output; ${runs} runs, load average before ${loadBefore}, after ${load()}`);
      console.log(table([r, o], r));
    }
  } finally {
    await server.stop();
  }
} finally {
  dir.remove();
}
