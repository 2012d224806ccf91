// Benchmark: virtcbt-scanner's scans against ClamAV's own local scanners on the same files, same
// clamd, same signatures, in one run. A generated file set (FILES files, about MIB MiB of random
// data, one EICAR-like file) goes into an ext4 image (`mkfs.ext4 -d`), served read-only by a
// qemu-storage-daemon unix export behind the TLS front end of src/snapshot/remote-export.ts on
// 127.0.0.1 (the scanner's client certificate is the only identity let in); the scanner
// (dist/src/scan/scanner/main.js) gets the job over HTTPS with the hypervisor's client certificate.
// Rows: the scanner's full scan over NBD+TLS; `clamdscan --multiscan --fdpass` and `clamscan -r`
// on the same tree on the local filesystem (the directory mkfs read, in the page cache, as the
// image is); an incremental scan after 1% of the files were rewritten with debugfs (rm + write:
// new blocks, as a guest's rewrite gives). The changed extents are exact: the 64 KiB granules in
// which the two images differ (what a 64 KiB dirty bitmap records). Medians of --runs runs.
// Loopback: the NBD figures are TLS and the extra hop on this host, not a network.
// Run: npx tsc -p tsconfig.json && node dist/bench/scan-vs-clamdscan.js [--runs 3] [--files 3000] [--mib 300] [--sigs 100000]
// [--rows 1,2,4] (only those rows) [--trace] (event arrival times, CPU of scanner and front end apart)
// [--handoff spool|instream] (files to clamd by path from a spool on tmpfs, the default, or INSTREAM);
// [--concurrency N] (the scanner's limits.concurrency; clamd's MaxThreads, 4, by default);
// BENCH_SCANNER_NODE_ARGS="--cpu-prof ..." in the environment profiles virtcbt-scanner.
import { spawn } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import type { ExtentPair, ScanJob, ScanResult } from '../src/scan/protocol.js';
import { createLabDomain, startLabDaemon, type LabDaemon, type LabDomain } from '../src/demo/lab.js';
import { SCANNER_NODE_FLAGS } from '../src/scan/scanner/index.js';
import { startRemoteExport } from '../src/snapshot/remote-export.js';
import { createCa, issueClientCredentials, issueServerCredentials } from '../src/tls/index.js';
import { envNote, flag, load, median, ROOT, timed, workDir } from './nbd-support.js';

const runs = flag('runs', 3);
const FILES = flag('files', 3000);
const MIB = flag('mib', 300);
const SIGS = flag('sigs', 100_000);
/** Scans of a running TCG guest (freeze window, whole-command wall); 0 leaves the guest out. */
const GUEST_SCANS = flag('guest-scans', 5);
const GRANULE = 64 * 1024;
/** Prints when each event of a scan's response arrived (stderr). */
const TRACE = process.argv.includes('--trace');
/** How the scanner hands files to clamd: by path from a spool on tmpfs (its default), or INSTREAM (spoolDir ""). */
const HANDOFF = process.argv.includes('--handoff') ? process.argv[process.argv.indexOf('--handoff') + 1] : 'spool';
if (HANDOFF !== 'spool' && HANDOFF !== 'instream') throw new Error('--handoff takes spool or instream');
/** Rows to run, by number (1 full, 2 clamdscan, 3 clamscan, 4 incremental, 5 clamdscan --stream, 6 incremental without an owner index); all unless given. */
const ROWS = process.argv.includes('--rows') ? (process.argv[process.argv.indexOf('--rows') + 1] ?? '').split(',').map(Number) : [];
const MiB = 2 ** 20;
const SCANNER = join(ROOT, 'dist', 'src', 'scan', 'scanner', 'main.js');
const THREADS = 4;
/** Files the scanner keeps in flight (its limits.concurrency); clamd's MaxThreads by default. */
const CONCURRENCY = flag('concurrency', THREADS);
/** EICAR's middle, assembled so this file is not itself "infected". */
const MARK = ['EICAR-STANDARD', '-ANTIVIRUS-TEST-FILE'].join('');

