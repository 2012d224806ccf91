// The copy path of an incremental backup alone: 256 MiB of changed extents read over NBD (qemu-nbd
// on a qcow2 image, standing in for QEMU's fleecing export), checksummed (ExtentDigest) and written
// by virtcbt's qcow2 writer into an overlay, made durable, for several request shapes and flush
// intervals. Reports wall time and the CPU of this process and of qemu-nbd.
//   node dist/bench/backup-copy-path.js [--rounds N]
import { execa } from 'execa';
import { randomFillSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { copyExtents, dataExtents, flushingEndpoint, serveImage } from '../src/copy/index.js';
import { Qcow2Writer } from '../src/qcow2/index.js';
import { ExtentDigest } from '../src/repo/index.js';
import { workDir } from './nbd-support.js';

const MiB = 1024 * 1024;

function ticks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').slice(readFileSync(`/proc/${pid}/stat`, 'utf8').lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

async function main(): Promise<void> {
  const rounds = Number(process.argv[process.argv.indexOf('--rounds') + 1] || 3);
  const dir = workDir('copy-path');
  try {
    const raw = join(dir.path, 'src.raw');
    const buf = randomFillSync(Buffer.alloc(512 * MiB));
    writeFileSync(raw, buf);
    const base = join(dir.path, 'base.qcow2');
    await execa('qemu-img', ['convert', '-O', 'qcow2', raw, base]);
    // Changed: 256 MiB in 4 MiB runs spread over the disk, as dirty extents come.
    const extents = Array.from({ length: 64 }, (_, i) => ({ offset: i * 8 * MiB, length: 4 * MiB }));
    const shapes = [[256 * 1024, 64], [1 * MiB, 16], [1 * MiB, 64], [2 * MiB, 16]] as const;
    const flushes = [32 * MiB, 64 * MiB, 0];
    console.log(`load average ${loadavg()[0]!.toFixed(2)}`);
    for (let r = 0; r < rounds; r++) {
      for (const [req, inflight] of shapes) {
        for (const every of flushes) {
          await execa('sync');
          const src = await serveImage(base, { runDir: dir.path });
          const file = join(dir.path, `out-${r}.qcow2`);
          const cpu0 = process.cpuUsage();
          const q0 = ticks(src.pid);
          const t0 = performance.now();
          const w = await Qcow2Writer.create(file, { size: src.endpoint.size, backing: { name: 'base.qcow2' } });
          const dg = new ExtentDigest();
          const fl = every ? flushingEndpoint(w, every) : { endpoint: w, settle: async () => undefined };
          await copyExtents(src.endpoint, dg.wrap(fl.endpoint), dg.track(dataExtents(extents)), { requestSize: req, inflight });
          await dg.finish();
          const tc = performance.now();
          await fl.settle();
          await w.finish();
          const wall = performance.now() - t0;
          const q = ticks(src.pid) - q0;
          const cpu = process.cpuUsage(cpu0);
          await src.close();
          console.log(`${req / 1024} KiB x ${inflight}, flush ${every ? every / MiB + ' MiB' : 'at end'}: ${wall.toFixed(0)} ms (final flush ${(wall - tc + t0).toFixed(0)} ms), ` +
            `node cpu ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms, qemu-nbd ${q * 10} ms`);
        }
      }
    }
  } finally {
    dir.remove();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
