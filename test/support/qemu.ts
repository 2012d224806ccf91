// Starts the test guest under real QEMU (TCG) with its disks as -blockdev nodes the way libvirt
// gives them, a dedicated QMP socket and the guest-agent socket; tears it all down afterwards.
import { execa, type ResultPromise } from 'execa';
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_PORT_NAME, ERROR_MARKER, GUEST_APPEND, READY_MARKER } from '../../src/guestimage/index.js';
import { onCleanup, trackChild } from './cleanup.js';
import { guestImages } from './images.js';
import { qmpOnce } from './qmp-raw.js';
import { CHILD_PID_FILE, OWNER_FILE } from './sweep.js';

export const QEMU_BINARY = 'qemu-system-x86_64';

export interface QemuGuestOptions {
  /** Add the xfs disk as vdc (mounted at /mnt/xfs in the guest). */
  xfs?: boolean;
  /** Appended to QEMU's command line as given. */
  extraArgs?: string[];
  memoryMiB?: number;
  /**
   * Images to copy instead of the pristine base disks (e.g. a restored backup). The copy is the
   * guest's; the source is not touched. data must still carry the virtcbt-data ext4 label.
   */
  images?: { data?: string; scratch?: string; xfs?: string };
  /** How long to wait for the ready marker (default 120 s: TCG on a loaded 2-core machine). */
  bootTimeoutMs?: number;
}

export interface QemuGuest {
  dir: string;
  qmpSocket: string;
  agentSocket: string;
  serialLog: string;
  pid: number;
  /** The guest's own copies of the disk images (data: qcow2, scratch: raw, xfs: qcow2). */
  disks: { data: string; scratch: string; xfs?: string };
  /** Format node names (file nodes are NAME-file). Device ids: data=vda, scratch=vdb, xfs=vdc. */
  nodes: { data: 'data'; scratch: 'scratch'; xfs?: 'xfs' };
  /** Milliseconds from spawning QEMU to the ready marker. */
  bootMs: number;
  /** Resolves with QEMU's exit code (null if killed by a signal) once it has exited. */
  exited: Promise<number | null>;
  /** Sends a signal (default SIGKILL) and waits for QEMU to exit. Keeps `dir` (images stay for inspection). */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** QMP quit (SIGTERM, then SIGKILL, if that does not end it in time), then removes `dir`. Idempotent. */
  stop(): Promise<void>;
  /** The serial console so far. */
  readSerial(): Promise<string>;
}

export async function qemuAvailable(): Promise<boolean> {
  const r = await execa(QEMU_BINARY, ['--version'], { reject: false });
  return r.exitCode === 0;
}

/** Copies a disk image keeping it sparse (base images are mostly holes). */
export async function copySparse(src: string, dst: string): Promise<void> {
  await execa('cp', ['--sparse=always', src, dst]);
}

/**
 * Whether the file's bytes contain `needle` (which holds no zero byte). Only what the filesystem
 * stores is read: a hole reads as zeros and cannot hold it, and a restored disk of hundreds of MiB
 * is mostly holes. Runs of stored data are found with `qemu-img map` (SEEK_DATA/SEEK_HOLE; where
 * the filesystem cannot tell, it reports everything as data and everything is read).
 */
export async function sparseFileContains(path: string, needle: Buffer): Promise<boolean> {
  if (needle.includes(0)) throw new Error('sparseFileContains: the needle must not contain a zero byte');
  const r = await execa('qemu-img', ['map', '-f', 'raw', '--output=json', path], { reject: false });
  // Not mapped (not a regular file, say): read it all.
  const map = r.exitCode === 0
    ? JSON.parse(r.stdout) as { start: number; length: number; data: boolean; zero: boolean }[]
    : [{ start: 0, length: statSync(path).size, data: true, zero: false }];
  // Adjacent stored extents are one run, so a needle across their boundary is found.
  const runs: [number, number][] = [];
  for (const e of map) {
    if (!e.data && e.zero) continue;
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === e.start) last[1] += e.length;
    else runs.push([e.start, e.length]);
  }
  const CHUNK = 16 * 1024 * 1024;
  const fd = openSync(path, 'r');
  try {
    for (const [start, length] of runs) {
      // Chunks overlap by needle.length - 1 bytes: a needle across a chunk boundary is found too.
      for (let off = start; off < start + length; off += CHUNK) {
        const n = Math.min(CHUNK + needle.length - 1, start + length - off);
        const buf = Buffer.alloc(n);
        const got = readSync(fd, buf, 0, n, off);
        if (buf.subarray(0, got).includes(needle)) return true;
      }
    }
    return false;
  } finally {
    closeSync(fd);
  }
}

/** Disk images under test: one file node and one format node each, attached as virtio-blk. */
function blockdevArgs(name: string, driver: 'qcow2' | 'raw', filename: string, id: string): string[] {
  return [
    '-blockdev', JSON.stringify({ driver: 'file', 'node-name': `${name}-file`, filename, 'auto-read-only': true, discard: 'unmap' }),
    '-blockdev', JSON.stringify({ driver, 'node-name': name, file: `${name}-file`, 'read-only': false, discard: 'unmap' }),
    '-device', `virtio-blk-pci,id=${id},drive=${name}`,
  ];
}

