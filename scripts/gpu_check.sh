#!/usr/bin/env bash
# The one-shot check of strata's CUDA backend, for a rented machine with an NVIDIA GPU. Every
# build machine compiles the CUDA device but none can run it (src/device/cuda_device.cc says
# so in info().notes); this script is what runs it.
#
#   scripts/gpu_check.sh [--build-anyway] [--build-dir DIR] [--jobs N]
#
#   1. looks for a GPU without loading libcuda (nvidia-smi -L, else /dev/nvidia*); with none it
#      stops at once, before building, unless --build-anyway is given
#   2. scripts/setup.sh (as project.sh does), then configures DIR (default build-gpu: Ninja,
#      Release, STRATA_CUDA=ON) and builds every target with N jobs (default: nproc)
#   3. asks the built strata whether the CUDA runtime opens the GPU (a 1 MiB copy round)
#   4. runs every gtest case whose name says cuda/Cuda/CUDA, in every test program, via ctest
#   5. runs the CPU Adam tests (ctest label cpu_adam) when /proc/cpuinfo lists avx512f
#   6. runs `strata bench device --device cuda` and `strata bench adam` and reads their ratios
#   7. prints one summary; logs and gtest XML reports stay in DIR/gpu-check/
#
# Time on a 16-core host: about 2-3 minutes, most of it the build (plus 1-3 minutes when
# setup.sh has packages to install); the tests take seconds, the benches well under a minute. Every step runs under `timeout`, so a wedged driver cannot
# hang it. Needs python3 (reads the gtest XML reports and the bench output).
#
# Exit status: 0 everything passed; 1 something failed; 2 usage error; 3 no usable GPU (also
# with --build-anyway, which still builds and runs everything; the CUDA cases then skip).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-gpu
jobs=$(nproc)
build_anyway=0
cuda_filter='*cuda*:*Cuda*:*CUDA*'  # gtest names: Backends/DeviceTest.*/cuda, DeviceRegistry.Cuda*
unset GTEST_FILTER GTEST_OUTPUT GTEST_ALSO_RUN_DISABLED_TESTS GTEST_REPEAT GTEST_SHUFFLE

summary=()   # the lines finish() prints
failures=()  # one short phrase per failed check
gpu=""       # the GPU(s) found; empty: none
gpu_why=""   # why none was found
cuda_ok=0    # 1 once the built strata has opened the CUDA device
why=""       # set by run_logged: why the last command failed

usage() {
  echo "usage: scripts/gpu_check.sh [--build-anyway] [--build-dir DIR] [--jobs N]"
  echo "  --build-anyway  without a GPU: build and run the tests anyway (still exits non-zero)"
  echo "  --build-dir DIR the build directory (default: build-gpu in the source tree)"
  echo "  --jobs N        build jobs (default: nproc = $(nproc))"
}

usage_error() {
  echo "gpu_check: $1" >&2
  usage >&2
  exit 2
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --build-anyway) build_anyway=1 ;;
      --build-dir) [ -n "${2:-}" ] || usage_error "--build-dir needs a directory"; build=$(realpath -m "$2"); shift ;;
      --jobs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage_error "--jobs needs a positive number"; jobs=$2; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage_error "unknown argument '$1'" ;;
    esac
    shift
  done
  out=$build/gpu-check
  cli=$build/src/cli/strata
}

say() { echo "gpu_check: $*" >&2; }                          # progress, as it happens
note() { summary+=("$(printf '%-13s %s' "$1:" "$2")"); }      # a summary line
more() { summary+=("$(printf '%-13s %s' "" "$1")"); }         # its continuation
fail() { failures+=("$1"); }

# run_logged SECONDS LOG CMD...: CMD under timeout, stdout and stderr to LOG. On failure sets
# $why ("exit 2", "timed out after 60s") and returns CMD's status.
run_logged() {
  local secs=$1 log=$2 rc=0
  shift 2
  timeout -k 10 "$secs" "$@" >"$log" 2>&1 || rc=$?
  case $rc in
    0) why="" ;;
    124 | 137) why="timed out after ${secs}s" ;;
    *) why="exit $rc" ;;
  esac
  return $rc
}

