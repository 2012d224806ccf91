// Starts the test guest as a real libvirt domain (type='qemu', i.e. TCG) with direct kernel boot,
// a qcow2 data disk, a raw scratch disk, the guest-agent channel and optionally virtcbt's own QMP
// socket; domains left by crashed runs are swept.
import { execa } from 'execa';
import { execFileSync } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AGENT_PORT_NAME, READY_MARKER, guestDomainXml } from '../../src/guestimage/index.js';
import { onCleanup, onExitSync } from './cleanup.js';
import { guestImages } from './images.js';
import { copySparse } from './qemu.js';
import { pidAlive } from './sweep.js';

export const LIBVIRT_URI = 'qemu:///system';
export const DOMAIN_PREFIX = 'virtcbt-test-';
/** QEMU runs as libvirt-qemu: images must live where it can reach them. */
export const IMAGES_BASE = '/var/lib/libvirt/images';
/** libvirt-qemu may create sockets here (not under /run: permission denied). */
export const QMP_SOCKET_BASE = '/var/lib/libvirt/qemu';
export const QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0';

export interface LibvirtGuestOptions {
  /** Short name part; the domain is virtcbt-test-NAME-PID-RAND. */
  name?: string;
  /** Add `<qemu:commandline>` -qmp unix:PATH,server=on,wait=off (PATH under /var/lib/libvirt/qemu). */
  withQmpSocket?: boolean;
  /** Define a persistent domain (default) or create a transient one. */
  persistent?: boolean;
  memoryMiB?: number;
  bootTimeoutMs?: number;
  /** Image format of the scratch disk vdb (default raw; virtcbt tracks only qcow2). */
  scratchFormat?: 'raw' | 'qcow2';
  /** Start the domain after defining it (default true); else call start() later. */
  start?: boolean;
  /** User-mode network interfaces (work without bridges), by MAC, optionally with the link down. */
  interfaces?: { mac: string; linkDown?: boolean }[];
  /** Leave out the guest-agent channel (a guest without an agent); ready is then the serial console's word alone. */
  noAgentChannel?: boolean;
}

export interface LibvirtGuest {
  name: string;
  dir: string;
  qmpSocket?: string;
  serialLog: string;
  /** data: qcow2 on vda, scratch: raw on vdb. */
  disks: { data: string; scratch: string };
  bootMs: number;
  persistent: boolean;
  /** The domain XML it was defined with. */
  xml: string;
  /** virsh destroy (no error if already off). */
  destroy(): Promise<void>;
  /** Starts the (defined, shut off) domain and waits until the guest agent answers; returns ms taken. */
  start(): Promise<number>;
  /** destroy, undefine (with checkpoint/snapshot metadata), remove dir and QMP socket. Idempotent. */
  undefine(): Promise<void>;
}

export async function virsh(args: string[], opts: { reject?: boolean; timeoutMs?: number } = {}) {
  return execa('virsh', ['-c', LIBVIRT_URI, ...args], { reject: opts.reject ?? true, timeout: opts.timeoutMs ?? 60_000 });
}

/**
 * libvirt decides whether KVM is usable by checking /dev/kvm as libvirt-qemu, while its capability
 * probe (run before QEMU drops privileges) finds KVM working. When /dev/kvm is root-only (as on
 * these machines, where udev never set it to root:kvm 0660) the two disagree, libvirt throws its
 * capability cache away on every lookup and `virsh define` takes about a minute. Give /dev/kvm
 * Debian's usual ownership; the test domains still run type='qemu' (TCG).
 */
export async function fixKvmDevicePermissions(): Promise<void> {
  let st;
  try {
    st = await stat('/dev/kvm');
  } catch {
    return; // no KVM at all: libvirt agrees with itself
  }
  const kvmGid = Number((await execa('getent', ['group', 'kvm'], { reject: false })).stdout.split(':')[2]);
  if (!Number.isInteger(kvmGid)) return;
  if (st.gid === kvmGid && (st.mode & 0o060) === 0o060) return;
  await execa('chgrp', ['kvm', '/dev/kvm']);
  await execa('chmod', ['0660', '/dev/kvm']);
}

