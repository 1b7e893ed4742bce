#!/usr/bin/env bash
# The main job: validate the default profile with the freshly built `strata`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec build/src/cli/strata profile check profiles/default.toml "$@"
