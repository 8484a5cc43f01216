#!/usr/bin/env bash
# Installs what ltxmps needs on a fresh Debian 12/13 machine, idempotently:
#   Debian packages (compiler, CMake, Catch2, Google Benchmark, Doxygen, nlohmann-json, SentencePiece, CLI11,
#   libpng, FFmpeg dev libraries), LibTorch through `pip install torch==2.13.0` (a CPU build on this machine),
#   and the pinned Python test oracle (diffusers, transformers, safetensors, sentencepiece).
# Set LTXMPS_SKIP_ORACLE=1 to skip the Python oracle (the build and the main job do not need it).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ cmake ninja-build ccache pkg-config catch2 libbenchmark-dev doxygen nlohmann-json3-dev
          libsentencepiece-dev libcli11-dev libpng-dev libavformat-dev libavcodec-dev libswscale-dev libavutil-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (LibTorch for C++ comes with it)"
  "$PY" -m pip install -q torch==2.13.0
fi
if [ "${LTXMPS_SKIP_ORACLE:-0}" != "1" ]; then
  if ! "$PY" - <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
pins = [l.split("==") for l in open("tests/parity/requirements.txt") if "==" in l and not l.startswith("torch")]
sys.exit(0 if all(version(n.strip()) == v.strip() for n, v in pins) else 1)
PYEOF
  then
    echo "setup: installing the pinned Python test oracle (tests/parity/requirements.txt)"
    "$PY" -m pip install -q -r tests/parity/requirements.txt
  fi
fi
echo "setup: ok (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
