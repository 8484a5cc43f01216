#!/usr/bin/env bash
# One call on the GPU machine (device tool): build, run every test suite and the benchmarks, and leave the
# logs and the benchmark JSON in $OUT. The Python oracle's diffusers comes as wheels in .device/wheels
# (pip download here; the GPU machine has no network). Usage there:  bash scripts/gpu_run.sh MODE [MODE ...]
# MODE: tests | bench | removal | memory | speed | fp8 | vae | kernels | profile | workflow | twopass | seed | graphs |
# compile | choices | conditioned | all
# (default all);
# several modes share one build. Modes that measure beside diffusers end with a table of same-run ratios
# (benchmarks/bench_ratios.py).
#   bench:   every benchmark against its Python counterpart, in one device call (under its 10 minutes): the 2B and
#            13B forwards (ltxmps bf16, FP8 matmul + FP8 attention, diffusers eager and with its blocks compiled,
#            torch.compile of the whole model being `compile`'s), the 2B text-to-video and image-to-video end to
#            end, T5-XXL, the VAE decode and encode modes (object removal has its own mode).
#   removal: only the GPU suites and the object-removal benchmarks (effects pass, removal loop at the 13B shape),
#            building only their targets.
#   speed:   the kernel and FP8 suites, the 2B and 13B forwards (fused, FP8 matmul, diffusers eager and compiled),
#            the 13B FP8 weight storage against resident, the 2B text-to-video end to end.
#   profile: per-kernel GPU time of the forward (unfused, fused, FP8, FP8 storage, diffusers; PROFILE_ARGS and PROFILE_RUNS
#            choose the shape and the variants, default the 2B and all; "pipeline", "i2v" and "removal" add a step
#            of the 2B text-to-video, image-to-video and object-removal loops, op by op) from PyTorch profiler (Kineto)
#            traces into $OUT/kernel_profile.md.
#   compile: the 2B and 13B forwards (ltxmps bf16 and FP8 matmul + FP8 attention, diffusers eager and
#            torch.compile of the whole model) and their ratios.
#   choices: every cuBLASLt algorithm and cuDNN attention plan offered for the forward's shapes, beside ATen's
#            choice (ltxmps_library_choices_bench).
#   conditioned: the 0.9.0 VAE's encode in bfloat16 (untiled as image-to-video runs it, tiled as removal), then the
#            loops whose tokens have timesteps of their own (image-to-video, object removal) beside text-to-video at
#            the 2B size, then object removal at the 13B size, C++ and diffusers, each the faster of two runs.
#   kernels: the kernel and FP8 suites (CPU and GPU) only.
#   vae:     the GPU model suite and the VAE decode modes (C++ and diffusers, two rounds).
#   fp8:     the kernel and FP8 suites, the 2B and 13B forwards (fused bf16, FP8 matmul, diffusers eager) and the 13B
#            FP8 weight storage against resident: the FP8 paths' numbers without the rest of `speed`.
#   seed:    the whole seed job (13B + T5-XXL + 0.9.7 VAE from files written by the bench) under an 8 GiB budget:
#            peak device memory per phase, host memory while loading; the T5 streaming suites.
#   workflow: the 0.9.7 two-pass flow at the 13B shape (C++ and diffusers) and the VAE decode modes.
#   twopass: the two-pass flow of `workflow` alone (its JSON lines carry the peak memory of each phase).
#   graphs:  the CUDA graph suite, then the 2B and 13B forwards (bf16, FP8 matmul + FP8 attention) eager and as
#            CUDA graph replays, and the pipeline jobs (t2v and removal at the 2B size, all three at the smoke size)
#            with and without graphs; diffusers' 2B text-to-video beside them.
#   memory:  the memory-budget and streaming suites and the weight-mode benchmarks at the 13B shape (ltxmps and
#            diffusers), plotted into $OUT/memory.png, building only their targets.
set -uo pipefail
cd "$(dirname "$0")/.."
what=" ${*:-all} "
has() { [[ "$what" == *" $1 "* ]]; }
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
# FP8 attention: the cuDNN frontend's headers from its wheel (carried in .device/wheels, installed into /tmp/site
# above) and cudnn.h from the nvidia-cudnn wheel beside torch (Note [FP8 attention build]).
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0])' 2>/dev/null || true)
fe_args=()
[ -f /tmp/site/include/cudnn_frontend.h ] && [ -n "$CUDNN_ROOT" ] &&
  fe_args=(-DLTXMPS_CUDNN_FRONTEND_INCLUDE_DIR=/tmp/site/include -DLTXMPS_CUDNN_ROOT="$CUDNN_ROOT")
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" "${fe_args[@]}" \
  -DLTXMPS_BUILD_DOCS=OFF > "$OUT/configure.log" 2>&1 || { tail -50 "$OUT/configure.log"; exit 1; }
