#!/usr/bin/env bash
# The main job on an embedded default: video object removal (OmnimatteZero on LTX-Video) end to end with no data
# and no download. It sets up, builds the `ltxmps` CLI, and then
#   1. draws a short synthetic clip into out/: a textured background, a moving object and its moving shadow
#      (out/clip.mp4) and the object's mask WITHOUT the shadow (out/object_mask.mp4);
#   2. `ltxmps effects-mask` grows the object's mask by what the model's self-attention ties to the object
#      (out/total_mask.mp4);
#   3. `ltxmps remove` regenerates the masked latent tokens: the background (out/background.mp4).
# The embedded model is a tiny LTX-Video with RANDOM weights, built in memory: every stage runs for real, but the
# background is not a real inpainting and the effects mask is not a real shadow detector. Give a real model with
# LTXMPS_MODEL_DIR=/path/to/LTX-Video-0.9.7-diffusers. Arguments go to `ltxmps remove`. (PNG frame folders instead of
# .mp4 files where the build has no FFmpeg.) `ltxmps generate` (text/image/video-to-video) stays available.
set -euo pipefail
cd "$(dirname "$0")/.."
LTXMPS_SKIP_ORACLE=1 scripts/setup.sh
scripts/build.sh -DLTXMPS_BUILD_TESTS=OFF -DLTXMPS_BUILD_BENCHMARKS=OFF >/dev/null
BUILD_DIR=${BUILD_DIR:-build}
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$PWD/$BUILD_DIR" ;; esac
ltxmps="$BUILD_DIR/reference_pipeline/ltxmps"
mkdir -p out
cd out
ext=.mp4
"$ltxmps" synthetic-clip --output-dir . | grep -q "clip.mp4" || ext=""
model=()
[ -n "${LTXMPS_MODEL_DIR:-}" ] && model=(--model-dir "$LTXMPS_MODEL_DIR")
echo "ltxmps: synthetic clip: clip$ext (object + shadow), object_mask$ext (object only)" >&2
"$ltxmps" effects-mask "${model[@]}" --video "clip$ext" --mask "object_mask$ext" --output "total_mask$ext" \
  --threshold adaptive
"$ltxmps" remove "${model[@]}" --video "clip$ext" --mask "total_mask$ext" --effects none --output "background$ext" "$@"
echo "ltxmps: wrote out/clip$ext, out/object_mask$ext, out/total_mask$ext, out/background$ext" >&2
[ -n "${LTXMPS_MODEL_DIR:-}" ] || echo "ltxmps: the weights were RANDOM: the background is not a real inpainting" >&2
