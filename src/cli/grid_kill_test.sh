#!/usr/bin/env bash
# A rank of the whole grid killed: profiles/grid-3d.toml as eight MPI processes, checkpointing
# every 4 steps; once its first checkpoint is complete one rank is sent SIGKILL. The job must
# end non-zero within 60 s with the lost rank named, the checkpoint must stay whole
# (`strata checkpoint verify`), and a restart with --resume must log the losses of a run that
# was never interrupted, from the checkpoint's step on.
#
#   grid_kill_test.sh STRATA_BINARY PROFILE
#
# Exits 77 (CTest: skipped) when mpirun is not installed.
set -euo pipefail

strata=${1:?usage: grid_kill_test.sh STRATA_BINARY PROFILE}
profile=${2:?usage: grid_kill_test.sh STRATA_BINARY PROFILE}
command -v mpirun >/dev/null || { echo "SKIPPED: mpirun (openmpi-bin) is not installed"; exit 77; }

work=$(mktemp -d)
trap 'pkill -9 -f "$work/" 2>/dev/null || true; rm -rf "$work"' EXIT
source "$(dirname "$0")/grid_test_lib.sh"
# The profile with a checkpoint every 4 of 12 steps (its own copy, so that its path names the job).
sed -e "s|^steps = .*|steps = 12\ncheckpoint_every = 4\ncheckpoint_dir = \"$work/ck\"|" "$profile" > "$work/grid.toml"

launch --checkpoint-dir "$work/ck-whole" --log-json "$work/whole.jsonl" > "$work/whole.out" 2>&1 ||
  fail "the uninterrupted run failed: $(tail -5 "$work/whole.out")"

launch --checkpoint-dir "$work/ck" --log-json "$work/killed.jsonl" > "$work/killed.out" 2>&1 &
job=$!
for _ in $(seq 600); do
  [ -e "$work/ck/step-00000004/manifest.json" ] && break
  sleep 0.1
done
[ -e "$work/ck/step-00000004/manifest.json" ] || fail "no checkpoint of step 4 appeared"
launcher=$(pgrep -f "^mpirun .*$work/grid.toml" | head -1)
victim=$(pgrep -P "$launcher" | sed -n 4p)
[ -n "$victim" ] || fail "no rank left to kill (the run ended already)"
killed_at=$(date +%s)
kill -9 "$victim"
status=0
wait "$job" || status=$?
took=$(( $(date +%s) - killed_at ))
[ "$status" -ne 0 ] || fail "the job exited 0 after a rank was killed"
[ "$took" -le 60 ] || fail "the job took $took s to end after a rank was killed"
grep -q "exited on signal 9" "$work/killed.out" || fail "the lost rank is not named: $(tail -5 "$work/killed.out")"
echo "the job ended $took s after the kill, exit status $status: $(grep -m1 'exited on signal 9' "$work/killed.out")"

"$strata" checkpoint verify "$work/ck" > /dev/null || fail "the last checkpoint is damaged"
last=$("$strata" checkpoint info "$work/ck" --json | sed -n 's/^ *"step": \([0-9]*\),*$/\1/p' | head -1)
launch --checkpoint-dir "$work/ck" --resume "$work/ck" --log-json "$work/resumed.jsonl" > "$work/resumed.out" 2>&1 ||
  fail "the resumed run failed: $(tail -5 "$work/resumed.out")"
expect_resumed_losses "$work/whole.jsonl" "$work/resumed.jsonl" "$last"