const dir = workDir('scan');
const pids: number[] = [];
const onExit: (() => void)[] = [];

/** File sizes: mostly small, some large, summing to about MIB MiB (a deterministic spread). */
function sizes(): number[] {
  const w = Array.from({ length: FILES }, (_, i) => (i % 50 === 0 ? 40 : 1 + (i * 7919) % 5));
  const sum = w.reduce((a, b) => a + b, 0);
  return w.map((x) => Math.max(1, Math.round((x / sum) * MIB * MiB)));
}

/** The 64 KiB granules in which two images differ, merged. */
function diffExtents(a: string, b: string): ExtentPair[] {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.alloc(GRANULE);
  const bb = Buffer.alloc(GRANULE);
  const out: ExtentPair[] = [];
  try {
    for (let at = 0; at < statSync(a).size; at += GRANULE) {
      readSync(fa, ba, 0, GRANULE, at);
      readSync(fb, bb, 0, GRANULE, at);
      if (ba.equals(bb)) continue;
      const last = out.at(-1);
      if (last && last[0] + last[1] === at) last[1] += GRANULE;
      else out.push([at, GRANULE]);
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return out;
}

/** Polls `f` until it returns a value (or throws), for at most `ms`. */
async function until<T>(f: () => Promise<T | undefined> | T | undefined, what: string, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function clamdCommand(socket: string, cmd: string): Promise<string> {
  return new Promise((resolve) => {
    import('node:net').then(({ connect }) => {
      const s = connect(socket);
      let out = '';
      s.on('data', (c) => { out += c.toString(); });
      s.on('end', () => resolve(out.replace(/\0/g, '').trim()));
      s.on('error', () => resolve(''));
      s.on('connect', () => s.end(`z${cmd}\0`));
    });
  });
}

/** POSTs a job with the hypervisor's client certificate; resolves with the verdict and the wall time. */
function post(url: string, job: ScanJob, certDir: string): Promise<{ result: ScanResult; wallS: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = request(new URL('/v1/scans', url), {
      method: 'POST', headers: { 'content-type': 'application/json' },
      ca: readFileSync(join(certDir, 'ca-cert.pem')), cert: readFileSync(join(certDir, 'client-cert.pem')), key: readFileSync(join(certDir, 'client-key.pem')),
    }, (res) => {
      const tHeaders = process.hrtime.bigint();
      let body = '';
      const trace: string[] = [];
      res.setEncoding('utf8').on('data', (c: string) => {
        body += c;
        if (TRACE) trace.push(`${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)}ms ${c.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { type: string }).type).join(',')}`);
      });
      res.on('end', () => {
        const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
        if (TRACE) console.error(`trace ${job.disks[0]?.extents ? 'incremental' : 'full'}: headers ${(Number(tHeaders - t0) / 1e6).toFixed(1)}ms; ${trace.join('; ')}; end ${(wallS * 1000).toFixed(1)}ms`);
        const result = body.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string }).find((e) => e.type === 'result') as ScanResult | undefined;
        if (!result) reject(new Error(`no verdict (HTTP ${res.statusCode}): ${body.slice(0, 2000)}`));
        else resolve({ result, wallS });
      });
    });
    req.on('error', reject);
    req.end(JSON.stringify(job));
  });
}

function cpuTree(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const x = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(x[11]) + Number(x[12])) / 100;
  } catch {
    return 0;
  }
}

/**
 * `virtcbt scan` of a running TCG guest (the lab domain of `npm run demo`) through virtcbtd, with
 * the same scanner: one full scan, then GUEST_SCANS incremental ones, each after the guest wrote a
 * file. Reports the freeze window of each snapshot (guest-fsfreeze-freeze sent until thawed) and
 * the whole command's wall time.
 */
