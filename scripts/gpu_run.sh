#!/usr/bin/env bash
# One call on the GPU machine (device tool): build, run every test suite and the benchmarks, and leave the
# logs and the benchmark JSON in $OUT. The Python oracle's diffusers comes as wheels in .device/wheels
# (pip download here; the GPU machine has no network). Usage there:  bash scripts/gpu_run.sh [tests|bench|removal|memory|speed|all]
#   removal: only the GPU suites and the object-removal benchmarks (effects pass, removal loop at the 13B shape),
#            building only their targets.
#   memory:  the memory-budget and streaming suites and the weight-mode benchmarks at the 13B shape (ltxmps and
#            diffusers), plotted into $OUT/memory.png, building only their targets.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-/tmp/ltxmps-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .device/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/wheels/*.whl && export PYTHONPATH=/tmp/site
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
  g++ --version | head -1; cmake --version | head -1
} 2>&1 | tee "$OUT/machine.txt"

TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DLTXMPS_BUILD_DOCS=OFF > "$OUT/configure.log" 2>&1 || { tail -50 "$OUT/configure.log"; exit 1; }
# Keep going past a failing target so that the suites that did build still run; the failure is reported.
targets=()
[ "$what" = removal ] && targets=(--target ltxmps_gpu_tests ltxmps_gpu_model_tests ltxmps_effects_mask_tests
                                  ltxmps_effects_bench ltxmps_pipeline_bench)
[ "$what" = speed ] && targets=(--target ltxmps_gpu_tests ltxmps_gpu_model_tests ltxmps_gpu_kernels_tests
                                ltxmps_gpu_fp8_tests ltxmps_kernels_tests ltxmps_transformer_bench ltxmps_pipeline_bench ltxmps_cli)
[ "$what" = memory ] && targets=(--target ltxmps_policy_tests ltxmps_weight_streaming_tests ltxmps_gpu_streaming_tests
                                 ltxmps_memory_bench ltxmps_headers_cxx17 ltxmps_headers_cxx20)
if cmake --build build-gpu -j "$(nproc)" "${targets[@]}" -- -k 0 > "$OUT/build.log" 2>&1; then echo "build ok"; else
  echo "BUILD FAILED (some targets)"; grep -E "error|FAILED" -A3 "$OUT/build.log" | head -60; fi

status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  ctest --test-dir build-gpu --output-on-failure --timeout 600 > "$OUT/ctest.log" 2>&1 || status=1
  grep -E "tests passed|Passed|Failed|Skipped|\*\*\*" "$OUT/ctest.log" | tail -40
  build-gpu/tests/ltxmps_gpu_tests --success --reporter compact > "$OUT/gpu_tests.log" 2>&1 || status=1
  tail -3 "$OUT/gpu_tests.log"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  build-gpu/benchmarks/ltxmps_bench_policy --benchmark_format=json --benchmark_out="$OUT/bench_policy.json" \
    --benchmark_out_format=json 2>&1 | grep -E "^BM_|Run on|CPU" | head -20
  for cfg in "2b" "13b"; do
    args=""; [ "$cfg" = 13b ] && args="--layers 48 --head-dim 128"
    echo "== transformer $cfg C++"; build-gpu/benchmarks/ltxmps_transformer_bench $args | tee -a "$OUT/transformer_bench.jsonl"
    echo "== transformer $cfg diffusers"; python3 benchmarks/transformer_bench.py $args | tee -a "$OUT/transformer_bench.jsonl"
  done
  echo "== pipeline t2v 2B 768x512x121 30 steps C++"; build-gpu/benchmarks/ltxmps_pipeline_bench | tee -a "$OUT/pipeline_bench.jsonl"
  echo "== pipeline diffusers"; python3 benchmarks/pipeline_bench.py | tee -a "$OUT/pipeline_bench.jsonl"
  echo "== t5-xxl encode C++"; build-gpu/benchmarks/ltxmps_t5_bench | tee -a "$OUT/t5_bench.jsonl"
  echo "== t5-xxl encode transformers"; python3 benchmarks/t5_bench.py | tee -a "$OUT/t5_bench.jsonl"
  for args in "" "--tiling" "--tiling --framewise"; do
    echo "== vae decode $args C++"; build-gpu/benchmarks/ltxmps_vae_bench $args | tee -a "$OUT/vae_bench.jsonl"
    echo "== vae decode $args diffusers"; python3 benchmarks/vae_bench.py $args | tee -a "$OUT/vae_bench.jsonl"
  done
