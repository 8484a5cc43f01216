#!/usr/bin/env bash
# The main job on an embedded default: sets up, builds the `ltxmps` CLI and runs `ltxmps generate` with no model
# folder: a tiny LTX-Video with random weights, built in memory, runs the whole pipeline (T5 prompt encoding, the
# transformer's denoising loop, the VAE decode) on this machine's device. The run first prints the execution plan it
# gets (device, dtype per component, offload, attention, noise, memory; each with its reason), then progress, then
# writes out/ltxmps_default.mp4 (H.264; the PNG frame folder out/ltxmps_default where the build has no FFmpeg).
# The weights are random, so the video is noise-like. Arguments go to `ltxmps generate` (--seed, --height, --width,
# --num-frames, --steps, --device, --precision, --output relative to out/, ...); `ltxmps plan --help` for the plan only.
set -euo pipefail
cd "$(dirname "$0")/.."
LTXMPS_SKIP_ORACLE=1 scripts/setup.sh
scripts/build.sh -DLTXMPS_BUILD_TESTS=OFF -DLTXMPS_BUILD_BENCHMARKS=OFF >/dev/null
BUILD_DIR=${BUILD_DIR:-build}
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$PWD/$BUILD_DIR" ;; esac
mkdir -p out
cd out
"$BUILD_DIR/reference_pipeline/ltxmps" generate "$@"
