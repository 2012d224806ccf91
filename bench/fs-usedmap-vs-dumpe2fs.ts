// Benchmark: the used-block map of a sparse ext4 image from src/fs (bitmaps only) against `dumpe2fs` (e2fsprogs'
// per-group free ranges), medians of several runs, as whole processes and in-process, from a file and over qemu-nbd.
// Run: npx tsc -p tsconfig.json && node dist/bench/fs-usedmap-vs-dumpe2fs.js [--runs 7] [--gib 4]
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { FileEndpoint, NbdEndpoint, type Endpoint } from '../src/copy/index.js';
import { DiskReader, ExtFilesystem } from '../src/fs/index.js';
import { childEnv, flag, load, qemuNbd, workDir } from './nbd-support.js';

/** Child mode: one used map of IMAGE, as a CLI would compute it, then exit. */
if (process.argv[2] === '--child') {
  const ep = await FileEndpoint.open(process.argv[3]!);
  const fs = await ExtFilesystem.open(ep);
  const used = await fs.usedExtents();
  await ep.close();
  process.stdout.write(`${used.length}\n`);
  process.exit(0);
}

const runs = flag('runs', 7);
const gib = flag('gib', 4);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function wall(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function proc(cmd: string, args: string[]): Promise<void> {
  const child = spawn(cmd, args, { stdio: 'ignore', env: childEnv });
  const [code] = (await once(child, 'close')) as [number | null];
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${code}`);
}

async function inProcess(open: () => Promise<Endpoint>): Promise<{ bytes: number }> {
  const ep = await open();
  try {
    const reader = new DiskReader(ep);
    const fs = await ExtFilesystem.open(reader);
    await fs.usedExtents();
    return { bytes: reader.stats.bytesRead };
  } finally {
    await ep.close();
  }
}

const dir = workDir('fs-usedmap');
try {
  const self = fileURLToPath(import.meta.url);
  const cases = [
    { name: `ext4 default, ${gib} GiB, 1 GiB of files written (groups beyond them BLOCK_UNINIT)`, mkfs: ['mkfs.ext4'] },
    { name: `ext4 without group checksums, ${gib} GiB (every group's bitmap read)`, mkfs: ['mkfs.ext4', '-O', '^metadata_csum,^uninit_bg'] },
  ];
  console.log(`used-block map of a sparse ext4 image: src/fs against dumpe2fs, ${runs} runs each, medians; load average before ${load()}`);
  for (const c of cases) {
    const image = join(dir.path, 'fs.img');
    await execa('truncate', ['-s', `${gib}G`, image]);
    await execa(c.mkfs[0]!, [...c.mkfs.slice(1), '-q', '-F', image]);
    // 1 GiB of data spread over the groups (fallocate: allocated without writing it).
    for (let i = 0; i < 16; i++) await execa('debugfs', ['-w', '-R', `write /dev/null /f${i}`, image]);
    for (let i = 0; i < 16; i++) await execa('debugfs', ['-w', '-R', `fallocate /f${i} 0 16383`, image]);
    const server = await qemuNbd(image, dir.path, ['-r', '-f', 'raw']);
    try {
      const rows: { name: string; walls: number[] }[] = [
        { name: 'dumpe2fs IMAGE (whole process)', walls: [] },
        { name: 'node: open + usedExtents() (whole process)', walls: [] },
        { name: 'node -e 0 (Node\'s own start, yardstick)', walls: [] },
        { name: 'usedExtents() in process, file', walls: [] },
        { name: 'usedExtents() in process, qemu-nbd unix socket', walls: [] },
      ];
      let bytes = 0;
      const steps: (() => Promise<unknown>)[] = [
        () => proc('dumpe2fs', [image]),
        () => proc('node', [self, '--child', image]),
        () => proc('node', ['-e', '0']),
        async () => {
          bytes = (await inProcess(() => FileEndpoint.open(image))).bytes;
        },
        () => inProcess(() => NbdEndpoint.open(server.uri)),
      ];
      for (const s of steps) await s(); // warm-up: page cache, binaries
      for (let i = 0; i < runs; i++) {
        // Rotated order: no row always runs on the warmest (or busiest) machine.
        for (let k = 0; k < steps.length; k++) {
          const j = (i + k) % steps.length;
          rows[j]!.walls.push(await wall(steps[j]!));
        }
      }
      const ref = median(rows[0]!.walls);
      console.log(`\n### ${c.name}\nsrc/fs read ${(bytes / 1024).toFixed(0)} KiB of the image per map\n`);
      console.log('| how | wall (median) | vs dumpe2fs | all walls (ms) |\n| --- | ---: | ---: | --- |');
      for (const r of rows) {
        const m = median(r.walls);
        console.log(`| ${r.name} | ${(m * 1000).toFixed(1)} ms | ${(m / ref).toFixed(2)}x | ${r.walls.map((w) => (w * 1000).toFixed(1)).join(' ')} |`);
      }
    } finally {
      await server.stop();
    }
  }
} finally {
  dir.remove();
}