/** Starts virtlogd/libvirtd if they are not running (no systemd here), then waits until virsh answers. */
export async function ensureLibvirtd(): Promise<void> {
  await fixKvmDevicePermissions();
  // Started as setup.sh starts them (libvirtd under a subreaper) when a test stopped them.
  const gone = await Promise.all(['virtlogd', 'libvirtd'].map(async (d) => (await execa('pgrep', ['-x', d], { reject: false })).exitCode !== 0));
  if (gone.some(Boolean)) await execa('bash', [join(import.meta.dirname, '../../scripts/libvirt-daemons.sh')]);
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await virsh(['version'], { reject: false, timeoutMs: 10_000 });
    if (r.exitCode === 0) return;
    if (Date.now() > deadline) throw new Error(`libvirtd does not answer on ${LIBVIRT_URI}: ${r.stderr}. Run bash scripts/setup.sh`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

const NAME_RE = new RegExp(`^${DOMAIN_PREFIX}.*-(\\d+)-[0-9a-f]{6}$`);

/** Removes virtcbt-test-* domains (and their directories and sockets) whose test process is gone. */
export async function sweepStaleDomains(): Promise<string[]> {
  const list = await virsh(['list', '--all', '--name']);
  const swept: string[] = [];
  for (const name of list.stdout.split('\n').map((s) => s.trim())) {
    const m = NAME_RE.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    await removeDomain(name);
    swept.push(name);
  }
  // Directories (and sockets) of runs that died between creating them and defining the domain.
  const leftovers = [
    ...(await readdir(IMAGES_BASE).catch(() => [] as string[])),
    ...(await readdir(QMP_SOCKET_BASE).catch(() => [] as string[])).map((f) => f.replace(/\.qmp$/, '')),
  ];
  for (const name of new Set(leftovers)) {
    const m = NAME_RE.exec(name);
    if (!m || pidAlive(Number(m[1])) || swept.includes(name)) continue;
    await removeDomain(name);
    swept.push(name);
  }
  return swept;
}

async function removeDomain(name: string): Promise<void> {
  await virsh(['destroy', name], { reject: false });
  await virsh(['undefine', name, '--checkpoints-metadata', '--snapshots-metadata'], { reject: false });
  await rm(join(IMAGES_BASE, name), { recursive: true, force: true });
  await rm(join(QMP_SOCKET_BASE, `${name}.qmp`), { force: true });
}

let swept: Promise<unknown> | undefined;

export async function startLibvirtGuest(opts: LibvirtGuestOptions = {}): Promise<LibvirtGuest> {
  await ensureLibvirtd();
  swept ??= sweepStaleDomains();
  await swept;
  const images = await guestImages();

  const name = `${DOMAIN_PREFIX}${opts.name ?? 'vm'}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const dir = join(IMAGES_BASE, name);
  const qmpSocket = opts.withQmpSocket ? join(QMP_SOCKET_BASE, `${name}.qmp`) : undefined;
  const persistent = opts.persistent ?? true;
  let removed: Promise<void> | undefined;
  const destroy = async () => {
    await virsh(['destroy', name], { reject: false });
  };
  // If this process dies without running cleanups, at least stop the guest (the sweep of a later run removes the rest).
  const dropExitHook = onExitSync(() => {
    execFileSync('virsh', ['-c', LIBVIRT_URI, 'destroy', name], { stdio: 'ignore', timeout: 10_000 });
  });
  const undefine = () => {
    removed ??= removeDomain(name).finally(dropExitHook);
    return removed;
  };
  onCleanup(undefine);

  await mkdir(dir, { recursive: true, mode: 0o755 });
  const scratchFormat = opts.scratchFormat ?? 'raw';
  const disks = { data: join(dir, 'data.qcow2'), scratch: join(dir, `scratch.${scratchFormat === 'raw' ? 'raw' : 'qcow2'}`) };
  await copySparse(images.dataExt4, disks.data);
  if (scratchFormat === 'raw') await copySparse(images.scratchRaw, disks.scratch);
  else await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', images.scratchRaw, disks.scratch]);
  // Own copies of kernel and initrd: libvirt relabels (chowns) what a domain uses, and must not touch the cache.
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd.gz');
  await copyFile(images.kernel, kernel);
  await copyFile(images.initrd, initrd);
  const serialLog = join(dir, 'serial.log');
  // QEMU (as libvirt-qemu) opens the serial file itself: create it and let that user write the directory.
  await writeFile(serialLog, '');
  await execa('chown', ['-R', 'libvirt-qemu:libvirt-qemu', dir]);

  const xml = domainXml({ name, kernel, initrd, disks, serialLog, qmpSocket, memoryMiB: opts.memoryMiB ?? 256, scratchFormat, interfaces: opts.interfaces, noAgentChannel: opts.noAgentChannel });
  const xmlFile = join(dir, 'domain.xml');
  await writeFile(xmlFile, xml);
  if (persistent) await virsh(['define', xmlFile]);
  const start = async (): Promise<number> => {
    const started = Date.now();
    await writeFile(serialLog, '');
    await execa('chown', ['libvirt-qemu:libvirt-qemu', serialLog]);
    if (persistent) await virsh(['start', name]);
    else await virsh(['create', xmlFile]);
    await waitReady(name, serialLog, started, opts.bootTimeoutMs ?? 120_000, !opts.noAgentChannel);
    return Date.now() - started;
  };
  const bootMs = opts.start === false && persistent ? 0 : await start();
  return { name, dir, qmpSocket, serialLog, disks, bootMs, persistent, xml, destroy, undefine, start };
}


/** Ready = the guest says so on the serial console AND libvirt's own agent connection answers. */
async function waitReady(name: string, serialLog: string, started: number, timeoutMs: number, agent = true): Promise<void> {
  const deadline = started + timeoutMs;
  let lastErr = '';
  for (;;) {
    const serial = await readFile(serialLog, 'utf8').catch(() => '');
    // Without the agent's port the guest says so once its disks are up (after looking for the port a while).
    if (!agent && serial.includes(`no virtio-serial port named ${AGENT_PORT_NAME}`)) break;
    if (serial.includes(READY_MARKER)) {
      const r = await virsh(['qemu-agent-command', name, '--timeout', '5', JSON.stringify({ execute: 'guest-ping' })], { reject: false });
      if (r.exitCode === 0) break;
      lastErr = r.stderr.trim();
    }
    const state = await virsh(['domstate', name], { reject: false });
    if (state.exitCode !== 0 || !/running/.test(state.stdout)) {
      throw new Error(`libvirt domain ${name} is not running (${(state.stdout + state.stderr).trim()}).\nserial log tail:\n${lastLines(serial)}\n${await qemuLogTail(name)}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`libvirt domain ${name} not ready within ${timeoutMs} ms (${serial.includes(READY_MARKER) ? `agent: ${lastErr}` : `no ${READY_MARKER} in ${serialLog}`}).\nserial log tail:\n${lastLines(serial)}`);
    }
    await new Promise((res) => setTimeout(res, 250));
  }
}

