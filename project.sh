#!/usr/bin/env bash
# strata's one entry point on a fresh Debian 12 machine.
#   ./project.sh run    install what is missing, build, and run the main job
#   ./project.sh test   install what is missing, then build and run every test: the release
#                       build (warnings as errors, CUDA targets compiled when nvcc exists,
#                       every public header compiled on its own, the test-registration
#                       check, the installed-package consumer) and the address+undefined
#                       sanitizer build; the long `matrix` label (every grid x ZeRO stage x
#                       offload) is left to `(cd build && ctest -L matrix)`, and the default
#                       run checks a sample of it
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD
jobs=${STRATA_JOBS:-$(nproc)}

configure_release() {
  cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTRATA_WERROR=ON \
    -DSTRATA_CUDA="${STRATA_CUDA:-AUTO}" >/dev/null
}

case "${1:-}" in
  run)
    shift
    scripts/setup.sh
    configure_release
    cmake --build build -j "$jobs" --target strata_cli
    exec scripts/main_job.sh "$@"
    ;;
  test)
    shift
    scripts/setup.sh
    echo "== release build" >&2
    configure_release
    cmake --build build -j "$jobs"
    echo "== release tests" >&2
    (cd build && ctest -j "$jobs" --output-on-failure --timeout 900 -LE matrix)
    echo "== sanitizer build (address, undefined)" >&2
    cmake -S "$root" -B "$root/build-asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_WERROR=ON \
      -DSTRATA_SANITIZE=address,undefined -DSTRATA_CUDA=OFF -DSTRATA_BUILD_BENCH=OFF >/dev/null
    cmake --build build-asan -j "$jobs"
    echo "== sanitizer tests" >&2
    (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest -j "$jobs" --output-on-failure --timeout 1800 -LE "no_sanitizer|matrix")
    ;;
  *)
    echo "usage: ./project.sh run|test" >&2
    exit 2
    ;;
esac
