#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine: Debian packages, npm ci, build, and
# virtlogd/libvirtd when no systemd runs them. `npm test` and `npm run demo` call it first.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { log "not root and no sudo: run as root to install packages"; exit 1; }
  SUDO=(sudo)
fi

# Runtime: QEMU, libvirt, NBD tools, guest agent, ClamAV, filesystems.
# Build: libvirt-dev and pkg-config for @unraid/libvirt; python3/g++/make come with the node image.
# Test guest: busybox-static, cpio, kmod (depmod); the kernel is downloaded as a .deb, not installed.
# tini: libvirtd's subreaper where no systemd runs it (scripts/libvirt-daemons.sh).
PACKAGES=(
  qemu-system-x86 qemu-utils qemu-guest-agent qemu-block-extra
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  libnbd-bin nbdkit rsync
  clamav clamav-daemon clamdscan
  e2fsprogs xfsprogs dosfstools fdisk util-linux
  busybox-static cpio kmod iproute2 gnutls-bin
  sqlite3 virtnbdbackup
  python3 make g++ tini
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# npm ci only when the lock file changed since the last install.
stamp=node_modules/.virtcbt-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  log "npm ci"
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
fi

log "build"
# tsc, then the CLI bundle (package.json "build"): the same build as `npm run build`.
npm run --silent build

# libvirt checks /dev/kvm as libvirt-qemu; when udev never gave it Debian's usual root:kvm 0660
# (containers, CI), libvirt's capability cache is thrown away on every look-up and each
# `virsh define` takes about a minute. Virtcbt's own tests run guests under TCG either way.
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
  "${SUDO[@]}" chgrp kvm /dev/kvm && "${SUDO[@]}" chmod 0660 /dev/kvm || log "could not fix /dev/kvm permissions (libvirt will be slow)"
fi

# Services: on a systemd host the packages started them; elsewhere (containers, CI) start by hand.
bash scripts/libvirt-daemons.sh
log "ready"