# Keep going past a failing target so that the suites that did build still run; the failure is reported.
targets=()
add() { targets+=("$@"); }
has removal && add ltxmps_gpu_tests ltxmps_gpu_model_tests ltxmps_effects_mask_tests ltxmps_effects_bench ltxmps_pipeline_bench
has speed && add ltxmps_gpu_kernels_tests ltxmps_gpu_fp8_tests ltxmps_kernels_tests ltxmps_fp8_tests ltxmps_gpu_fp8_attention_tests ltxmps_transformer_bench \
                 ltxmps_pipeline_bench ltxmps_memory_bench ltxmps_cli
has kernels && add ltxmps_gpu_kernels_tests ltxmps_gpu_fp8_tests ltxmps_kernels_tests ltxmps_fp8_tests \
                   ltxmps_gpu_fp8_attention_tests
has fp8 && add ltxmps_gpu_kernels_tests ltxmps_gpu_fp8_tests ltxmps_kernels_tests ltxmps_fp8_tests \
               ltxmps_gpu_fp8_attention_tests \
               ltxmps_transformer_bench ltxmps_memory_bench
has profile && add ltxmps_transformer_bench ltxmps_pipeline_bench
has seed && add ltxmps_seed_job_bench ltxmps_gpu_model_tests ltxmps_t5_streaming_tests
has workflow && add ltxmps_pipeline_bench ltxmps_vae_bench ltxmps_t5_bench
has twopass && add ltxmps_pipeline_bench
has compile && add ltxmps_transformer_bench
has choices && add ltxmps_library_choices_bench
has conditioned && add ltxmps_pipeline_bench ltxmps_vae_bench
has bench && add ltxmps_transformer_bench ltxmps_pipeline_bench ltxmps_t5_bench ltxmps_vae_bench ltxmps_bench_policy
has graphs && add ltxmps_gpu_graph_tests ltxmps_gpu_tests ltxmps_transformer_bench ltxmps_pipeline_bench
has vae && add ltxmps_vae_bench ltxmps_gpu_model_tests
has memory && add ltxmps_policy_tests ltxmps_weight_streaming_tests ltxmps_gpu_streaming_tests ltxmps_memory_bench \
                  ltxmps_headers_cxx17 ltxmps_headers_cxx20
