#!/usr/bin/env bash
# Configures and builds ltxmps into ${BUILD_DIR:-build} (Release, ninja, ccache). Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
TORCH_PREFIX=$(${PYTHON:-python3} -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