async function scanRunningGuest(url: string, hv: string, exportServer: string): Promise<void> {
  const name = `virtcbt-bench-scan-${process.pid}`;
  let lab: LabDomain | undefined;
  let daemon: LabDaemon | undefined;
  try {
    lab = await createLabDomain({ name });
    daemon = await startLabDaemon(join(dir.path, 'daemon'), {
      snapshot: { remote: { bind: '127.0.0.1', port: 0, tlsDir: exportServer, deadlineSeconds: 600 } },
      scan: { scanners: [{ name: 'bench', url, identity: 'CN=scanner', tlsDir: hv }], quarantine: 'none', fullEveryHours: 0 },
    });
    await daemon.cli(['enable', name]);
    await lab.start();
    const d = daemon;
    const scans: { full: boolean; wallS: number; freezeMs: number | null; files: number; nbd: number }[] = [];
    for (let i = 0; i <= GUEST_SCANS; i++) {
      if (i > 0) await lab.exec('/bin/sh', ['-c', `head -c 262144 /dev/urandom > /mnt/data/bench-${i}.bin && sync`]);
      const r = await d.cli(['scan', name, '--json', ...(i === 0 ? ['--full'] : [])]);
      const result = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string }).at(-1) as unknown as
        { type: string; full: boolean; freezeWindowMs: number | null; consistency: string; verdict: ScanResult };
      if (result?.type !== 'result' || result.consistency !== 'filesystem') throw new Error(`guest scan ${i}: ${r.stdout.slice(-2000)}`);
      scans.push({ full: result.full, wallS: r.ms / 1000, freezeMs: result.freezeWindowMs, files: result.verdict.scanned.filesOpened, nbd: result.verdict.scanned.nbdBytesRead });
    }
    const freeze = scans.map((x) => x.freezeMs ?? NaN);
    const inc = scans.filter((x) => !x.full);
    console.log('');
    console.log(`Running guest (TCG, 256 MiB, ext4 data disk), \`virtcbt scan\` through virtcbtd and the same scanner: 1 full + ${inc.length} incremental scans, each after the guest wrote a 256 KiB file`);
    console.log(`  freeze window (ms): ${freeze.map((f) => f.toFixed(0)).join(' ')}; median ${median(freeze).toFixed(0)} ms, max ${Math.max(...freeze).toFixed(0)} ms (target < 100 ms)`);
    console.log(`  whole command wall (s): full ${scans[0]!.wallS.toFixed(2)} (${scans[0]!.files} files, ${(scans[0]!.nbd / MiB).toFixed(1)} MiB over NBD); ` +
      `incremental median ${median(inc.map((x) => x.wallS)).toFixed(2)} (${inc.map((x) => x.wallS.toFixed(2)).join(' ')}; files opened ${inc.map((x) => x.files).join(' ')})`);
  } finally {
    await daemon?.stop();
    await lab?.remove();
  }
}

