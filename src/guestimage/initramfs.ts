// Packs the test guest's initramfs: static busybox, the host's qemu-ga and xfs_io with their
// libraries, the virtio/xfs modules and an /init that mounts the test disks, starts the agent and says so on ttyS0.
import { execa } from 'execa';
import { chmod, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { VirtcbtError } from '../util/errors.js';

/** Printed on the serial console once qemu-ga holds its port open. Test rigs wait for this line. */
export const READY_MARKER = 'VIRTCBT-GUEST-READY';
/** Prefix of lines /init prints when something it needs is missing (kept in the serial log). */
export const ERROR_MARKER = 'VIRTCBT-GUEST-ERROR';
/** The virtio-serial port name QEMU and libvirt give the guest agent channel. */
export const AGENT_PORT_NAME = 'org.qemu.guest_agent.0';
/** Filesystem labels /init looks for, so disk order on the PCI bus does not matter. */
export const DATA_LABEL = 'virtcbt-data';
export const XFS_LABEL = 'virtcbt-xfs';

export const BUSYBOX = '/bin/busybox';
export const QEMU_GA = '/usr/sbin/qemu-ga';
/** The GETFSMAP reader the guest-agent used-block map runs in the guest (busybox has fsfreeze, not this). */
export const XFS_IO = '/usr/sbin/xfs_io';

export interface InitramfsInput {
  /** Staging directory (created; becomes the initramfs root). */
  stage: string;
  /** Output path of the gzip'ed newc cpio. */
  output: string;
  release: string;
  /** lib/modules/RELEASE of the extracted kernel. */
  modulesDir: string;
  /** Module paths relative to modulesDir, in insmod order: loaded on every boot. */
  baseModules: string[];
  /** Loaded (in this order) only when a disk labelled virtcbt-xfs is attached. */
  xfsModules: string[];
}

export async function buildInitramfs(input: InitramfsInput): Promise<void> {
  const { stage } = input;
  for (const d of ['bin', 'dev', 'etc', 'proc', 'sys', 'run', 'tmp', 'mnt/data', 'mnt/xfs', 'root', 'usr']) {
    await mkdir(join(stage, d), { recursive: true });
  }
  // One bin directory; the usual other names point at it so programs find /sbin/x or /usr/bin/x.
  await symlink('bin', join(stage, 'sbin'));
  await symlink('../bin', join(stage, 'usr/bin'));
  await symlink('../bin', join(stage, 'usr/sbin'));
  await symlink('/run', join(stage, 'var'));

  await copyFile(BUSYBOX, join(stage, 'bin/busybox'));
  await chmod(join(stage, 'bin/busybox'), 0o755);
  const applets = (await execa(BUSYBOX, ['--list'])).stdout.split('\n').filter((a) => a && a !== 'busybox');
  for (const a of applets) await symlink('busybox', join(stage, 'bin', a));

  await copyProgram(QEMU_GA, join(stage, 'bin/qemu-ga'), stage, 'Install qemu-guest-agent on the host');
  await copyProgram(XFS_IO, join(stage, 'bin/xfs_io'), stage, 'Install xfsprogs on the host');

  // guest-shutdown runs /sbin/shutdown; busybox has none, and there is no init system to ask. The
  // test disks are remounted read-only first, as a real shutdown unmounts them: their journals are
  // then clean (an image read after the VM stopped has no journal left to replay).
  await writeFile(join(stage, 'bin/shutdown'),
    '#!/bin/sh\nsync\nfor m in /mnt/data /mnt/xfs; do mount -o remount,ro "$m" 2>/dev/null; done\nexec poweroff -f\n', { mode: 0o755 });

  const modDst = join(stage, 'lib/modules', input.release);
  for (const m of [...input.baseModules, ...input.xfsModules]) {
    await mkdir(join(modDst, dirname(m)), { recursive: true });
    await copyFile(join(input.modulesDir, m), join(modDst, m));
  }

  // xfs_io looks its filesystems up in the mount table.
  await symlink('/proc/mounts', join(stage, 'etc/mtab'));
  await writeFile(join(stage, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(stage, 'etc/group'), 'root:x:0:\n');
  await writeFile(join(stage, 'etc/hostname'), 'virtcbt-guest\n');
  await writeFile(join(stage, 'etc/os-release'), 'NAME="virtcbt test guest"\nID=virtcbt-guest\nVERSION_ID=1\nPRETTY_NAME="virtcbt test guest (busybox initramfs)"\n');
  await writeFile(join(stage, 'init'), initScript(input.release, input.baseModules, input.xfsModules), { mode: 0o755 });

  // newc is the only cpio format the kernel unpacks; -R 0:0 so the files belong to root in the guest.
  await execa('find', ['.', '-print0'], { cwd: stage })
    .pipe('cpio', ['--null', '--quiet', '-o', '-H', 'newc', '-R', '0:0'], { cwd: stage })
    .pipe('gzip', ['-6', '-n'], { stdout: { file: input.output } });
}

/** Copies the host's `bin` to `dst` in the stage, with every shared library it needs at the same path. */
async function copyProgram(bin: string, dst: string, stage: string, hint: string): Promise<void> {
  await copyFile(bin, dst);
  await chmod(dst, 0o755);
  for (const lib of await sharedLibraries(bin, hint)) {
    await mkdir(join(stage, dirname(lib)), { recursive: true });
    await copyFile(lib, join(stage, lib)); // copyFile follows the host's symlinks: the real file lands here
  }
}

/** Absolute paths of the shared libraries (and the dynamic loader) `ldd` reports for `bin`. */
export async function sharedLibraries(bin: string, hint = 'Install qemu-guest-agent on the host'): Promise<string[]> {
  const r = await execa('ldd', [bin], { reject: false });
  if (r.exitCode !== 0) throw new VirtcbtError(`ldd ${bin} failed: ${r.stderr || r.stdout}`, { hint });
  const libs: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]);
    else if (/not found/.test(line)) throw new VirtcbtError(`ldd ${bin}: ${line.trim()}`, { hint: `${hint} (a library is missing)` });
  }
  return libs;
}

