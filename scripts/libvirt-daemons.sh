#!/usr/bin/env bash
# Starts virtlogd and libvirtd when no systemd runs them (containers, CI), and waits until libvirtd
# answers. Called by scripts/setup.sh and by the test rig whenever it finds libvirtd gone.
#
# libvirtd runs in the foreground under `tini -s`, a subreaper: the QEMU processes it starts (and
# daemonizes) are then reaped the moment they exit. Orphans otherwise go to PID 1, and where that
# is a container's init that reaps late (about 1.7 s on the CI machines), libvirt waits for the
# dead QEMU's pid to vanish before a destroy or shutdown ends: ~1.7 s per domain stop.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)

[ -d /run/systemd/system ] && exit 0
if ! pgrep -x virtlogd >/dev/null; then
  log "starting virtlogd"
  "${SUDO[@]}" virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd (under tini, which reaps its QEMU processes)"
  mkdir -p /var/log/libvirt
  # Detached, every descriptor on a file: a caller waiting for this script's output is not held.
  "${SUDO[@]}" setsid tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd-console.log 2>&1 &
fi
# libvirtd answers a moment after it starts: wait (bounded) for its socket.
for _ in $(seq 1 100); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.2
done
log "libvirtd did not answer on qemu:///system (see /var/log/libvirt/libvirtd.log)"
exit 1