interface DomainXmlInput {
  name: string;
  kernel: string;
  initrd: string;
  disks: { data: string; scratch: string };
  serialLog: string;
  qmpSocket?: string;
  memoryMiB: number;
  scratchFormat?: 'raw' | 'qcow2';
  interfaces?: { mac: string; linkDown?: boolean }[];
  noAgentChannel?: boolean;
}

/** The rig's two-disk guest (qcow2 data on vda, scratch on vdb), through the shared builder. */
export function domainXml(d: DomainXmlInput): string {
  return guestDomainXml({
    name: d.name, kernel: d.kernel, initrd: d.initrd, serialLog: d.serialLog, qmpSocket: d.qmpSocket, memoryMiB: d.memoryMiB, interfaces: d.interfaces, noAgentChannel: d.noAgentChannel,
    disks: [{ target: 'vda', file: d.disks.data, format: 'qcow2' }, { target: 'vdb', file: d.disks.scratch, format: d.scratchFormat ?? 'raw' }],
  });
}

async function qemuLogTail(name: string): Promise<string> {
  const log = await readFile(`/var/log/libvirt/qemu/${name}.log`, 'utf8').catch(() => '');
  return log ? `libvirt QEMU log tail:\n${lastLines(log)}` : '';
}

function lastLines(text: string, n = 30): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}
