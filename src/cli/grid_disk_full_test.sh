#!/usr/bin/env bash
# A full disk under one rank's swap directory: profiles/grid-3d.toml as eight MPI processes,
# each rank swapping to its own directory (nvme_path = ".../swap-{rank}"), rank 5's a small
# tmpfs of its own.
#   1. The disk fills while the run trains (after its first checkpoint): the run goes on and
#      ends well, because every rank reserves its swap space when it starts.
#   2. A run resumed from a checkpoint while that disk is full stops at start-up, on every rank
#      (as eight processes and as eight threads), with an error naming rank 5 and its path;
#      the checkpoint is left byte for byte as it was and verifies.
#   3. With the disk freed, the resumed run logs the losses of the run that was never stopped.
# The test runs in a private mount namespace, so its mount is invisible outside and vanishes
# with it.
#
#   grid_disk_full_test.sh STRATA_BINARY PROFILE
#
# Exits 77 (CTest: skipped) without mpirun or without the privilege to mount (root or
# CAP_SYS_ADMIN).
set -euo pipefail

strata=${1:?usage: grid_disk_full_test.sh STRATA_BINARY PROFILE}
profile=${2:?usage: grid_disk_full_test.sh STRATA_BINARY PROFILE}
command -v mpirun >/dev/null || { echo "SKIPPED: mpirun (openmpi-bin) is not installed"; exit 77; }
if [ -z "${STRATA_PRIVATE_MOUNTS:-}" ]; then
  unshare --mount --propagation private true 2>/dev/null ||
    { echo "SKIPPED: no private mount namespace (needs root or CAP_SYS_ADMIN)"; exit 77; }
  STRATA_PRIVATE_MOUNTS=1 exec unshare --mount --propagation private bash "$0" "$@"
fi

work=$(mktemp -d)
trap 'pkill -9 -f "$work/" 2>/dev/null || true; umount "$work/swap-5" 2>/dev/null || true; rm -rf "$work"' EXIT
source "$(dirname "$0")/grid_test_lib.sh"
for r in 0 1 2 3 4 5 6 7; do mkdir "$work/swap-$r"; done
mount -t tmpfs -o size=32M tmpfs "$work/swap-5" || { echo "SKIPPED: cannot mount a tmpfs"; exit 77; }
sed -e "s|^nvme_path = .*|nvme_path = \"$work/swap-{rank}\"|" \
    -e "s|^steps = .*|steps = 12\ncheckpoint_every = 4\ncheckpoint_dir = \"$work/ck\"|" "$profile" > "$work/grid.toml"

# 1. The disk fills mid-run.
launch --log-json "$work/whole.jsonl" > "$work/whole.out" 2>&1 &
job=$!
for _ in $(seq 600); do
  [ -e "$work/ck/step-00000004/manifest.json" ] && break
  sleep 0.1
done
[ -e "$work/ck/step-00000004/manifest.json" ] || fail "no checkpoint of step 4 appeared: $(tail -5 "$work/whole.out")"
dd if=/dev/zero of="$work/swap-5/filler" bs=1M 2>/dev/null || true
kill -0 "$job" 2>/dev/null || fail "the run ended before the disk was full"
free_bytes() { df --output=avail -B1 "$work/swap-5" | tail -1 | tr -d ' '; }
[ "$(free_bytes)" -eq 0 ] || fail "rank 5's disk still has $(free_bytes) bytes free"
wait "$job" || fail "the run failed when its disk filled: $(tail -5 "$work/whole.out")"
echo "the disk filled after step 4's checkpoint; the run trained on to step $(losses "$work/whole.jsonl" | tail -1 | cut -d' ' -f1)"

# 2. Resuming with the disk full (the finished run's swap files are gone: fill their space too).
dd if=/dev/zero of="$work/swap-5/filler-2" bs=1M 2>/dev/null || true
[ "$(free_bytes)" -eq 0 ] || fail "rank 5's disk still has $(free_bytes) bytes free"
resume="$work/ck/step-00000008"
( cd "$resume" && find . -type f -print0 | sort -z | xargs -0 sha256sum ) > "$work/ck.sums"
expect_refused() {  # NAME STATUS OUTPUT
  [ "$2" -ne 0 ] || fail "$1: exited 0 with rank 5's swap disk full"
  [ "$2" -ne 124 ] || fail "$1: still running after 300 s"
  [ "$2" -eq 1 ] || fail "$1: exit status $2, not 1 (a rank short of disk space fails the run)"
  grep -q "rank 5: .*out of space.*'$work/swap-5'" "$3" || fail "$1: no error names rank 5 and its path: $(tail -5 "$3")"
  [ "$(grep -c 'failed on rank 5' "$3")" -ge 7 ] || fail "$1: not every other rank names rank 5 as the cause: $(tail -5 "$3")"
  echo "$1 refused, exit status $2: $(grep -m1 -o "rank 5: .*free" "$3")"
}
status=0
launch --resume "$resume" > "$work/full.out" 2>&1 || status=$?
expect_refused "8 processes" "$status" "$work/full.out"
! pgrep -f "$work/grid.toml" > /dev/null || fail "ranks are still running after the job ended"
status=0
timeout 300 "$strata" train --ranks 8 --profile "$work/grid.toml" --resume "$resume" > "$work/threads.out" 2>&1 || status=$?
expect_refused "8 threads" "$status" "$work/threads.out"
( cd "$resume" && sha256sum --quiet -c "$work/ck.sums" ) || fail "the checkpoint changed"
"$strata" checkpoint verify "$resume" > /dev/null || fail "the checkpoint is damaged"

# 3. The disk freed, the run resumes.
rm "$work/swap-5"/filler*
launch --resume "$resume" --log-json "$work/resumed.jsonl" > "$work/resumed.out" 2>&1 ||
  fail "the resumed run failed: $(tail -5 "$work/resumed.out")"
echo -n "with the disk freed, "
expect_resumed_losses "$work/whole.jsonl" "$work/resumed.jsonl" 8