# The line of LOG that says what went wrong, shortened, with the log's name.
first_error() {
  local line
  line=$(grep -m1 -A1 'CMake Error' "$1" | tail -n1 || true)
  [ -n "$line" ] || line=$(grep -m1 -E 'error:|undefined reference|^E: |^setup: ' "$1" || true)
  [ -n "$line" ] || line=$(tail -n1 "$1" || true)
  line=${line#"${line%%[! ]*}"}  # leading blanks
  echo "${line:0:160} (log: $1)"
}

# ---- 1. a GPU, without loading libcuda -------------------------------------------------------

find_gpu() {
  local list rc=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    list=$(timeout -k 5 30 nvidia-smi -L 2>&1) || rc=$?
    if [ $rc -eq 0 ] && grep -q '^GPU [0-9]' <<<"$list"; then
      gpu=$(grep '^GPU [0-9]' <<<"$list" | sed 's/ *(UUID.*//' | paste -sd ';' -)
      return 0
    fi
    case $rc in
      0) gpu_why="nvidia-smi -L lists no GPU" ;;
      124 | 137) gpu_why="nvidia-smi -L timed out after 30s" ;;
      *) gpu_why="nvidia-smi -L: $(head -n1 <<<"${list:-no output}"), exit $rc" ;;
    esac
  elif compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
    gpu="$(echo /dev/nvidia[0-9]*) (no nvidia-smi; the CUDA runtime decides)"
    return 0
  else
    gpu_why="nvidia-smi not installed, no /dev/nvidia* device nodes"
  fi
  return 1
}

# ---- 2. setup, configure, build --------------------------------------------------------------

setup_and_build() {
  local t=$SECONDS
  mkdir -p "$out"
  say "setup: scripts/setup.sh"
  if ! run_logged 900 "$out/setup.log" "$root/scripts/setup.sh"; then
    note build "FAILED: scripts/setup.sh $why: $(first_error "$out/setup.log")"
    fail "setup"
    return 1
  fi
  say "configure: $build (Ninja, Release, STRATA_CUDA=ON)"
  if ! run_logged 300 "$out/configure.log" cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DSTRATA_CUDA=ON; then
    note build "FAILED: configure $why: $(first_error "$out/configure.log")"
    fail "configure"
    return 1
  fi
  say "build: $jobs jobs, log $out/build.log"
  if ! run_logged 1500 "$out/build.log" cmake --build "$build" -j "$jobs"; then
    note build "FAILED: build $why: $(first_error "$out/build.log")"
    fail "build"
    return 1
  fi
  note build "ok in $((SECONDS - t))s ($build, $jobs jobs)"
}

# ---- 3. does the CUDA runtime open the GPU? --------------------------------------------------

# create_device("cuda") answers "no CUDA device: ..." (cudaGetDeviceCount) when it cannot.
probe_cuda() {
  local log=$out/probe.log reason
  say "probe: strata bench device --device cuda (1 MiB copies)"
  if run_logged 90 "$log" "$cli" bench device --device cuda --no-gemm --copy-size 1MiB --min-time 0.01; then
    cuda_ok=1
    note "cuda device" "$(grep -m1 '^  device:' "$log" | sed 's/^  device: *//; s/, capacity .*//' || true)"
    return
  fi
  reason=$(grep -m1 '^strata bench device: ' "$log" | sed 's/^strata bench device: //' || true)
  note "cuda device" "NOT usable: ${reason:-$why (log: $log)}"
  if [ -n "$gpu" ]; then fail "the CUDA runtime cannot use the GPU"; fi
}

# ---- 4, 5. test groups -----------------------------------------------------------------------

# Reads the gtest XML reports in DIR (one per test program). Prints "PASSED FAILED SKIPPED",
# then one line per skip reason ("skipped N: why") and per failed case.
read_reports() {
  python3 - "$1" <<'PY'
import collections, glob, sys, xml.etree.ElementTree as ET
n = collections.Counter(); reasons = collections.Counter(); failed = []; broken = []
for path in sorted(glob.glob(sys.argv[1] + "/*.xml")):
    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except ET.ParseError as e:
        broken.append(f"{path}: {e}")
        continue
    for c in cases:
        if c.get("status") != "run":
            continue  # DISABLED_
        skip = c.find("skipped")
        if c.find("failure") is not None:
            n["failed"] += 1
            failed.append(f"{c.get('classname')}.{c.get('name')}")
        elif c.get("result") == "skipped" or skip is not None:
            n["skipped"] += 1
            # message: "file:line", "Skipped", then the test's own words
            lines = [l.strip() for l in (skip.get("message", "") if skip is not None else "").splitlines()[1:]]
            reasons[" ".join(l for l in lines if l and l != "Skipped") or "no reason given"] += 1
        else:
            n["passed"] += 1
print(n["passed"], n["failed"], n["skipped"])
for r, k in reasons.most_common():
    print(f"skipped {k}: {r}")
for name in failed[:10]:
    print(f"failed: {name}")
if len(failed) > 10:
    print(f"failed: ... and {len(failed) - 10} more")
for b in broken:
    print(f"unreadable report: {b}")
PY
}