try {
  const t = dir.path;
  // The file set.
  const tree = join(t, 'tree');
  const sz = sizes();
  const block = Buffer.alloc(8 * MiB);
  randomFillSync(block);
  for (let i = 0; i < FILES; i++) {
    const sub = join(tree, `d${String(i % 40).padStart(2, '0')}`);
    mkdirSync(sub, { recursive: true });
    // Random bytes varied per file (a random offset into one random block, and the file's number).
    const n = sz[i]!;
    const b = Buffer.alloc(n);
    for (let at = 0; at < n; at += block.length) block.copy(b, at, (i * 4099) % (block.length / 2), Math.min(block.length, (i * 4099) % (block.length / 2) + n - at));
    b.writeUInt32LE(i, 0);
    writeFileSync(join(sub, `f${String(i).padStart(5, '0')}.bin`), b);
  }
  writeFileSync(join(tree, 'd00', 'dropped.txt'), `payload X5O!P%@AP[4\\PZX54(P^)7CC)7}$${MARK}!$H+H*\n`);
  const fileBytes = sz.reduce((a, b) => a + b, 0);
  const imgBytes = Math.ceil((fileBytes * 1.25 + 64 * MiB) / MiB) * MiB;
  const before = join(t, 'before.img');
  await execa('truncate', ['-s', String(imgBytes), before]);
  await execa('mkfs.ext4', ['-q', '-F', '-d', tree, before]);

  // Signatures: SIGS random 16-byte body patterns and one on the EICAR-like string.
  mkdirSync(join(t, 'clamd', 'db'), { recursive: true });
  const ndb: string[] = [];
  for (let i = 0; i < SIGS; i++) ndb.push(`Bench.Random.${i}:0:*:${randomBytes(16).toString('hex')}`);
  ndb.push(`Bench.EICAR:0:*:${Buffer.from(MARK).toString('hex')}`);
  const db = join(t, 'clamd', 'db', 'bench.ndb');
  writeFileSync(db, ndb.join('\n') + '\n');

  // clamd on a private socket.
  const socket = join(t, 'clamd', 'clamd.sock');
  const conf = join(t, 'clamd', 'clamd.conf');
  // clamd spools every INSTREAM stream into a file of its TemporaryDirectory before scanning it: on
  // tmpfs, as the README advises for a scanner host, that costs a copy in memory, not a filesystem's work.
  const clamdTmp = existsSync('/dev/shm') ? mkdtempSync(join('/dev/shm', 'virtcbt-bench-clamd-')) : t;
  onExit.push(() => rmSync(clamdTmp, { recursive: true, force: true }));
  writeFileSync(conf, [`LocalSocket ${socket}`, `DatabaseDirectory ${join(t, 'clamd', 'db')}`, 'Foreground yes', `LogFile ${join(t, 'clamd', 'clamd.log')}`,
    `MaxThreads ${THREADS}`, `StreamMaxLength ${128 * MiB}`, `MaxScanSize ${1024 * MiB}`, `MaxFileSize ${128 * MiB}`, `TemporaryDirectory ${clamdTmp}`, 'SelfCheck 0'].join('\n') + '\n');
  const clamd = spawn('clamd', ['-c', conf], { stdio: 'ignore' });
  pids.push(clamd.pid!);
  await until(async () => (clamd.exitCode !== null ? Promise.reject(new Error('clamd exited')) : existsSync(socket) && (await clamdCommand(socket, 'PING')) === 'PONG' ? true : undefined), 'clamd', 180_000);

  // Credentials: one CA; export server, scanner's NBD client (CN=scanner), scanner's HTTPS server, hypervisor client (CN=hv1).
  const ca = await createCa(join(t, 'ca'), { cn: 'bench CA', days: 1 });
  const exportServer = await issueServerCredentials(ca, join(t, 'export-server'), { cn: 'localhost', ipAddresses: ['127.0.0.1'], days: 1 });
  const scannerNbd = await issueClientCredentials(ca, join(t, 'scanner-nbd'), { cn: 'scanner', days: 1 });
  const scannerTls = await issueServerCredentials(ca, join(t, 'scanner-tls'), { cn: 'localhost', ipAddresses: ['127.0.0.1'], days: 1 });
  const hv = await issueClientCredentials(ca, join(t, 'hv1'), { cn: 'hv1', days: 1 });

  // The scanner, its spool on tmpfs as the unit's RuntimeDirectory is.
  const spoolDir = existsSync('/dev/shm') ? mkdtempSync(join('/dev/shm', 'virtcbt-bench-spool-')) : join(t, 'spool');
  onExit.push(() => rmSync(spoolDir, { recursive: true, force: true }));
  const cfg = join(t, 'scanner.json');
  writeFileSync(cfg, JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 }, tlsDir: scannerTls, allowedClients: ['CN=hv1'], nbdTlsDir: scannerNbd,
    clamd: { socket, timeoutSeconds: 120, spoolDir: HANDOFF === 'spool' ? spoolDir : '', spoolMaxFileBytes: 128 * MiB },
    limits: { maxFileBytes: 128 * MiB, maxFiles: 1_000_000, maxSeconds: 3600, streamMaxLength: 128 * MiB, concurrency: CONCURRENCY },
    maxJobs: 2, log: { level: 'info' }, ownerIndex: { saveDir: '' },
  }));
  // With the flags the unit gives it (src/scan/scanner/node-flags.ts).
  const scanner = spawn(process.execPath, [...SCANNER_NODE_FLAGS, ...(process.env.BENCH_SCANNER_NODE_ARGS ?? '').split(' ').filter(Boolean), SCANNER, '--config', cfg], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, VIRTCBT_SCANNER_CONFIG: undefined } });
  pids.push(scanner.pid!);
  let slog = '';
  scanner.stderr!.on('data', (c: Buffer) => { slog += c.toString(); });
  const port = await until(() => {
    if (scanner.exitCode !== null) throw new Error(`virtcbt-scanner exited: ${slog}`);
    return /info: listening host=\S+ port=(\d+)/.exec(slog)?.[1];
  }, 'virtcbt-scanner', 30_000);
  const url = `https://127.0.0.1:${port}`;

  /** The source exports' qemu-storage-daemons (the guest's QEMU on a hypervisor): their CPU is traced apart. */
  const sourcePids: number[] = [];
  /** Serves an image: a read-only qemu-storage-daemon unix export, and the TLS front end for CN=scanner. */
  async function serve(image: string, name: string) {
    const sock = join(t, `${name}.sock`);
    const pidFile = join(t, `${name}.pid`);
    await execa('qemu-storage-daemon', [
      '--blockdev', JSON.stringify({ driver: 'file', 'node-name': 'file0', filename: image, 'read-only': true }),
      '--blockdev', JSON.stringify({ driver: 'raw', 'node-name': 'disk0', file: 'file0', 'read-only': true }),
      '--nbd-server', JSON.stringify({ addr: { type: 'unix', path: sock } }),
      '--export', JSON.stringify({ type: 'nbd', id: 'e0', 'node-name': 'disk0', name: 'disk', writable: false }),
      '--daemonize', '--pidfile', pidFile,
    ]);
    pids.push(Number(readFileSync(pidFile, 'utf8').trim()));
    sourcePids.push(pids.at(-1)!);
    const runDir = join(t, `${name}-run`);
    mkdirSync(runDir);
    return startRemoteExport({ source: { socket: sock, exportName: 'disk' }, tlsDir: exportServer, identities: ['CN=scanner'], bind: { host: '127.0.0.1' }, runDir, domain: 'bench', disk: 'vda' });
  }

  // 1% of the files rewritten in place of themselves (new content, new blocks), by debugfs.
  const after = join(t, 'after.img');
  copyFileSync(before, after);
  const changedFiles: { path: string; size: number }[] = [];
  const cmds: string[] = [];
  const src = join(t, 'new');
  mkdirSync(src);
  const step = Math.round(100);
  for (let i = 7; i < FILES; i += step) {
    const sub = `d${String(i % 40).padStart(2, '0')}`;
    const name = `f${String(i).padStart(5, '0')}.bin`;
    const b = randomBytes(sz[i]!);
    writeFileSync(join(src, name), b);
    cmds.push(`cd /${sub}`, `rm ${name}`, `write ${join(src, name)} ${name}`);
    changedFiles.push({ path: `/${sub}/${name}`, size: b.length });
  }
  writeFileSync(join(t, 'debugfs.cmd'), cmds.join('\n') + '\n');
  await execa('debugfs', ['-w', '-f', join(t, 'debugfs.cmd'), after]);
  const extents = diffExtents(before, after);
  const changedExtentBytes = extents.reduce((n, e) => n + e[1], 0);
  const changedFileBytes = changedFiles.reduce((n, f) => n + f.size, 0);
  await execa('sync');

  const expBefore = await serve(before, 'before');
  const expAfter = await serve(after, 'after');
  pids.push(expBefore.pid, expAfter.pid);
  const disk = (uri: string, image: string, ex?: ExtentPair[], ownerIndex?: ScanJob['ownerIndex']): ScanJob => ({
    id: `j${Math.random().toString(16).slice(2)}`, domain: 'bench', disks: [{ target: 'vda', uri, size: statSync(image).size, ...(ex ? { extents: ex } : {}) }],
    ...(ownerIndex ? { ownerIndex } : {}),
  });
  // The incremental row as a service scanning the same domain again and again runs it: the scanner
  // holds an owner index of the earlier state, with the granule digests of the files it read. Each
  // timed run gets its own, made untimed just before by a full scan of the earlier image.
  let prepared = 0;
  const prepare = () => post(url, disk(expBefore.uri, before, undefined, { next: `before-${++prepared}` }), hv);
  const incremental = () => post(url, disk(expAfter.uri, after, extents, { base: `before-${prepared}`, next: `after-${prepared}` }), hv);
  const clamdCpu = () => cpuTree(clamd.pid!);
  const scannerCpu = () => cpuTree(scanner.pid!) + cpuTree(expBefore.pid) + cpuTree(expAfter.pid);

  // Warm-up, once per kind of run as for the local rows below: page cache for the images and the
  // tree, clamd's engine, and the scanner's code for both kinds of scan (a long-running service's
  // scans are warm; the first incremental of a fresh process pays ~0.2 s of compilation).
  await post(url, disk(expBefore.uri, before), hv);
  await post(url, disk(expAfter.uri, after, extents), hv);
  await prepare();
  await incremental();
  const wrap = (cmd: string) => ['-c', `${cmd}; r=$?; [ $r -le 1 ]`];
  const clamdscan = `clamdscan --config-file=${conf} --multiscan --fdpass --no-summary --infected ${tree} >/dev/null`;
  const clamscan = `clamscan -r --no-summary --infected -d ${db} ${tree} >/dev/null`;
  // The same files sent the way the scanner must send them (INSTREAM: the scanner host has no file
  // to pass): what clamd's side of that protocol costs, apart from virtcbt's reading over NBD.
  const clamdscanStream = `clamdscan --config-file=${conf} --multiscan --stream --no-summary --infected ${tree} >/dev/null`;
  // clamdscan (Debian's clamdscan package) may not be installed: then the same request it sends for
  // --multiscan, MULTISCAN DIR on clamd's socket (clamd opens the files itself instead of getting
  // them passed with --fdpass; it runs as the same user here). The row's name says which ran.
  const haveClamdscan = (await execa('sh', ['-c', 'command -v clamdscan'], { reject: false })).exitCode === 0;
  const multiscan = async (): Promise<{ wallS: number; cpuS: number }> => {
    if (haveClamdscan) return timed('sh', wrap(clamdscan), t);
    const t0 = process.hrtime.bigint();
    const out = await clamdCommand(socket, `MULTISCAN ${tree}`);
    if (!/FOUND/.test(out)) throw new Error(`clamd MULTISCAN found nothing: ${out.slice(0, 500)}`);
    return { wallS: Number(process.hrtime.bigint() - t0) / 1e9, cpuS: 0 };
  };
  await multiscan();

  interface Row { name: string; walls: number[]; cpu: number[]; clamdCpu: number[]; bytes: number; frontCpu?: number[]; sourceCpu?: number[]; nbd?: number; fileData?: number; files?: number; found?: string; handoff?: ScanResult['clamdHandoff'] }
  const rows: Row[] = [
    { name: 'virtcbt-scanner full scan, NBD+TLS', walls: [], cpu: [], clamdCpu: [], bytes: fileBytes },
    { name: haveClamdscan ? 'clamdscan --multiscan --fdpass, local files' : 'clamd MULTISCAN (clamdscan --multiscan\'s request, no fdpass), local files', walls: [], cpu: [], clamdCpu: [], bytes: fileBytes },
    { name: 'clamscan -r, local files', walls: [], cpu: [], clamdCpu: [], bytes: fileBytes },
    { name: 'virtcbt-scanner incremental (1% of files changed; MiB/s of the changed files), NBD+TLS', walls: [], cpu: [], clamdCpu: [], bytes: changedFileBytes },
    { name: 'clamdscan --multiscan --stream (INSTREAM, as the scanner sends), local files', walls: [], cpu: [], clamdCpu: [], bytes: fileBytes },
    { name: 'virtcbt-scanner incremental without an owner index (every inode table read), NBD+TLS', walls: [], cpu: [], clamdCpu: [], bytes: changedFileBytes },
  ];
  const loadBefore = load();
  for (let i = 0; i < runs; i++) {
    for (let k = 0; k < rows.length; k++) {
      const j = (i + k) % rows.length;
      const r = rows[j]!;
      if (ROWS.length && !ROWS.includes(j + 1)) continue;
      if (j === 4 && !haveClamdscan) continue;
      if (j === 3) await prepare();
      const c0 = clamdCpu();
      if (j === 0 || j === 3 || j === 5) {
        const s0 = scannerCpu();
        const f0 = cpuTree(expBefore.pid) + cpuTree(expAfter.pid);
        const src0 = sourcePids.reduce((n, p) => n + cpuTree(p), 0);
        // The full row as virtcbtd asks for it: with an owner index built beside the walk.
        const { result, wallS } = j === 0 ? await post(url, disk(expBefore.uri, before, undefined, process.env.BENCH_FULL_NO_INDEX ? undefined : { next: `full-${i}` }), hv) : j === 3 ? await incremental() : await post(url, disk(expAfter.uri, after, extents), hv);
        const cpu = scannerCpu() - s0;
        const front = cpuTree(expBefore.pid) + cpuTree(expAfter.pid) - f0;
        const source = sourcePids.reduce((n, p) => n + cpuTree(p), 0) - src0;
        r.walls.push(wallS);
        r.cpu.push(cpu);
        (r.frontCpu ??= []).push(front);
        (r.sourceCpu ??= []).push(source);
        if (TRACE) console.error(`cpu ${j === 0 ? 'full' : 'incremental'}: scanner+front end ${cpu.toFixed(2)} s, of which front end ${front.toFixed(2)} s; clamd ${(clamdCpu() - c0).toFixed(2)} s; source export ${source.toFixed(2)} s (in no row's CPU)`);
        r.nbd = result.scanned.nbdBytesRead;
        r.fileData = result.scanned.bytesRead;
        r.files = result.scanned.filesOpened;
        r.found = result.infected.map((f) => `${f.path} ${f.signature}`).join(', ') || 'none';
        r.handoff = result.clamdHandoff;
        if (!result.complete) throw new Error(`scan not complete: ${JSON.stringify(result).slice(0, 2000)}`);
      } else {
        const s = j === 1 ? await multiscan() : await timed('sh', wrap(j === 4 ? clamdscanStream : clamscan), t);
        r.walls.push(s.wallS);
        r.cpu.push(s.cpuS);
      }
      r.clamdCpu.push(clamdCpu() - c0);
    }
  }
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(' ');
  console.log(`Scan: ${FILES + 1} files, ${(fileBytes / MiB).toFixed(0)} MiB of file data (random bytes, one EICAR-like file), ext4 image of ${(imgBytes / MiB).toFixed(0)} MiB; ` +
    `${SIGS} random 16-byte .ndb body signatures + 1; clamd MaxThreads ${THREADS}, scanner concurrency ${CONCURRENCY}, hand-off to clamd: ${HANDOFF}; ${runs} runs, order rotated; ` +
    `load average before ${loadBefore}, after ${load()}; ${envNote()}`);
  console.log('CPU: scanner rows: virtcbt-scanner + the TLS front ends (/proc/PID/stat); clamdscan/clamscan rows: the command\'s own; clamd CPU separately');
  console.log('');
  console.log('| what | wall (median) | MiB/s of file data | CPU (median) | clamd CPU (median) | files opened | NBD bytes read | all walls (s) |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  const w = rows.map((r) => median(r.walls));
  rows.forEach((r, j) => {
    if (r.walls.length === 0) return;
    console.log(`| ${r.name} | ${w[j]!.toFixed(2)} s | ${(r.bytes / MiB / w[j]!).toFixed(1)} | ${median(r.cpu).toFixed(2)} s | ${median(r.clamdCpu).toFixed(2)} s | ` +
      `${r.files ?? '-'} | ${r.nbd === undefined ? '-' : `${(r.nbd / MiB).toFixed(1)} MiB`} | ${fmt(r.walls)} |`);
  });
  console.log('');
  console.log(`found: full ${rows[0]!.found}; incremental ${rows[3]!.found}`);
  const h = rows[0]!.handoff;
  if (h) console.log(`full scan's hand-off to clamd: ${h.spooled} files by path from the spool, ${h.streamed} by INSTREAM${h.why ? ` (${h.why})` : ''}`);
  console.log(`full scan / clamdscan --multiscan throughput: ${(w[1]! / w[0]!).toFixed(2)}x (target >= 0.8x); full scan / clamscan -r: ${(w[2]! / w[0]!).toFixed(2)}x`);
  console.log(`incremental speed-up vs full: ${(w[0]! / w[3]!).toFixed(1)}x (target >= 20x)`);
  if (rows[0]!.walls.length && rows[1]!.walls.length) {
    // What this machine allows at all: clamd and the hypervisor's side share its cores with the scanner.
    const full = rows[0]!;
    const front = median(full.frontCpu!), source = median(full.sourceCpu!), clamd = median(full.clamdCpu);
    const floor = (clamd + front + source) / availableParallelism();
    console.log(`full scan's bound on this machine: clamd ${clamd.toFixed(2)} + TLS front end ${front.toFixed(2)} + source export ${source.toFixed(2)} CPU-s ` +
      `on ${availableParallelism()} cores is >= ${floor.toFixed(2)} s even with a scanner costing nothing: at most ${(w[1]! / floor).toFixed(2)}x the local scan; ` +
      `the scanner itself took ${median(full.cpu.map((c, i) => c - full.frontCpu![i]!)).toFixed(2)} CPU-s`);
  }
  if (rows[5]!.walls.length) {
    console.log(`incremental without an owner index: ${(w[0]! / w[5]!).toFixed(1)}x faster than full; NBD bytes ${(rows[5]!.nbd! / MiB).toFixed(2)} MiB, of which metadata ${((rows[5]!.nbd! - rows[5]!.fileData!) / MiB).toFixed(2)} MiB`);
  }
  if (rows[4]!.walls.length) {
    console.log(`clamdscan --stream / --fdpass, same files, same clamd: ${(w[1]! / w[4]!).toFixed(2)}x the throughput, clamd CPU ${(median(rows[4]!.clamdCpu) / median(rows[1]!.clamdCpu)).toFixed(2)}x ` +
      `(INSTREAM's own cost, which the scanner's spool avoids); full scan / clamdscan --stream: ${(w[4]! / w[0]!).toFixed(2)}x`);
  }
  console.log(`incremental: ${changedFiles.length} files rewritten, ${(changedFileBytes / MiB).toFixed(2)} MiB; changed extents ${extents.length}, ${(changedExtentBytes / MiB).toFixed(2)} MiB (64 KiB granules where the images differ); ` +
    `NBD bytes read ${(rows[3]!.nbd! / MiB).toFixed(2)} MiB: file contents ${(rows[3]!.fileData! / MiB).toFixed(2)} MiB = ${(rows[3]!.fileData! / changedFileBytes).toFixed(2)}x the changed files' size ` +
    `(target <= 3x) + metadata (superblock, descriptors, bitmaps, inode tables, directories, extent blocks) and the changed granules of files passed over ` +
    `${((rows[3]!.nbd! - rows[3]!.fileData!) / MiB).toFixed(2)} MiB; all of it ${(rows[3]!.nbd! / changedFileBytes).toFixed(2)}x the changed files' size; files opened ${rows[3]!.files}`);
  await expBefore.close();
  await expAfter.close();
  if (GUEST_SCANS > 0) await scanRunningGuest(url, hv, exportServer);
} finally {
  for (const pid of pids.reverse()) {
    try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
  }
  await new Promise((r) => setTimeout(r, 500));
  dir.remove();
  for (const f of onExit) f();
}
