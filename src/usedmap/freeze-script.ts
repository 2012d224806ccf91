// The shell script the agent freezer runs in the guest (guest-exec /bin/sh -c): it freezes the
// filesystems itself, reads GETFSMAP while they are frozen, and thaws on the host's word, at its
// deadline, on any exit, or from its watchdog. qemu-ga refuses guest-exec and guest-file-* while
// *it* holds a freeze (its allow-list is ping, info, sync, fsfreeze-status/thaw); a freeze the
// guest holds itself leaves the agent free, so the host can poll and signal through files in a
// tmpfs directory (never frozen).

/** Exit codes of the script that mean "this guest cannot freeze this way": fall back to qemu-ga's freeze. */
export const EXIT_CANNOT = 72;
/** A filesystem would not freeze (the ones already frozen were thawed). */
export const EXIT_FREEZE_FAILED = 71;

// Arguments: DIR (created, on tmpfs) DEADLINE_SECONDS MOUNTPOINT... (in freeze order)
// Files in DIR: frozen (all frozen, maps being read), go (written by the host), list (frozen
// mountpoints, for the watchdog), thawed. Output after the thaw: @@ lines and the maps.
// Busybox's fsfreeze takes only --freeze/--unfreeze; util-linux's takes both spellings.
export const FREEZE_SCRIPT = String.raw`
D=$1; W=$2; shift 2
# qemu-ga may run with a short PATH: fsfreeze and xfs_io live in sbin.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
fail() { echo "$1" >&2; exit "$2"; }
command -v fsfreeze >/dev/null 2>&1 || fail "fsfreeze not found in the guest" ${EXIT_CANNOT}
mkdir -m 700 "$D" || fail "cannot create $D in the guest" ${EXIT_CANNOT}
case "$(stat -f -c %T "$D" 2>/dev/null)" in
  tmpfs|ramfs) ;;
  *) rmdir "$D"; fail "$D is not on tmpfs: the host could not be signalled while the filesystems are frozen" ${EXIT_CANNOT} ;;
esac
if sleep 0.01 2>/dev/null; then nap() { sleep 0.01; }; elif usleep 1 2>/dev/null; then nap() { usleep 10000; }; else nap() { sleep 1; }; fi
n=0
thaw() {
  i=0
  for m in "$@"; do
    [ "$i" -ge "$n" ] && break
    fsfreeze --unfreeze "$m" || echo "thawing $m failed" >&2
    i=$((i+1))
  done
  n=0
  : > "$D/thawed" 2>/dev/null
}
trap 'thaw "$@"' EXIT
trap 'exit 129' HUP INT TERM
read t0 _ < /proc/uptime
end=$(( ${"$"}{t0%.*} + W ))
# Watchdog, apart from this shell: thaws what is listed if nothing thawed 3 s past the deadline
# (this shell stuck in a reader, or killed).
(
  while [ -d "$D" ] && [ ! -e "$D/thawed" ]; do
    read t _ < /proc/uptime
    [ "${"$"}{t%.*}" -ge $((end + 3)) ] && break
    sleep 1
  done
  if [ ! -e "$D/thawed" ] && [ -e "$D/list" ]; then
    while IFS= read -r m; do fsfreeze --unfreeze "$m"; done < "$D/list"
    : > "$D/watchdog"
  fi
) </dev/null >/dev/null 2>&1 &
for m in "$@"; do
  fsfreeze --freeze "$m" || fail "freezing $m failed" ${EXIT_FREEZE_FAILED}
  printf '%s\n' "$m" >> "$D/list"
  n=$((n+1))
done
read t1 _ < /proc/uptime
: > "$D/frozen"
i=0
for m in "$@"; do
  if command -v xfs_io >/dev/null 2>&1; then
    xfs_io -r -c fsmap "$m" > "$D/map.$i" 2> "$D/err.$i"; echo $? > "$D/rc.$i"
  else
    : > "$D/map.$i"; echo "xfs_io (xfsprogs) is not installed in the guest" > "$D/err.$i"; echo 127 > "$D/rc.$i"
  fi
  i=$((i+1))
done
read t2 _ < /proc/uptime
how=go
while [ ! -e "$D/go" ]; do
  read t _ < /proc/uptime
  if [ "${"$"}{t%.*}" -ge "$end" ]; then how=deadline; break; fi
  nap
done
read t3 _ < /proc/uptime
thaw "$@"
read t4 _ < /proc/uptime
echo "@@virtcbt-freeze 1"
echo "@@times $t0 $t1 $t2 $t3 $t4 $how"
i=0
for m in "$@"; do
  echo "@@map $i $(cat "$D/rc.$i")"; cat "$D/map.$i"
  echo "@@err $i"; cat "$D/err.$i"
  i=$((i+1))
done
echo "@@end"
rm -rf "$D"
trap - EXIT
exit 0
`;

export interface ScriptReport {
  /** Guest uptime seconds: script start, all frozen, maps read, release seen, all thawed. */
  times: { start: number; frozen: number; mapped: number; release: number; thawed: number };
  released: 'go' | 'deadline';
  maps: { rc: number; out: string; err: string }[];
}

/** Parses the script's stdout; undefined when it did not get as far as its report. */
export function parseScriptReport(stdout: string): ScriptReport | undefined {
  const lines = stdout.split('\n');
  const at = lines.indexOf('@@virtcbt-freeze 1');
  if (at < 0 || !lines.includes('@@end')) return undefined;
  const t = /^@@times (\S+) (\S+) (\S+) (\S+) (\S+) (go|deadline)$/.exec(lines[at + 1] ?? '');
  if (!t) return undefined;
  const num = (i: number) => Number(t[i]);
  const maps: { rc: number; out: string[]; err: string[] }[] = [];
  let cur: { rc: number; out: string[]; err: string[] } | undefined;
  let into: 'out' | 'err' = 'out';
  for (const line of lines.slice(at + 2)) {
    if (line === '@@end') break;
    const m = /^@@map (\d+) (-?\d*)$/.exec(line);
    if (m) {
      cur = { rc: m[2] === '' ? -1 : Number(m[2]), out: [], err: [] };
      maps[Number(m[1])] = cur;
      into = 'out';
    } else if (/^@@err \d+$/.test(line)) {
      into = 'err';
    } else {
      cur?.[into].push(line);
    }
  }
  return {
    times: { start: num(1), frozen: num(2), mapped: num(3), release: num(4), thawed: num(5) },
    released: t[6] as 'go' | 'deadline',
    maps: maps.map((c) => ({ rc: c.rc, out: c.out.join('\n'), err: c.err.join('\n').trim() })),
  };
}