# run_group TITLE NAME LABEL FILTER SKIPS_FAIL: the ctest entries with LABEL, each program
# running the gtest cases that match FILTER, reports in $out/NAME/. Notes passed / failed /
# skipped with the reasons; the group fails on a failed case or entry, on no case at all, and
# (SKIPS_FAIL=1) on any skip. ctest stops every test after 5 minutes (--stop-time: the
# entries' own TIMEOUT of 600 s would win over --timeout).
run_group() {
  local title=$1 dir=$out/$2 label=$3 filter=$4 skips_fail=$5 rc=0 status=ok p f s details entries
  rm -rf "$dir"
  mkdir -p "$dir"
  say "$title: ctest -L '$label', gtest filter '$filter', log $dir.log"
  run_logged 360 "$dir.log" env GTEST_FILTER="$filter" GTEST_OUTPUT="xml:$dir/" \
    ctest --test-dir "$build" -L "$label" -j "$jobs" --stop-time "$(date -d '+300 seconds' +%H:%M:%S)" \
    --no-tests=error --output-on-failure || rc=$?
  details=$(read_reports "$dir") || details=$'0 0 0\nunreadable gtest reports in '"$dir"
  read -r p f s <<<"$(head -n1 <<<"$details")"
  p=${p:-0} f=${f:-0} s=${s:-0}
  entries=$(sed -n '/The following tests FAILED:/,$p' "$dir.log" | sed -n 's/^[[:space:]]*[0-9]* - /ctest entry failed: /p')
  if [ "$rc" -ne 0 ] || [ "$f" -gt 0 ]; then status="FAILED${why:+ (ctest $why)}"; fi
  if [ $((p + f + s)) -eq 0 ]; then status="FAILED: no test case ran"; fi
  if [ "$skips_fail" -eq 1 ] && [ "$s" -gt 0 ] && [ "$status" = ok ]; then status="FAILED: cases skipped on a GPU machine"; fi
  note "$title" "$status: passed $p, failed $f, skipped $s"
  while IFS= read -r line; do [ -z "$line" ] || more "$line"; done <<<"$(tail -n +2 <<<"$details"; echo "$entries")"
  [ "$status" = ok ] || fail "$title"
}

# Every case named after CUDA in every test program (label "unit": every strata_add_test
# entry). Today: device_test's Backends/DeviceTest.*/cuda and DeviceRegistry.CudaIs*.
# They skip with "no CUDA device: ..." where the runtime sees none.
run_cuda_tests() {
  local skips_fail=0
  if [ $cuda_ok -eq 1 ]; then skips_fail=1; fi
  run_group "cuda tests" cuda-tests '^unit$' "$cuda_filter" $skips_fail
}

