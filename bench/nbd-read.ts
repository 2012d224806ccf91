// Benchmark: read a 2 GiB fully allocated image from qemu-nbd over a unix socket, whole process,
// `virtcbt nbd copy URI null:` against `nbdcopy URI null:` in the same run, median of 5, with the
// CPU qemu-nbd itself spent serving each run (the request shape moves the server's CPU most).
// Run: npx tsc -p tsconfig.json && node dist/bench/nbd-read.js [--runs 5] [--gib 2] [--qcow2]
//      [--variant LABEL=PATH/TO/cli/main.js ...]   (another build of the CLI as an extra row, for A/B tests)
import { randomFillSync } from 'node:crypto';
import { closeSync, fsyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { CLI, envNote, flag, load, qemuNbd, summarize, table, timed, workDir, type Sample } from './nbd-support.js';

/**
 * Child mode (`--floor SOCKET`): the least a Node reader can do, as a yardstick for what Node
 * costs here: no structured replies, the same request shape as virtcbt's default (64 requests
 * of 256 KiB in flight, DEFAULT_INFLIGHT × DEFAULT_REQUEST_SIZE in src/copy), every byte read
 * into one reused 4 MiB buffer with `onread` and dropped, only reply headers looked at.
 */
function floorReader(path: string): Promise<void> {
  const REQ = 256 * 1024;
  const INFLIGHT = 64;
  return new Promise((resolve, reject) => {
    const hdr = Buffer.alloc(16);
    let hs = Buffer.alloc(0);
    let phase: 'greeting' | 'options' | 'data' = 'greeting';
    let size = 0;
    let next = 0;
    let inflight = 0;
    let done = 0;
    let hdrHave = 0;
    let payload = 0;
    const send = () => {
      while (inflight < INFLIGHT && next < size) {
        const h = Buffer.alloc(28);
        h.writeUInt32BE(0x25609513, 0);
        h.writeBigUInt64BE(BigInt(next), 8);
        h.writeBigUInt64BE(BigInt(next), 16);
        h.writeUInt32BE(Math.min(REQ, size - next), 24);
        s.write(h);
        next += REQ;
        inflight++;
      }
    };
    const handshake = () => {
      if (phase === 'greeting' && hs.length >= 18) {
        hs = hs.subarray(18);
        const go = Buffer.alloc(22);
        go.write('IHAVEOPT', 0, 'latin1');
        go.writeUInt32BE(7, 8); // NBD_OPT_GO, default export, no info requests
        go.writeUInt32BE(6, 12);
        s.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), go]));
        phase = 'options';
      }
      while (phase === 'options' && hs.length >= 20) {
        const type = hs.readUInt32BE(12);
        const len = hs.readUInt32BE(16);
        if (hs.length < 20 + len) return;
        const d = hs.subarray(20, 20 + len);
        hs = hs.subarray(20 + len);
        if (type === 3 && d.readUInt16BE(0) === 0) size = Number(d.readBigUInt64BE(2));
        else if (type === 1) {
          phase = 'data';
          send();
        } else if (type !== 3) reject(new Error(`option reply ${type}`));
      }
    };
    const s = connect({
      path,
      onread: {
        buffer: Buffer.allocUnsafe(4 * 1024 * 1024),
        callback: (n: number, buf: Uint8Array) => {
          if (phase !== 'data') {
            hs = Buffer.concat([hs, Buffer.from(buf.subarray(0, n))]);
            handshake();
            return true;
          }
          let pos = 0;
          while (pos < n) {
            if (payload > 0) {
              const k = Math.min(payload, n - pos);
              payload -= k;
              pos += k;
              if (payload === 0) {
                inflight--;
                done += REQ;
                if (done >= size) {
                  s.end();
                  resolve();
                  return false;
                }
                send();
              }
              continue;
            }
            const k = Math.min(16 - hdrHave, n - pos);
            hdr.set(buf.subarray(pos, pos + k), hdrHave);
            hdrHave += k;
            pos += k;
            if (hdrHave === 16) {
              hdrHave = 0;
              if (hdr.readUInt32BE(4) !== 0) reject(new Error(`server error ${hdr.readUInt32BE(4)}`));
              payload = REQ;
            }
          }
          return true;
        },
      },
    });
    s.on('error', reject);
  });
}

const floorAt = process.argv.indexOf('--floor');
if (floorAt > 0) {
  await floorReader(process.argv[floorAt + 1]!);
  process.exit(0);
}

const runs = flag('runs', 5);
const gib = flag('gib', 2);
// --qcow2: serve the same data converted to qcow2 (what backups read), where QEMU's hole
// detection per READ walks qcow2 metadata instead of lseek on a raw file.
const qcow2 = process.argv.includes('--qcow2');
const variants = process.argv.flatMap((a, i) => (process.argv[i - 1] === '--variant' ? [a] : [])).map((v) => {
  const eq = v.indexOf('=');
  if (eq <= 0) throw new Error(`--variant wants LABEL=PATH/TO/main.js, not "${v}"`);
  return { label: v.slice(0, eq), cli: v.slice(eq + 1) };
});
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
  let served = image;
  if (qcow2) {
    served = join(dir.path, 'disk.qcow2');
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', image, served]);
    rmSync(image);
  }
  const server = await qemuNbd(served, dir.path, ['-r', '-f', qcow2 ? 'qcow2' : 'raw']);
  try {
    const loadBefore = load();
    const socket = server.uri.replace(/^.*socket=/, '');
    const tools = [
      { name: 'nbdcopy URI null:', cmd: 'nbdcopy', args: [server.uri, 'null:'] },
      { name: 'virtcbt nbd copy URI null:', cmd: 'node', args: [CLI, 'nbd', 'copy', server.uri, 'null:'] },
      ...variants.map((v) => ({ name: `virtcbt nbd copy (${v.label})`, cmd: 'node', args: [v.cli, 'nbd', 'copy', server.uri, 'null:'] })),
      { name: 'bare Node reader, 64 × 256 KiB (yardstick, not a product)', cmd: 'node', args: [fileURLToPath(import.meta.url), '--floor', socket] },
    ];
    // One untimed pass of each warms the page cache and the binaries.
    for (const t of tools) await timed(t.cmd, t.args, dir.path);
    const samples: Sample[][] = tools.map(() => []);
    for (let i = 0; i < runs; i++) {
      // Rotate the order so no tool always runs on a warmer (or busier) machine.
      for (let k = 0; k < tools.length; k++) {
        const j = (i + k) % tools.length;
        samples[j]!.push(await timed(tools[j]!.cmd, tools[j]!.args, dir.path, undefined, server.pid));
      }
    }
    const rows = tools.map((t, j) => summarize(t.name, samples[j]!));
    console.log(`NBD read: ${gib} GiB ${qcow2 ? 'qcow2' : 'raw'} image, qemu-nbd -r over a unix socket, ${runs} runs, load average before ${loadBefore}, after ${load()}; ${envNote()}`);
    console.log('server CPU: user+sys of the qemu-nbd process during each run, from /proc/PID/stat');
    console.log(table(rows, rows[0]!));
  } finally {
    await server.stop();
  }
} finally {
  dir.remove();
}
