#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (policy, gpu, parity, pipeline labels) with CTest.
# GPU tests report SKIPPED with their reason on a machine without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure --timeout 900 "$@"
