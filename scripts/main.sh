#!/usr/bin/env bash
# The main job on an embedded default: sets up, builds, and shows the execution plan this machine gets for
# LTX-Video (device, dtype per component, offload, attention, noise, memory; each with its reason).
# Arguments go to ltxmps_print_plan (--json, --device, --precision, --cpu-offload, --simulate cpu|cuda|mps|mps13).
set -euo pipefail
cd "$(dirname "$0")/.."
LTXMPS_SKIP_ORACLE=1 scripts/setup.sh
scripts/build.sh -DLTXMPS_BUILD_TESTS=OFF -DLTXMPS_BUILD_BENCHMARKS=OFF >/dev/null
"${BUILD_DIR:-build}/examples/ltxmps_print_plan" "$@"
