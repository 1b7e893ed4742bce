# Shared by the 8-process grid tests (grid_kill_test.sh, grid_disk_full_test.sh); sourced with
# $strata (the strata binary) and $work (the test's directory, holding grid.toml) set.

fail() { echo "FAILED: $*"; exit 1; }

# strata train on the 8 ranks of $work/grid.toml as MPI processes, with the options given; a
# job still running after 300 s is stopped (exit status 124).
launch() {
  timeout 300 mpirun --allow-run-as-root --oversubscribe -x ASAN_OPTIONS=detect_leaks=0 -n 8 "$strata" train \
    --profile "$work/grid.toml" "$@"
}

# "step loss" lines of a --log-json file.
losses() { sed -n 's/.*"step":\([0-9]*\),.*"loss":\([-0-9.e]*\).*/\1 \2/p' "$1"; }

# The losses a resumed run logged (RESUMED) are WHOLE's after step FROM, exactly.
expect_resumed_losses() {  # WHOLE RESUMED FROM
  local expected got
  expected=$(losses "$1" | awk -v s="$3" '$1 > s')
  got=$(losses "$2")
  [ -n "$got" ] || fail "the resumed run logged no steps"
  [ "$got" = "$expected" ] || fail "the resumed losses differ from the uninterrupted run's:
resumed:
$got
uninterrupted:
$expected"
  echo "resumed from step $3: $(echo "$got" | wc -l) steps equal to the uninterrupted run's"
}
