#!/usr/bin/env bash
# Installs the Debian packages strata builds, tests and runs with. Idempotent: does nothing
# when everything is present; otherwise runs apt-get update once and installs what is missing.
#
# The list names every package outright, also those a dependency only *recommends* (apt-get
# runs with --no-install-recommends): oneDNN's CMake package config requires OpenCL
# (ocl-icd-opencl-dev), which libdnnl-dev merely recommends. scripts/fresh_machine_check.sh
# proves the list on a new Debian 12 root.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  liburing-dev libaio-dev libtomlplusplus-dev nlohmann-json3-dev libcxxopts-dev
  libdnnl-dev ocl-icd-opencl-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  fio iproute2 util-linux time python3
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    sudo="sudo"
  else
    echo "setup: missing packages (${missing[*]}) and not root; install them or run as root" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
