#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (policy, gpu, parity, pipeline labels) with CTest.
# GPU tests report SKIPPED with their reason on a machine without CUDA (the reason is printed below).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh -DLTXMPS_BUILD_TESTS=ON -DLTXMPS_BUILD_BENCHMARKS=ON -DLTXMPS_BUILD_EXAMPLES=ON -DLTXMPS_BUILD_PIPELINE=ON
build=${BUILD_DIR:-build}
status=0
ctest --test-dir "$build" --output-on-failure --timeout 900 "$@" || status=$?
grep -h "^SKIPPED:" "$build/Testing/Temporary/LastTest.log" 2>/dev/null | sort -u || true
exit $status