# tests and all build everything.
if has tests || has all; then targets=(); elif [ ${#targets[@]} -gt 0 ]; then targets=(--target "${targets[@]}"); fi
if cmake --build build-gpu -j "$(nproc)" "${targets[@]}" -- -k 0 > "$OUT/build.log" 2>&1; then echo "build ok"; else
  echo "BUILD FAILED (some targets)"; grep -E "error|FAILED" -A3 "$OUT/build.log" | head -60; fi

status=0
if has tests || has all; then
  ctest --test-dir build-gpu --output-on-failure --timeout 600 > "$OUT/ctest.log" 2>&1 || status=1
  grep -E "tests passed|Passed|Failed|Skipped|\*\*\*" "$OUT/ctest.log" | tail -40
  build-gpu/tests/ltxmps_gpu_tests --success --reporter compact > "$OUT/gpu_tests.log" 2>&1 || status=1
  tail -3 "$OUT/gpu_tests.log"
fi
# The VAE decode modes (untiled, spatial tiles, spatial + framewise tiles) and the encode (untiled, spatial tiles),
# C++ then diffusers for each; $1 adds arguments to every run.
vae_modes() {
  for args in "" "--tiling" "--tiling --framewise" "--encode" "--encode --tiling"; do
    echo "== vae $args ${1:-} C++"; build-gpu/benchmarks/ltxmps_vae_bench $args ${1:-} | tee -a "$OUT/vae_bench.jsonl"
    echo "== vae $args ${1:-} diffusers"; python3 benchmarks/vae_bench.py $args ${1:-} | tee -a "$OUT/vae_bench.jsonl"
  done
}
# The 2B and 13B forwards: ltxmps bf16 and FP8 matmul + FP8 attention, diffusers eager and torch.compile (the
# compile wait is reported beside the forward, not counted in it), appended to the JSON lines file $1; $2 is the
# compilation, full (the whole model) or regional (each block once, diffusers' compile_repeated_blocks).
forwards_vs_compile() {
  for cfg in 2b 13b; do
    local args=""; [ "$cfg" = 13b ] && args="--layers 48 --head-dim 128"
    for mode in "" "--fp8-matmul 1 --fp8-attention 1"; do
      echo "== transformer $cfg C++ $mode"; build-gpu/benchmarks/ltxmps_transformer_bench $args $mode | tee -a "$1"
    done
    echo "== transformer $cfg diffusers"; python3 benchmarks/transformer_bench.py $args | tee -a "$1"
    echo "== transformer $cfg diffusers torch.compile ($2) [${SECONDS} s]"
    timeout 420 python3 benchmarks/transformer_bench.py $args --compile "$2" | tee -a "$1"
  done
}
ratios() { echo "== same-run ratios ($*)"; python3 benchmarks/bench_ratios.py "$@" | tee -a "$OUT/ratios.md"; }
if has bench || has all; then
  build-gpu/benchmarks/ltxmps_bench_policy --benchmark_format=json --benchmark_out="$OUT/bench_policy.json" \
    --benchmark_out_format=json 2>&1 | grep -E "^BM_|Run on|CPU" | head -20
  forwards_vs_compile "$OUT/transformer_bench.jsonl" regional
  echo "== pipeline t2v 2B 768x512x121 30 steps C++ [${SECONDS} s]"; build-gpu/benchmarks/ltxmps_pipeline_bench | tee -a "$OUT/pipeline_bench.jsonl"
  echo "== pipeline diffusers"; python3 benchmarks/pipeline_bench.py | tee -a "$OUT/pipeline_bench.jsonl"
  echo "== pipeline i2v 2B C++"; build-gpu/benchmarks/ltxmps_pipeline_bench --job i2v | tee -a "$OUT/pipeline_bench.jsonl"
  echo "== pipeline i2v diffusers"; python3 benchmarks/pipeline_bench.py --job i2v | tee -a "$OUT/pipeline_bench.jsonl"
  echo "== t5-xxl encode C++ [${SECONDS} s]"; build-gpu/benchmarks/ltxmps_t5_bench | tee -a "$OUT/t5_bench.jsonl"
  echo "== t5-xxl encode transformers"; python3 benchmarks/t5_bench.py | tee -a "$OUT/t5_bench.jsonl"
  echo "[${SECONDS} s]"; vae_modes
  ratios "$OUT/transformer_bench.jsonl" "$OUT/pipeline_bench.jsonl" "$OUT/t5_bench.jsonl" "$OUT/vae_bench.jsonl"
fi
if has compile; then
  forwards_vs_compile "$OUT/compile_bench.jsonl" full
  ratios "$OUT/compile_bench.jsonl"
fi
if has choices; then
  echo "== cuBLASLt algorithms and cuDNN attention plans beside ATen's choice"
  build-gpu/benchmarks/ltxmps_library_choices_bench > "$OUT/library_choices.jsonl" || status=1
  ratios "$OUT/library_choices.jsonl"
fi
if has speed || has kernels || has fp8; then
  for suite in ltxmps_kernels_tests ltxmps_gpu_kernels_tests ltxmps_fp8_tests ltxmps_gpu_fp8_tests \
               ltxmps_gpu_fp8_attention_tests; do
    build-gpu/tests/$suite > "$OUT/$suite.log" 2>&1 || status=1
    echo "$suite: $(tail -2 "$OUT/$suite.log" | tr '\n' ' ')"
  done
fi
# The 2B and 13B forwards (fused bf16, FP8 matmul, FP8 matmul + FP8 attention, FP8 attention, diffusers eager) and
# the 13B FP8 weight storage against resident,
# appended to the JSON lines file $1.
forwards() {
  for cfg in 2b 13b; do
    local args=""; [ "$cfg" = 13b ] && args="--layers 48 --head-dim 128"
    for mode in "--fused 1" "--fused 1 --fp8-matmul 1" "--fused 1 --fp8-matmul 1 --fp8-attention 1" \
                "--fused 1 --fp8-attention 1"; do
      echo "== transformer $cfg C++ $mode"; build-gpu/benchmarks/ltxmps_transformer_bench $args $mode | tee -a "$1"
    done
    echo "== transformer $cfg diffusers"; python3 benchmarks/transformer_bench.py $args | tee -a "$1"
  done
}
fp8_storage() {
  echo "== 13B weight storage: resident bf16 vs FP8 (dequantized per layer)"
  build-gpu/benchmarks/ltxmps_memory_bench --modes resident,fp8 | tee -a "$1"
}
if has speed; then
  build-gpu/reference_pipeline/ltxmps plan --device cuda --precision bf16 > "$OUT/plan.txt" 2>&1; grep -A12 -i "kernels" "$OUT/plan.txt" | head -14
  forwards "$OUT/speed_bench.jsonl"
  echo "== transformer 2b diffusers torch.compile"; timeout 150 python3 benchmarks/transformer_bench.py --compile | tee -a "$OUT/speed_bench.jsonl"
  fp8_storage "$OUT/speed_bench.jsonl"
  echo "== pipeline t2v 2B C++"; build-gpu/benchmarks/ltxmps_pipeline_bench | tee -a "$OUT/speed_bench.jsonl"
  echo "== pipeline t2v 2B diffusers"; python3 benchmarks/pipeline_bench.py | tee -a "$OUT/speed_bench.jsonl"
fi
if has fp8; then
  forwards "$OUT/fp8_bench.jsonl"
  fp8_storage "$OUT/fp8_bench.jsonl"
fi
if has vae; then
  build-gpu/tests/ltxmps_gpu_model_tests > "$OUT/ltxmps_gpu_model_tests.log" 2>&1 || status=1
  echo "ltxmps_gpu_model_tests: $(tail -2 "$OUT/ltxmps_gpu_model_tests.log" | tr '\n' ' ')"
  vae_modes; vae_modes  # two rounds
fi
if has graphs; then
  for suite in ltxmps_gpu_graph_tests ltxmps_gpu_tests; do
    build-gpu/tests/$suite > "$OUT/$suite.log" 2>&1 || status=1
    echo "$suite: $(tail -2 "$OUT/$suite.log" | tr '\n' ' ')"
  done
  for cfg in 2b 13b; do
    args=""; [ "$cfg" = 13b ] && args="--layers 48 --head-dim 128"
    for mode in "" "--fp8-matmul 1 --fp8-attention 1"; do
      for graph in 0 1; do
        echo "== transformer $cfg C++ $mode --cuda-graph $graph"
        build-gpu/benchmarks/ltxmps_transformer_bench $args $mode --cuda-graph $graph | tee -a "$OUT/graph_bench.jsonl"
      done
    done
  done
  # Each job at full size (2B) and at the smoke size, where the launches are most of a step.
  for job in t2v remove two-pass; do
    for size in "" "--smoke --device cuda --steps 10"; do
      [ "$job" = two-pass ] && [ -z "$size" ] && continue  # the 13B two-pass flow has its own mode (twopass)
      for graph in 1 0; do
        echo "== pipeline $job $size C++ --cuda-graphs $graph"
        build-gpu/benchmarks/ltxmps_pipeline_bench --job $job $size --repeat 2 --cuda-graphs $graph |
          tee -a "$OUT/graph_bench.jsonl"
      done
    done
  done
  echo "== pipeline t2v 2B diffusers"; python3 benchmarks/pipeline_bench.py | tee -a "$OUT/graph_bench.jsonl"
fi
if has conditioned; then
  for args in "" "--tiling"; do
    echo "== vae encode 0.9.0 bf16 $args C++"
    build-gpu/benchmarks/ltxmps_vae_bench --encode --config 090 --precision bf16 $args | tee -a "$OUT/conditioned_bench.jsonl"
    echo "== vae encode 0.9.0 bf16 $args diffusers"
    python3 benchmarks/vae_bench.py --encode --config 090 --dtype bf16 $args | tee -a "$OUT/conditioned_bench.jsonl"
  done
  for job in t2v i2v remove; do
    echo "== pipeline $job 2B C++"; build-gpu/benchmarks/ltxmps_pipeline_bench --job $job --repeat 2 |
      tee -a "$OUT/conditioned_bench.jsonl"
    echo "== pipeline $job 2B diffusers"; python3 benchmarks/pipeline_bench.py --job $job --repeat 2 |
      tee -a "$OUT/conditioned_bench.jsonl"
  done
  large="--job remove --layers 48 --heads 32 --head-dim 128 --repeat 2"
  echo "== removal 13B C++"; build-gpu/benchmarks/ltxmps_pipeline_bench $large | tee -a "$OUT/conditioned_bench.jsonl"
  echo "== removal 13B diffusers"; python3 benchmarks/pipeline_bench.py $large | tee -a "$OUT/conditioned_bench.jsonl"
  ratios "$OUT/conditioned_bench.jsonl"
fi
if has workflow || has twopass; then
  large="--layers 48 --heads 32 --head-dim 128 --height 512 --width 768 --frames 121"
  two="--job two-pass $large --steps 8 --second-pass-steps 10 --second-pass-strength 0.4 --guidance 3 --repeat 2"
  echo "== two-pass 13B 768x512x121, 8 + 4 steps C++"; build-gpu/benchmarks/ltxmps_pipeline_bench $two | tee -a "$OUT/two_pass_bench.jsonl"
  echo "== two-pass diffusers"; python3 benchmarks/pipeline_bench.py $two | tee -a "$OUT/two_pass_bench.jsonl"
fi
if has workflow; then
  vae_modes
  echo "== t5-xxl encode C++"; build-gpu/benchmarks/ltxmps_t5_bench | tee -a "$OUT/t5_bench.jsonl"
  echo "== t5-xxl encode transformers"; python3 benchmarks/t5_bench.py | tee -a "$OUT/t5_bench.jsonl"
fi
if has profile; then
  # Where the forward's GPU time goes, before (ATen references) and after (fused kernels), beside diffusers:
  # PyTorch profiler (Kineto) Chrome traces of 3 forwards each after 2 warm-up + 3 timed ones (this machine has no
  # nsys), tabulated by benchmarks/kernel_profile.py. The traces are deleted: the device tool returns few files.
  # PROFILE_ARGS picks the shape (default the 2B; "--layers 48 --head-dim 128" the 13B), PROFILE_RUNS the variants
  # (unfused fused fp8 fp8storage diffusers by default; fp8attn: FP8 matmul and FP8 attention).
  pargs=${PROFILE_ARGS:-}; runs=" ${PROFILE_RUNS:-unfused fused fp8 fp8storage diffusers} "; tables=()
  prof() { local name=$1 label=$2; shift 2; [[ "$runs" == *" $name "* ]] || return 0; echo "== profile $name $pargs"
           if "$@" $pargs --warmup 2 --iters 3 --profile "$OUT/fwd_$name.json" 2>>"$OUT/profile.log" |
                tee -a "$OUT/profile.log"; then tables+=("$label=$OUT/fwd_$name.json:3")
           else echo "profile $name failed: $(tail -3 "$OUT/profile.log")"; fi; }
  prof unfused "ltxmps unfused" build-gpu/benchmarks/ltxmps_transformer_bench --fused 0
  prof fused "ltxmps fused" build-gpu/benchmarks/ltxmps_transformer_bench --fused 1
  prof fp8 "ltxmps fp8" build-gpu/benchmarks/ltxmps_transformer_bench --fused 1 --fp8-matmul 1
  prof fp8storage "ltxmps fp8 storage" build-gpu/benchmarks/ltxmps_transformer_bench --fused 1 --weight-storage fp8
  prof fp8attn "ltxmps fp8 + fp8 attention" build-gpu/benchmarks/ltxmps_transformer_bench --fused 1 --fp8-matmul 1 \
    --fp8-attention 1
  prof diffusers "diffusers" python3 benchmarks/transformer_bench.py
  # A step of the 2B text-to-video loop ("pipeline"), image-to-video loop ("i2v") and object removal ("removal"),
  # op by op (a graph replay hides its kernels from the trace): steps 2 to 30 of the second run are recorded.
  for job in pipeline:t2v i2v:i2v removal:remove; do
    name=${job%%:*}; [[ "$runs" == *" $name "* ]] || continue
    echo "== profile $name (${job#*:} loop)"
    if build-gpu/benchmarks/ltxmps_pipeline_bench --job "${job#*:}" --repeat 2 --cuda-graphs 0 \
         --profile "$OUT/fwd_$name.json" | tee -a "$OUT/profile.log"; then
      tables+=("ltxmps ${job#*:} step=$OUT/fwd_$name.json:29")
    else echo "profile $name failed"; fi
  done
  python3 benchmarks/kernel_profile.py "${tables[@]}" > "$OUT/kernel_profile.md" 2>&1
  head -12 "$OUT/kernel_profile.md"
  rm -f "$OUT"/fwd_*.json
fi
if has removal; then
  for suite in ltxmps_gpu_tests ltxmps_gpu_model_tests ltxmps_effects_mask_tests; do
    build-gpu/tests/$suite > "$OUT/$suite.log" 2>&1 || status=1
    echo "$suite: $(tail -2 "$OUT/$suite.log" | tr '\n' ' ')"
  done
fi
if has removal || has all; then
  large="--layers 48 --heads 32 --head-dim 128"
  echo "== effects pass 13B 512x768x209 C++"; build-gpu/benchmarks/ltxmps_effects_bench | tee -a "$OUT/effects_bench.jsonl"
  echo "== effects pass C++ with RoPE"; build-gpu/benchmarks/ltxmps_effects_bench --rope 1 --iters 1 | tee -a "$OUT/effects_bench.jsonl"
  echo "== effects pass official maps (diffusers)"; python3 benchmarks/effects_bench.py | tee -a "$OUT/effects_bench.jsonl"
  echo "== removal 13B 512x768x121 C++"; build-gpu/benchmarks/ltxmps_pipeline_bench --job remove $large --steps ${REMOVAL_STEPS:-30} | tee -a "$OUT/removal_bench.jsonl"
  echo "== removal diffusers LTXConditionPipeline"; python3 benchmarks/pipeline_bench.py --job remove $large --steps ${REMOVAL_STEPS:-30} | tee -a "$OUT/removal_bench.jsonl"
fi
if has seed; then
  for suite in ltxmps_t5_streaming_tests ltxmps_gpu_model_tests; do
    build-gpu/tests/$suite > "$OUT/$suite.log" 2>&1 || status=1
    echo "$suite: $(tail -2 "$OUT/$suite.log" | tr '\n' ' ')"
  done
  df -h "${TMPDIR:-/tmp}" | tail -1; free -g | sed -n 2p
  echo "== seed job: 13B + T5-XXL + 0.9.7 VAE, 512x768x121, --max-gpu-memory 8GiB"
  build-gpu/benchmarks/ltxmps_seed_job_bench --jobs ${SEED_JOBS:-generate,remove} | tee -a "$OUT/seed_job.jsonl" || status=1
fi
if has memory; then
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
echo "gpu_run.sh: ${SECONDS} s"
exit $status