/** The guest's PID 1, a busybox shell script. */
export function initScript(release: string, baseModules: string[], xfsModules: string[]): string {
  const insmods = (mods: string[], indent = '') => mods.map((m) => `${indent}load /lib/modules/${release}/${m}`).join('\n');
  return `#!/bin/sh
# virtcbt test guest: bring up the disks and qemu-ga without udev, then idle as PID 1.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
hostname virtcbt-guest

err() { echo "${ERROR_MARKER}: $*"; }
load() { insmod "$1" || err "insmod $1 failed"; }

# waitfor CMD...: retry a test for up to 10 s (devices appear asynchronously after insmod).
waitfor() {
  i=0
  while ! "$@" >/dev/null 2>&1; do
    i=$((i+1)); [ $i -ge 100 ] && return 1
    usleep 100000
  done
}

${insmods(baseModules)}

# Wait until every virtio block device (virtio device id 2) has its /sys/block entry, so the
# label look-ups below see all disks without waiting for ones that are not there.
nblk=0
for d in /sys/bus/virtio/devices/*/device; do
  [ "$(cat "$d" 2>/dev/null)" = 0x0002 ] && nblk=$((nblk+1))
done
blkready() { [ "$(ls /sys/block | grep -c '^vd')" -ge "$nblk" ]; }
waitfor blkready || err "only $(ls /sys/block | grep -c '^vd') of $nblk virtio disks appeared"

# Disks are found by filesystem label, so the order QEMU or libvirt gives them does not matter.
mountlabel() {
  dev=$(findfs "LABEL=$1" 2>/dev/null) || return 1
  mkdir -p "$3"
  mount -t "$2" "$dev" "$3" || err "mount $dev ($1) on $3 failed"
}
mountlabel ${DATA_LABEL} ext4 /mnt/data || err "no disk labelled ${DATA_LABEL} (the data disk, normally /dev/vda)"
if findfs LABEL=${XFS_LABEL} >/dev/null 2>&1; then
${insmods(xfsModules, '  ')}
  mountlabel ${XFS_LABEL} xfs /mnt/xfs
fi
[ -b /dev/vda ] || err "no /dev/vda"

# No udev: /dev/virtio-ports/NAME does not exist; find the port whose sysfs name matches.
agentport() {
  for f in /sys/class/virtio-ports/*/name; do
    [ -r "$f" ] || continue
    if [ "$(cat "$f")" = "${AGENT_PORT_NAME}" ]; then
      p=/dev/$(basename "$(dirname "$f")")
      [ -c "$p" ] && { echo "$p"; return 0; }
    fi
  done
  return 1
}
if ! waitfor agentport; then
  err "no virtio-serial port named ${AGENT_PORT_NAME}"
  while true; do sleep 3600; done
fi
PORT=$(agentport)

# Keep the agent running: if it dies, the log says so and it comes back.
mkdir -p /run/qemu-ga
(
  while true; do
    qemu-ga -m virtio-serial -p "$PORT" -f /run/qemu-ga.pid -t /run/qemu-ga
    err "qemu-ga exited with status $?; restarting"
    sleep 1
  done
) &

# Ready only once qemu-ga holds the port open: then the first host command is answered.
agentopen() {
  for pid in $(pidof qemu-ga); do
    for fd in /proc/$pid/fd/*; do
      [ "$(readlink "$fd")" = "$PORT" ] && return 0
    done
  done
  return 1
}
if waitfor agentopen; then
  echo "${READY_MARKER} port=$PORT"
else
  err "qemu-ga did not open $PORT"
fi

while true; do sleep 3600; done
`;
}