# The CPU Adam tests (cpu_adam_test, adam_bench_test) run every path the CPU has, AVX-512
# among them; Paths/IsaAvailability.PathRunsOnThisCpu/avx512 skips when strata finds none.
run_avx512_tests() {
  if ! grep -qw avx512f /proc/cpuinfo; then
    note "avx512 adam" "skipped: CPU has no AVX-512 (no avx512f in /proc/cpuinfo)"
    return
  fi
  run_group "avx512 adam" avx512-tests '^cpu_adam$' '*' 0
  if grep -qs 'name="PathRunsOnThisCpu/avx512"[^>]*result="skipped"' "$out"/avx512-tests/*.xml; then
    more "FAILED: /proc/cpuinfo lists avx512f but strata did not run its AVX-512 path"
    fail "avx512 adam"
  fi
}

# ---- 6. benches ------------------------------------------------------------------------------

# Prints the figures of a bench's output (FILE): from its --json lines (bench/bench_json.h:
# one object a line, "bench", "record" env / result / summary, a result against a ceiling has
# "ratio"), else from its text tables (copy directions, Adam paths).
read_bench() {
  python3 - "$1" <<'PY'
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
def num(x):
    return "n/a" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)
records = []
for line in text.splitlines():
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if isinstance(o, dict) and o.get("record") in ("result", "summary"):
        records.append(o)
rows = []
for o in records:
    # what it measured: its short words and counts; its figure: the first non-ratio number
    label = " ".join(v if isinstance(v, str) else f"{k}={v}" for k, v in o.items()
                     if k not in ("bench", "record", "ceiling") and isinstance(v, (str, int))
                     and not isinstance(v, bool) and len(str(v)) <= 32)
    figure = next((f"{k} {num(v)}, " for k, v in o.items() if isinstance(v, float)
                   and not k.startswith(("ratio", "ceiling"))), "")
    if o["record"] == "summary":
        rows.append(f"summary{' ' + label if label else ''}: ratio {num(o.get('ratio'))} ({o.get('ceiling', '?')})")
    else:
        rows.append(f"{label}: {figure}ratio {num(o.get('ratio'))}")
if len(rows) > 13:
    rows[12:-1] = [f"... {len(rows) - 13} more in {sys.argv[1]}"]
threads = None
for line in text.splitlines() if not rows else []:  # the text tables
    if m := re.match(r"^threads (\d+):", line):
        threads = m[1]
    elif m := re.match(r"^  (avx512|avx2|scalar)\s+(\S+)\s+\S+\s+\S+\s+(\S+)\s+(\S+)\s*$", line):
        rows.append(f"threads={threads} {m[1]}: best {m[2]} params/s, ratio {m[3]} (median {m[4]})")
    elif m := re.match(r"^  (\S.*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*(\S.*)?$", line):
        rows.append(f"{m[1]}: {m[2]} GB/s, ratio {m[4] if float(m[3]) > 0 else 'n/a (no ceiling)'}")
print("\n".join(rows) if rows else f"no figures found in {sys.argv[1]}")
PY
}

# run_bench TITLE SECONDS ARGS...: `strata ARGS` (with --json when the bench has it); its
# figures go to the summary.
run_bench() {
  local title=$1 secs=$2 log=$out/${1// /-}.txt line help
  shift 2
  help=$(timeout 20 "$cli" "$@" --help 2>/dev/null || true)
  if grep -q -- '--json' <<<"$help"; then set -- "$@" --json; fi
  say "$title: strata $*"
  if ! run_logged "$secs" "$log" "$cli" "$@"; then
    note "$title" "FAILED ($why): $(grep -m1 '^strata bench' "$log" || tail -n1 "$log") (log: $log)"
    fail "$title"
    return
  fi
  note "$title" "ok: strata $*"
  while IFS= read -r line; do more "$line"; done <<<"$(read_bench "$log" || echo "cannot read $log")"
}

# Copies: 256 MiB, >= 5 per direction. The CUDA device's memory is not host-addressable, so
# the bench has no memcpy ceiling for it (ratio n/a) and skips its oneDNN GEMM comparison.
run_bench_device() {
  if [ $cuda_ok -eq 0 ]; then
    note "bench device" "not run: no usable CUDA device"
    return
  fi
  run_bench "bench device" 240 bench device --device cuda --copy-size 256MiB --min-time 0.1
}

# 32 Mi parameters (~0.9 GiB of arrays), 1 thread and every core, 5 rounds: about 30 s.
run_bench_adam() {
  local threads=1
  if [ "$(nproc)" -gt 1 ]; then threads=1,$(nproc); fi
  run_bench "bench adam" 240 bench adam --params 32M --threads "$threads" --repeat 5
}

# ---- 7. summary ------------------------------------------------------------------------------

finish() {
  local status=$1 rc=0 result=PASS line
  if [ "$status" -ne 0 ] && [ ${#failures[@]} -eq 0 ]; then fail "gpu_check.sh stopped early (exit $status)"; fi
  if [ ${#failures[@]} -gt 0 ]; then
    rc=1
    result="FAIL: $(printf '%s; ' "${failures[@]}" | sed 's/; $//')"
  elif [ -z "$gpu" ] || [ $cuda_ok -eq 0 ]; then
    rc=3
    result="FAIL: no usable NVIDIA GPU${gpu_why:+ ($gpu_why)}"
  fi
  note "wall time" "$((SECONDS / 60))m$((SECONDS % 60))s (logs: $out)"
  note result "$result"
  echo
  echo "== strata GPU check"
  for line in "${summary[@]}"; do echo "$line"; done
  exit $rc
}

main() {
  parse_args "$@"
  cd "$root"
  if ! find_gpu; then
    if [ $build_anyway -eq 0 ]; then
      echo "gpu_check: no NVIDIA GPU found ($gpu_why); --build-anyway builds and runs the tests regardless" >&2
      exit 3
    fi
    say "no NVIDIA GPU found ($gpu_why); building anyway (--build-anyway)"
  fi
  if ! command -v python3 >/dev/null; then
    echo "gpu_check: python3 is needed to read the test reports and bench output (apt-get install python3)" >&2
    exit 1
  fi
  trap 'finish $?' EXIT
  note gpu "${gpu:-NONE: no NVIDIA GPU found ($gpu_why)}"
  note cpu "$(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) logical CPUs"
  setup_and_build || return 0  # the summary says why
  probe_cuda
  run_cuda_tests
  run_avx512_tests
  run_bench_device
  run_bench_adam
}

main "$@"
