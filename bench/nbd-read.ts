// Benchmark: read a 2 GiB fully allocated image from qemu-nbd over a unix socket, whole process,
// `virtcbt nbd copy URI null:` against `nbdcopy URI null:` in the same run, median of 5.
// Run: npx tsc -p tsconfig.json && node dist/bench/nbd-read.js [--runs 5] [--gib 2]
import { randomFillSync } from 'node:crypto';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, flag, load, qemuNbd, summarize, table, timed, workDir, type Sample } from './nbd-support.js';

const runs = flag('runs', 5);
const gib = flag('gib', 2);
const dir = workDir('nbd-read');
try {
  // Fully allocated and not compressible: a random 16 MiB block, varied per copy.
  const image = join(dir.path, 'disk.raw');
  const block = Buffer.alloc(16 * 1024 * 1024);
  randomFillSync(block);
  const fd = openSync(image, 'w');
  for (let i = 0; i < gib * 64; i++) {
    block.writeUInt32LE(i, 0);
    writeSync(fd, block);
  }
  // Written back before timing: otherwise the kernel flushes 2 GiB of dirty pages during the runs.
  fsyncSync(fd);
  closeSync(fd);
  const server = await qemuNbd(image, dir.path, ['-r', '-f', 'raw']);
  try {
    const loadBefore = load();
    // One untimed pass of each warms the page cache and the binaries.
    await timed('nbdcopy', [server.uri, 'null:'], dir.path);
    await timed('node', [CLI, 'nbd', 'copy', server.uri, 'null:'], dir.path);
    const ref: Sample[] = [];
    const ours: Sample[] = [];
    for (let i = 0; i < runs; i++) {
      // Alternate the order so neither tool always runs on a warmer machine.
      const pair = [
        async () => ref.push(await timed('nbdcopy', [server.uri, 'null:'], dir.path)),
        async () => ours.push(await timed('node', [CLI, 'nbd', 'copy', server.uri, 'null:'], dir.path)),
      ];
      if (i % 2) pair.reverse();
      for (const f of pair) await f();
    }
    const r = summarize('nbdcopy URI null:', ref);
    const o = summarize('virtcbt nbd copy URI null:', ours);
    console.log(`NBD read: ${gib} GiB raw image, qemu-nbd -r over a unix socket, ${runs} runs, load average before ${loadBefore}, after ${load()}`);
    console.log(table([r, o], r));
  } finally {
    await server.stop();
  }
} finally {
  dir.remove();
}
