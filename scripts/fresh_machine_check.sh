#!/usr/bin/env bash
# Proves that the README's commands work on a machine where nothing was installed by hand:
# makes a minimal Debian 12 root with debootstrap, copies the working tree into it (what git
# tracks plus untracked files it does not ignore, so no build*/ folders), and inside it with
# chroot runs `./project.sh run --steps 5`, then with --test `./project.sh test`.
#
#   scripts/fresh_machine_check.sh [--test] [--cache DIR] [--keep]
#
#   --test       also run the whole test command (release and sanitizer builds: ~20 min here)
#   --cache DIR  where the debootstrapped base is kept (default: $STRATA_FRESH_CACHE, else
#                ~/.cache/strata-fresh-machine); the first run makes it (minutes), later runs
#                copy it (seconds)
#   --keep       leave the check's root in place afterwards (it is printed) to look inside
#
# Needs root (debootstrap, chroot, mount). The root reaches Debian's archive the way this
# machine does: its apt sources, apt settings and resolv.conf are copied in. /proc, /dev and
# /tmp are mounted inside (and /sys, which OpenMPI's hwloc reads) (/tmp from a scratch folder on disk, since the main job's swap files
# need O_DIRECT, which tmpfs refuses) and unmounted on every exit path. Exits non-zero when a
# step fails, naming it.
#
# Run it before resolving any change that touches dependencies, scripts/setup.sh or the build.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
suite=bookworm
run_tests=0
keep=0
cache=${STRATA_FRESH_CACHE:-${HOME:-/root}/.cache/strata-fresh-machine}

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "fresh-machine check: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --test) run_tests=1 ;;
    --keep) keep=1 ;;
    --cache) [ $# -ge 2 ] || fail "--cache needs a directory"; cache=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot and mount); run it as root"

# The Debian mirror this machine's apt uses, so debootstrap reaches the archive the same way.
host_mirror() {
  local m=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || fail "found no Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources"
  echo "$m"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return
  echo "fresh-machine check: installing debootstrap on this machine" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# The cached minimal Debian 12 root; made once (a stamp marks it complete).
ensure_base() {
  local base=$cache/$suite-minbase
  if [ -f "$base/.strata-complete" ]; then
    echo "$base"
    return
  fi
  ensure_debootstrap
  rm -rf "$base"
  mkdir -p "$cache"
  local mirror
  mirror=$(host_mirror)
  echo "fresh-machine check: debootstrap $suite (minbase) from $mirror into $base" >&2
  debootstrap --variant=minbase "$suite" "$base" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    fail "debootstrap failed; see $cache/debootstrap.log"
  touch "$base/.strata-complete"
  echo "$base"
}

root=""
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -R "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true
  done
  if [ -n "$root" ] && [ "$keep" -eq 0 ]; then
    # Only remove what is no longer a mount point: never delete through a live mount.
    if ! grep -q " $root[/.]" /proc/self/mounts; then rm -rf "$root" "$root.tmp"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_into() {  # mount_into TARGET mount-arguments...
  local target=$1
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}

make_root() {
  local base=$1
  root=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-fresh.XXXXXX")
  cp -a "$base/." "$root/"
  rm -f "$root/.strata-complete"
  # This machine's way to the archive: sources, apt settings, name resolution.
  rm -rf "$root/etc/apt/sources.list.d" "$root/etc/apt/apt.conf.d"
  cp -a /etc/apt/sources.list.d /etc/apt/apt.conf.d "$root/etc/apt/"
  [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/" || rm -f "$root/etc/apt/sources.list"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # The working tree, without build outputs or anything git ignores.
  mkdir -p "$root/work/strata"
  (cd "$here" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
    tar -C "$root/work/strata" -xf -
  [ -d "$here/../shared" ] && cp -a "$here/../shared" "$root/work/shared"
  mkdir -p "$root.tmp"
  chmod 1777 "$root.tmp"
  mount_into "$root/proc" -t proc proc
  mount_into "$root/dev" --rbind /dev
  mount_into "$root/sys" --rbind /sys  # hwloc (OpenMPI) and the block-size probe read it
  mount_into "$root/tmp" --bind "$root.tmp"
}

in_root() {  # in_root COMMAND: runs it in the root's copy of the tree, as a login shell would
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /work/strata && $1"
}

step() {  # step NAME COMMAND
  local t0=$SECONDS
  echo "== fresh-machine check: $1" >&2
  if in_root "$2"; then
    echo "== fresh-machine check: $1: passed in $((SECONDS - t0)) s" >&2
  else
    local rc=$?
    echo "== fresh-machine check: $1: FAILED (exit $rc) after $((SECONDS - t0)) s" >&2
    exit 1
  fi
}

start=$SECONDS
base=$(ensure_base)
make_root "$base"
echo "fresh-machine check: root $root (base copied in $((SECONDS - start)) s)" >&2
step "./project.sh run --steps 5" "./project.sh run --steps 5"
if [ "$run_tests" -eq 1 ]; then
  step "./project.sh test" "./project.sh test"
fi
[ "$keep" -eq 1 ] && echo "fresh-machine check: kept $root" >&2
echo "fresh-machine check: passed in $((SECONDS - start)) s" >&2
