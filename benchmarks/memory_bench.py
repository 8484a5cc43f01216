#!/usr/bin/env python3
"""Seconds per LTXVideoTransformer3DModel forward and peak device memory in diffusers' weight modes: the baseline
for benchmarks/memory_bench.cpp.

Modes:
  resident       the model in bf16 on the GPU;
  layerwise_fp8  enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16):
                 weights stored in FP8 (no scale), cast to bf16 per layer;
  group_offload  enable_group_offload(onload_device, offload_device=cpu, offload_type="block_level",
                 num_blocks_per_group=1, use_stream=True): blocks in pinned host memory, prefetched on a side stream.

Default shape: LTX-Video 13B (48 layers, 32 heads x 128 = 4096, caption 4096, in/out 128) with random bf16 weights,
latent 16 x 16 x 24 = 6144 tokens, 128 text tokens, batch 2 (classifier-free guidance), RoPE scale (8/25, 32, 32).
Each mode builds a fresh model. Prints one JSON line per mode: median / min seconds over --iters timed forwards
after --warmup, the peak of allocated device memory during them (torch.cuda.max_memory_allocated, weights
included) and the weights held on the device before the forward.

    python3 benchmarks/memory_bench.py                       # 13B, CUDA, every mode
    python3 benchmarks/memory_bench.py --smoke               # tiny config on the CPU (resident, layerwise_fp8)
"""

import argparse
import gc
import json
import statistics
import time

import diffusers
import torch

from bench_support import add_shape_arguments, apply_smoke_shape, build_transformer, transformer_inputs

MODES = ("resident", "layerwise_fp8", "group_offload")


def apply_mode(model, mode, device, dtype):
    if mode == "layerwise_fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    elif mode == "group_offload":
        model.to("cpu")
        model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    return model


def time_forward(model, inputs, device, warmup, iters):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated(device) if cuda else None
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            if i == warmup and cuda:
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            t0 = time.perf_counter()
            model(**inputs)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return times, weights, peak


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    add_shape_arguments(p, layers=48, heads=32, head_dim=128)
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny config on the CPU for a quick check")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: '{m}' is not one of {', '.join(MODES)}")
    if args.smoke:
        apply_smoke_shape(args)
        args.device = "cpu"
        modes = [m for m in modes if m != "group_offload"]  # needs an accelerator to offload from

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    S, B = args.latent_frames * args.latent_height * args.latent_width, args.batch
    torch.manual_seed(1)
    inputs = transformer_inputs(args, device, dtype)
    gib = lambda b: None if b is None else round(b / 2**30, 4)  # noqa: E731
    for mode in modes:
        model = apply_mode(build_transformer(args, device, dtype), mode, device, dtype)
        times, weights, peak = time_forward(model, inputs, device, args.warmup, args.iters)
        print(json.dumps(dict(
            impl="diffusers", mode=mode, device=str(device),
            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "",
            layers=args.layers, dim=args.heads * args.head_dim, tokens=S, batch=B,
            median_s=round(statistics.median(times), 4), min_s=round(min(times), 4), peak_gib=gib(peak),
            device_weights_gib=gib(weights), iters=args.iters, torch=torch.__version__,
            diffusers=diffusers.__version__,
        )), flush=True)
        del model
        gc.collect()  # the casting and offload hooks hold the modules in reference cycles
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