fi
if [ "$what" = speed ]; then
  for suite in ltxmps_kernels_tests ltxmps_gpu_kernels_tests ltxmps_gpu_fp8_tests ltxmps_gpu_model_tests ltxmps_gpu_tests; do
    build-gpu/tests/$suite > "$OUT/$suite.log" 2>&1 || status=1
    echo "$suite: $(tail -2 "$OUT/$suite.log" | tr '\n' ' ')"
  done
  build-gpu/reference_pipeline/ltxmps plan --device cuda --precision bf16 > "$OUT/plan.txt" 2>&1; grep -A12 -i "kernels" "$OUT/plan.txt" | head -14
  for cfg in 2b 13b; do
    args=""; [ "$cfg" = 13b ] && args="--layers 48 --head-dim 128"
    for mode in "--fused 0" "--fused 1" "--fused 1 --fp8-matmul 1"; do
      echo "== transformer $cfg C++ $mode"; build-gpu/benchmarks/ltxmps_transformer_bench $args $mode | tee -a "$OUT/speed_bench.jsonl"
    done
    echo "== transformer $cfg diffusers"; python3 benchmarks/transformer_bench.py $args | tee -a "$OUT/speed_bench.jsonl"
  done
  echo "== transformer 2b diffusers torch.compile"; timeout 150 python3 benchmarks/transformer_bench.py --compile | tee -a "$OUT/speed_bench.jsonl"
  echo "== pipeline t2v 2B C++"; build-gpu/benchmarks/ltxmps_pipeline_bench | tee -a "$OUT/speed_bench.jsonl"
  echo "== pipeline t2v 2B diffusers"; python3 benchmarks/pipeline_bench.py | tee -a "$OUT/speed_bench.jsonl"
fi
if [ "$what" = removal ]; then
  for suite in ltxmps_gpu_tests ltxmps_gpu_model_tests ltxmps_effects_mask_tests; do
    build-gpu/tests/$suite > "$OUT/$suite.log" 2>&1 || status=1
    echo "$suite: $(tail -2 "$OUT/$suite.log" | tr '\n' ' ')"
  done
fi
if [ "$what" = removal ] || [ "$what" = bench ] || [ "$what" = all ]; then
  large="--layers 48 --heads 32 --head-dim 128"
  echo "== effects pass 13B 512x768x209 C++"; build-gpu/benchmarks/ltxmps_effects_bench | tee -a "$OUT/effects_bench.jsonl"
  echo "== effects pass C++ with RoPE"; build-gpu/benchmarks/ltxmps_effects_bench --rope 1 --iters 1 | tee -a "$OUT/effects_bench.jsonl"
  echo "== effects pass official maps (diffusers)"; python3 benchmarks/effects_bench.py | tee -a "$OUT/effects_bench.jsonl"
  echo "== removal 13B 512x768x121 C++"; build-gpu/benchmarks/ltxmps_pipeline_bench --job remove $large --steps ${REMOVAL_STEPS:-30} | tee -a "$OUT/removal_bench.jsonl"
  echo "== removal diffusers LTXConditionPipeline"; python3 benchmarks/pipeline_bench.py --job remove $large --steps ${REMOVAL_STEPS:-30} | tee -a "$OUT/removal_bench.jsonl"
fi
if [ "$what" = memory ]; then
  for suite in ltxmps_policy_tests ltxmps_weight_streaming_tests ltxmps_gpu_streaming_tests; do
    build-gpu/tests/$suite > "$OUT/$suite.log" 2>&1 || status=1
    echo "$suite: $(tail -2 "$OUT/$suite.log" | tr '\n' ' ')"
  done
  echo "== memory 13B C++ (resident, streamed, fp8, fp8_streamed)"
  build-gpu/benchmarks/ltxmps_memory_bench | tee -a "$OUT/memory_bench.jsonl" || status=1
  echo "== memory 13B diffusers (resident, layerwise_fp8, group_offload)"
  python3 benchmarks/memory_bench.py | tee -a "$OUT/memory_bench.jsonl" || status=1
  python3 benchmarks/plot_memory.py "$OUT/memory_bench.jsonl" --out "$OUT/memory.png" || status=1
fi
exit $status
