// Benchmark: read throughput of one 2 GiB point-in-time view through an export for another host
// (src/snapshot/remote-export.ts: a qemu-storage-daemon front end, NBD over TCP with mutual TLS,
// here on 127.0.0.1) against the private unix export it reads from, in the same run, medians of 5,
// with nbdcopy and `virtcbt nbd copy` to null:. The server CPU column is the source's and the front
// end's together (the front end's cost is the difference). Loopback: the figure is the cost of TLS
// and the extra NBD hop on this host, not of a network. A yardstick row (nbdcopy only) reads the
// same view through a front end without TLS, to split the cost between the hop and TLS.
// Run: npx tsc -p tsconfig.json && node dist/bench/tls-export-vs-unix.js [--runs 5] [--gib 2]
import { randomFillSync } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { startRemoteExport } from '../src/snapshot/remote-export.js';
import { createCa, issueClientCredentials, issueServerCredentials } from '../src/tls/index.js';
import { CLI, cpuOf, envNote, flag, load, summarize, table, timed, workDir, type Sample } from './nbd-support.js';

const runs = flag('runs', 5);
const gib = flag('gib', 2);
const dir = workDir('tls-export');
let sourcePid: number | undefined;
let plainPid: number | undefined;

/** A port that was free a moment ago (the yardstick's qemu-storage-daemon binds it itself). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}
try {
  // Fully allocated and not compressible (a random 16 MiB block, varied per copy), as qcow2: a
  // fleecing view is a qcow2 overlay over the disk, and backups read qcow2.
  const raw = join(dir.path, 'disk.raw');
  const block = Buffer.alloc(16 * 1024 * 1024);
  randomFillSync(block);
  const fd = openSync(raw, 'w');
  for (let i = 0; i < gib * 64; i++) {
    block.writeUInt32LE(i, 0);
    writeSync(fd, block);
  }
  fsyncSync(fd);
  closeSync(fd);
  const image = join(dir.path, 'disk.qcow2');
  await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, image]);
  rmSync(raw);
  await execa('sync');

  // The private unix export, as QEMU's NBD server gives it (same block layer, same export code).
  const socket = join(dir.path, 'private.sock');
  const pidFile = join(dir.path, 'source.pid');
  await execa('qemu-storage-daemon', [
    '--blockdev', JSON.stringify({ driver: 'file', 'node-name': 'file0', filename: image, 'read-only': true }),
    '--blockdev', JSON.stringify({ driver: 'qcow2', 'node-name': 'view0', file: 'file0', 'read-only': true }),
    '--nbd-server', JSON.stringify({ addr: { type: 'unix', path: socket } }),
    '--export', JSON.stringify({ type: 'nbd', id: 'e0', 'node-name': 'view0', name: 'view', writable: false }),
    '--daemonize', '--pidfile', pidFile,
  ]);
  sourcePid = Number(readFileSync(pidFile, 'utf8').trim());

  const ca = await createCa(join(dir.path, 'ca'), { cn: 'bench CA', days: 1 });
  const serverDir = await issueServerCredentials(ca, join(dir.path, 'server'), { cn: 'localhost', ipAddresses: ['127.0.0.1'], days: 1 });
  const clientDir = await issueClientCredentials(ca, join(dir.path, 'client'), { cn: 'scanner', days: 1 });
  const runDir = join(dir.path, 'run');
  mkdirSync(runDir);
  await using remote = await startRemoteExport({
    source: { socket, exportName: 'view' }, tlsDir: serverDir, identities: ['CN=scanner'], bind: { host: '127.0.0.1' }, runDir,
  });
  // The yardstick: the same front end without TLS (no certificates, no authz).
  const plainPort = await freePort();
  const plainPidFile = join(dir.path, 'plain.pid');
  await execa('qemu-storage-daemon', [
    '--blockdev', JSON.stringify({ driver: 'nbd', 'node-name': 'source0', 'read-only': true, server: { type: 'unix', path: socket }, export: 'view' }),
    '--nbd-server', JSON.stringify({ addr: { type: 'inet', host: '127.0.0.1', port: String(plainPort) } }),
    '--export', JSON.stringify({ type: 'nbd', id: 'export0', 'node-name': 'source0', name: 'plain', writable: false }),
    '--daemonize', '--pidfile', plainPidFile,
  ]);
  plainPid = Number(readFileSync(plainPidFile, 'utf8').trim());
  const unixUri = `nbd+unix:///view?socket=${socket}`;
  const tlsUri = `${remote.uri}?tls-certificates=${clientDir}`;
  const tools = [
    { name: 'nbdcopy, unix export', cmd: 'nbdcopy', args: [unixUri, 'null:'] },
    { name: 'nbdcopy, TLS export', cmd: 'nbdcopy', args: [tlsUri, 'null:'] },
    { name: 'nbdcopy, front end without TLS (yardstick)', cmd: 'nbdcopy', args: [`nbd://127.0.0.1:${plainPort}/plain`, 'null:'] },
    { name: 'virtcbt nbd copy, unix export', cmd: 'node', args: [CLI, 'nbd', 'copy', unixUri, 'null:'] },
    { name: 'virtcbt nbd copy, TLS export', cmd: 'node', args: [CLI, 'nbd', 'copy', tlsUri, 'null:'] },
  ];
  const servers = [sourcePid, remote.pid, plainPid];
  const serverCpu = () => servers.reduce((s, p) => s + cpuOf(p), 0);
  const loadBefore = load();
  // One untimed pass of each warms the page cache and the binaries.
  for (const t of tools) await timed(t.cmd, t.args, dir.path);
  const samples: Sample[][] = tools.map(() => []);
  for (let i = 0; i < runs; i++) {
    // Rotate the order so no reader always runs on a warmer (or busier) machine.
    for (let k = 0; k < tools.length; k++) {
      const j = (i + k) % tools.length;
      const before = serverCpu();
      const s = await timed(tools[j]!.cmd, tools[j]!.args, dir.path);
      samples[j]!.push({ ...s, serverS: serverCpu() - before });
    }
  }
  const rows = tools.map((t, j) => summarize(t.name, samples[j]!));
  const bytes = gib * 1024 ** 3;
  console.log(`Export for another host: ${gib} GiB qcow2 view, private unix export (qemu-storage-daemon) against the TLS front end on 127.0.0.1 reading it; ${runs} runs, load average before ${loadBefore}, after ${load()}; ${envNote()}`);
  console.log('server CPU: user+sys of the source and the front ends together during each run, from /proc/PID/stat');
  console.log('');
  console.log(table([rows[0]!, rows[1]!, rows[2]!], rows[0]!));
  console.log('');
  console.log(table([rows[3]!, rows[4]!], rows[3]!));
  console.log('');
  for (const [u, t] of [[0, 1], [0, 2], [3, 4]] as const) {
    const mibs = (r: typeof rows[number]) => bytes / 2 ** 20 / r.wallS;
    const [reader, via] = tools[t]!.name.split(', ');
    console.log(`${reader}: ${via} ${mibs(rows[t]!).toFixed(0)} MiB/s, unix export ${mibs(rows[u]!).toFixed(0)} MiB/s: ` +
      `throughput ratio ${(rows[u]!.wallS / rows[t]!.wallS).toFixed(2)}x`);
  }
} finally {
  for (const pid of [plainPid, sourcePid]) {
    if (pid === undefined) continue;
    try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
  }
  dir.remove();
}