export async function startQemuGuest(opts: QemuGuestOptions = {}): Promise<QemuGuest> {
  const images = await guestImages();
  const dir = await mkdtemp(join(tmpdir(), 'virtcbt-qemu-'));
  await writeFile(join(dir, OWNER_FILE), String(process.pid));

  let child: ResultPromise | undefined;
  let untrack = () => {};
  let stopped: Promise<void> | undefined;
  const exitState: { code?: number | null } = {};
  let resolveExit!: (code: number | null) => void;
  const exited = new Promise<number | null>((r) => { resolveExit = r; });

  const waitExit = async (ms: number): Promise<boolean> => {
    if (!child || 'code' in exitState) return true;
    let t: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((r) => { t = setTimeout(() => r(false), ms); });
    const done = await Promise.race([exited.then(() => true as const), timedOut]);
    clearTimeout(t);
    return done;
  };
  const signal = (sig: NodeJS.Signals) => {
    if (child?.pid !== undefined && !('code' in exitState)) {
      try { process.kill(child.pid, sig); } catch { /* already gone */ }
    }
  };
  const kill = async (sig: NodeJS.Signals = 'SIGKILL') => {
    signal(sig);
    if (!(await waitExit(15_000))) throw new Error(`QEMU ${child?.pid} in ${dir} did not exit within 15 s of ${sig}`);
  };
  const qmpSocket = join(dir, 'qmp.sock');
  const stop = () => {
    stopped ??= (async () => {
      if (child && !('code' in exitState)) {
        // quit lets QEMU flush qcow2 metadata and persistent bitmaps; a test still holding the
        // (single-client) QMP socket makes this time out, and SIGTERM does the same shutdown.
        await qmpOnce(qmpSocket, 'quit', undefined, 3_000).catch(() => undefined);
        if (!(await waitExit(10_000))) {
          signal('SIGTERM');
          if (!(await waitExit(5_000))) await kill('SIGKILL');
        }
      }
      untrack();
      await rm(dir, { recursive: true, force: true });
    })();
    return stopped;
  };
  // Registered before anything below can fail or wait.
  onCleanup(stop);

  const disks: QemuGuest['disks'] = { data: join(dir, 'data.qcow2'), scratch: join(dir, 'scratch.raw') };
  await copySparse(opts.images?.data ?? images.dataExt4, disks.data);
  await copySparse(opts.images?.scratch ?? images.scratchRaw, disks.scratch);
  if (opts.xfs) {
    disks.xfs = join(dir, 'xfs.qcow2');
    await copySparse(opts.images?.xfs ?? images.dataXfs, disks.xfs);
  }
  const nodes: QemuGuest['nodes'] = { data: 'data', scratch: 'scratch', ...(opts.xfs ? { xfs: 'xfs' as const } : {}) };

  const agentSocket = join(dir, 'qga.sock');
  const serialLog = join(dir, 'serial.log');
  const stderrLog = join(dir, 'qemu.stderr');
  const args = [
    '-accel', 'tcg',
    '-m', String(opts.memoryMiB ?? 256),
    '-nodefaults', '-display', 'none',
    '-name', `virtcbt-test,debug-threads=on`,
    '-pidfile', join(dir, CHILD_PID_FILE),
    '-kernel', images.kernel, '-initrd', images.initrd, '-append', GUEST_APPEND,
    '-qmp', `unix:${qmpSocket},server=on,wait=off`,
    '-chardev', `file,id=serial0,path=${serialLog}`,
    '-serial', 'chardev:serial0',
    '-device', 'virtio-serial-pci,id=virtio-serial0',
    '-chardev', `socket,id=charchannel0,path=${agentSocket},server=on,wait=off`,
    '-device', `virtserialport,bus=virtio-serial0.0,nr=1,chardev=charchannel0,id=channel0,name=${AGENT_PORT_NAME}`,
    ...blockdevArgs('data', 'qcow2', disks.data, 'vda'),
    ...blockdevArgs('scratch', 'raw', disks.scratch, 'vdb'),
    ...(disks.xfs ? blockdevArgs('xfs', 'qcow2', disks.xfs, 'vdc') : []),
    ...(opts.extraArgs ?? []),
  ];

  const started = Date.now();
  child = execa(QEMU_BINARY, args, { stdin: 'ignore', stdout: 'ignore', stderr: { file: stderrLog }, reject: false, cleanup: true });
  if (child.pid === undefined) {
    await child;
    throw new Error(`could not start ${QEMU_BINARY}: ${await tail(stderrLog)}`);
  }
  const pid = child.pid;
  untrack = trackChild(pid);
  void child.then((r) => {
    exitState.code = r.exitCode ?? null;
    untrack();
    resolveExit(exitState.code);
  });

  const readSerial = () => readFile(serialLog, 'utf8').catch(() => '');
  const deadline = started + (opts.bootTimeoutMs ?? 120_000);
  for (;;) {
    const serial = await readSerial();
    if (serial.includes(READY_MARKER)) break;
    if ('code' in exitState) {
      throw new Error(
        `QEMU exited (code ${exitState.code}) before the test guest was ready.\n` +
          `stderr: ${await tail(stderrLog)}\nserial log tail:\n${lastLines(serial)}`,
      );
    }
    if (Date.now() > deadline) {
      throw new Error(
        `test guest not ready within ${opts.bootTimeoutMs ?? 120_000} ms (no ${READY_MARKER} in ${serialLog}).\n` +
          `serial log tail:\n${lastLines(serial)}\nstderr: ${await tail(stderrLog)}`,
      );
    }
    await waitExit(100);
  }
  const bootMs = Date.now() - started;
  const serial = await readSerial();
  if (serial.includes(ERROR_MARKER)) {
    throw new Error(`test guest reported errors while booting:\n${lastLines(serial)}`);
  }
  if (!existsSync(qmpSocket)) throw new Error(`QEMU is running but ${qmpSocket} does not exist`);

  return { dir, qmpSocket, agentSocket, serialLog, pid, disks, nodes, bootMs, exited, kill, stop, readSerial };
}

async function tail(file: string): Promise<string> {
  return lastLines(await readFile(file, 'utf8').catch(() => '(none)'));
}

function lastLines(text: string, n = 30): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}
