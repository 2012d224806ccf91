// A small lab for the demo and the benchmarks: a libvirt domain made from the built guest (its
// own copies of kernel, initrd and disks), a private virtcbtd, and the CLI, all real processes.
import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GuestAgent, LibvirtTransport } from '../guest/index.js';
import { READY_MARKER, buildGuestImages, guestDomainXml, repoRoot } from '../guestimage/index.js';
import { pollUntil } from '../util/abort.js';
import { VirtcbtError } from '../util/errors.js';

export const LIBVIRT_URI = 'qemu:///system';
/** QEMU runs as libvirt-qemu: images must live where it can reach them. */
export const IMAGES_BASE = '/var/lib/libvirt/images';

export async function virsh(args: string[], opts: { reject?: boolean } = {}) {
  return execa('virsh', ['-c', LIBVIRT_URI, ...args], { reject: opts.reject ?? true, timeout: 120_000 });
}

/** Starts virtlogd and libvirtd as set-up does when they are not running (hosts without systemd). */
export async function ensureLibvirtd(): Promise<void> {
  const gone = await Promise.all(['virtlogd', 'libvirtd'].map(async (d) => (await execa('pgrep', ['-x', d], { reject: false })).exitCode !== 0));
  if (gone.some(Boolean)) await execa('bash', [join(repoRoot(), 'scripts', 'libvirt-daemons.sh')]);
  await pollUntil(async () => (await virsh(['version'], { reject: false })).exitCode === 0, 'libvirtd to answer', { timeoutMs: 30_000, intervalMs: 200 });
}

export interface LabDomainOptions {
  name: string;
  /** Size of vda (the ext4 data disk, grown from the built image). */
  dataBytes?: number;
  /** Size of vdb (an empty qcow2 scratch disk). */
  scratchBytes?: number;
  memoryMiB?: number;
  /** Leave out the guest-agent channel. */
  noAgentChannel?: boolean;
  /** User-mode network interfaces (no bridge needed), by MAC. */
  interfaces?: { mac: string }[];
}

export interface LabDomain {
  name: string;
  dir: string;
  disks: { target: string; file: string }[];
  agent: GuestAgent;
  /** Starts the domain and waits until the guest agent answers; returns milliseconds. */
  start(): Promise<number>;
  destroy(): Promise<void>;
  /** Destroys, undefines (with checkpoint metadata) and removes the files. */
  remove(): Promise<void>;
  /** Runs a program in the guest; throws unless it exits 0. */
  exec(path: string, args: string[], timeoutMs?: number): Promise<string>;
}

