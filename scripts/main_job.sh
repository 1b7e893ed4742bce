#!/usr/bin/env bash
# The main job: train the default GPT with its optimizer state offloaded to NVMe
# (profiles/default.toml), on text every Debian machine has. Extra arguments go to
# `strata train` (e.g. --steps 200, --log-json run.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
build/src/cli/strata profile check profiles/default.toml >/dev/null
exec build/src/cli/strata train --profile profiles/default.toml "$@"