export async function createLabDomain(o: LabDomainOptions): Promise<LabDomain> {
  await ensureLibvirtd();
  const images = await buildGuestImages();
  const dir = join(IMAGES_BASE, o.name);
  await virsh(['destroy', o.name], { reject: false });
  await virsh(['undefine', o.name, '--checkpoints-metadata', '--snapshots-metadata'], { reject: false });
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const vda = join(dir, 'data.qcow2');
  const vdb = join(dir, 'scratch.qcow2');
  await execa('cp', ['--sparse=always', images.dataExt4, vda]);
  if (o.dataBytes) await execa('qemu-img', ['resize', '-q', vda, String(o.dataBytes)]);
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', vdb, String(o.scratchBytes ?? 256 * 1024 * 1024)]);
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd.gz');
  await copyFile(images.kernel, kernel);
  await copyFile(images.initrd, initrd);
  const serialLog = join(dir, 'serial.log');
  await writeFile(serialLog, '');
  await execa('chown', ['-R', 'libvirt-qemu:libvirt-qemu', dir]);
  const xml = guestDomainXml({
    name: o.name, kernel, initrd, serialLog, memoryMiB: o.memoryMiB ?? 256, noAgentChannel: o.noAgentChannel, interfaces: o.interfaces,
    disks: [{ target: 'vda', file: vda, format: 'qcow2' }, { target: 'vdb', file: vdb, format: 'qcow2' }],
  });
  const xmlFile = join(dir, 'domain.xml');
  await writeFile(xmlFile, xml);
  await virsh(['define', xmlFile]);
  const agent = new GuestAgent(new LibvirtTransport(o.name, { uri: LIBVIRT_URI }));
  const lab: LabDomain = {
    name: o.name,
    dir,
    disks: [{ target: 'vda', file: vda }, { target: 'vdb', file: vdb }],
    agent,
    async start() {
      const t0 = Date.now();
      await writeFile(serialLog, '');
      await execa('chown', ['libvirt-qemu:libvirt-qemu', serialLog]);
      await virsh(['start', o.name]);
      await pollUntil(async () => (await readFile(serialLog, 'utf8')).includes(READY_MARKER), `${o.name} to boot`, { timeoutMs: 180_000, intervalMs: 200 });
      if (!o.noAgentChannel) await agent.waitReady({ timeoutMs: 60_000 });
      return Date.now() - t0;
    },
    async destroy() {
      await virsh(['destroy', o.name], { reject: false });
    },
    async remove() {
      await virsh(['destroy', o.name], { reject: false });
      await virsh(['undefine', o.name, '--checkpoints-metadata', '--snapshots-metadata'], { reject: false });
      await rm(dir, { recursive: true, force: true });
    },
    async exec(path, args, timeoutMs = 300_000) {
      const r = await agent.exec(path, args, { timeoutMs });
      if (r.exitCode !== 0) throw new VirtcbtError(`${path} ${args.join(' ')} failed in the guest (exit ${r.exitCode}): ${r.stderr.trim()}`);
      return r.stdout;
    },
  };
  return lab;
}

export interface LabDaemon {
  configFile: string;
  pid: number;
  socket: string;
  /** Runs the CLI with this daemon's config; throws with its stderr unless it exits 0 (or one of `okExits`). */
  cli(args: string[], okExits?: number[]): Promise<{ stdout: string; stderr: string; ms: number; exitCode: number }>;
  stop(): Promise<void>;
  log(): string;
}

/** A private virtcbtd with its own state, run directory and QMP-socket directory. */
export async function startLabDaemon(base: string, extra: Record<string, unknown> = {}): Promise<LabDaemon> {
  const root = repoRoot();
  await mkdir(base, { recursive: true });
  const configFile = join(base, 'config.json');
  const socket = join(base, 'run', 'virtcbtd.sock');
  await writeFile(configFile, JSON.stringify({
    stateDir: join(base, 'state'),
    runDir: join(base, 'run'),
    qmpSocketDir: '/var/lib/libvirt/qemu/virtcbt-lab',
    daemon: { socket, spoolDir: join(base, 'state', 'spool'), enabledDir: join(base, 'state', 'enabled') },
    reconcile: { intervalSeconds: 3600 },
    ...extra,
  }, null, 2));
  let output = '';
  const child: ChildProcess = spawn(process.execPath, [join(root, 'dist/src/daemon/main.js'), '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (b: Buffer) => { output += b.toString(); });
  child.stderr!.on('data', (b: Buffer) => { output += b.toString(); });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await pollUntil(() => {
    if (child.exitCode !== null) throw new VirtcbtError(`virtcbtd exited at start:\n${output}`);
    return output.includes('virtcbtd ready');
  }, 'virtcbtd to start', { timeoutMs: 60_000, intervalMs: 50 });
  return {
    configFile,
    pid: child.pid!,
    socket,
    log: () => output,
    async cli(args, okExits = [0]) {
      const t0 = performance.now();
      const r = await execa(process.execPath, [join(root, 'dist/src/cli/main.js'), '--config', configFile, ...args], { reject: false });
      const exitCode = r.exitCode ?? -1;
      if (!okExits.includes(exitCode)) throw new VirtcbtError(`virtcbt ${args.join(' ')} failed (exit ${exitCode}): ${r.stderr.trim()}`);
      return { stdout: r.stdout, stderr: r.stderr, ms: performance.now() - t0, exitCode };
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
