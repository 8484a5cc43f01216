#!/usr/bin/env python3
"""One LTXVideoTransformer3DModel forward in diffusers: the baseline for benchmarks/transformer_bench.cpp.

Default shape: LTX-Video 2B (28 layers, 32 heads x 64 = 2048, cross 2048, caption 4096, in/out 128) with
random weights in bf16, a 768x512x121 video -> latent 16 x 24 x 16 = 6144 tokens, 128 text tokens, batch 2
(classifier-free guidance), per-sample timesteps, integer-free RoPE scale (8/25, 32, 32) as LTXPipeline uses.

Prints one JSON line: median / min milliseconds over --iters timed runs after --warmup runs, the FLOPs of
one forward (matmuls and attention, see forward_flops), TFLOP/s and MFU against --peak-tflops (989:
H100 SXM dense bf16).

    python3 benchmarks/transformer_bench.py                  # full size, CUDA
    python3 benchmarks/transformer_bench.py --smoke          # tiny config, any device (a check, not a benchmark)
    python3 benchmarks/transformer_bench.py --profile t.json # + a Chrome trace of 3 more forwards (kernel_profile.py)
    python3 benchmarks/transformer_bench.py --compile        # torch.compile of the whole model (its wait printed)
    python3 benchmarks/transformer_bench.py --compile regional  # each block compiled (compile_repeated_blocks)
"""

import argparse
import json
import statistics
import time

import torch

from bench_support import add_shape_arguments, apply_smoke_shape, build_transformer, transformer_inputs

PROFILE_FORWARDS = 3  # as transformer_bench.cpp (its Note [Kernel profile])


def forward_flops(layers, dim, cross_dim, caption, in_ch, out_ch, tokens, text, batch):
    """2·m·n·k per matmul; attention counts q·kᵀ and p·v (softmax, norms and elementwise ops are left out)."""
    s, l, d = tokens, text, dim
    per_layer = (
        4 * 2 * s * d * d            # attn1 q, k, v, out
        + 2 * 2 * s * s * d          # attn1 q·kᵀ, p·v
        + 2 * 2 * s * d * d          # attn2 q, out
        + 2 * 2 * l * cross_dim * d  # attn2 k, v
        + 2 * 2 * s * l * d          # attn2 q·kᵀ, p·v
        + 2 * 2 * s * d * 4 * d      # feed-forward
    )
    outer = 2 * s * in_ch * d + 2 * s * d * out_ch + 2 * l * (caption * d + d * d) + 2 * (256 * d + d * d + d * 6 * d)
    return batch * (layers * per_layer + outer)


def profile_forwards(model, inputs, device, path):
    """PROFILE_FORWARDS forwards under torch.profiler (Kineto) into a Chrome trace; CUDA activity on CUDA only."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
        for _ in range(PROFILE_FORWARDS):
            model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    prof.export_chrome_trace(path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(p, layers=28, heads=32, head_dim=64)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--compile", nargs="?", const="full", choices=["full", "regional"], default=None,
                   help="torch.compile the model first ('full', the default: the whole model; 'regional': each "
                        "transformer block, diffusers' compile_repeated_blocks, the same code compiled once and "
                        "reused, in a fraction of the wait); the compile time is printed, not counted in the forward")
    p.add_argument("--profile", metavar="PATH", default="",
                   help=f"after timing, record {PROFILE_FORWARDS} more forwards with torch.profiler into this Chrome trace")
    p.add_argument("--smoke", action="store_true", help="tiny config on --device (default cpu) for a quick check")
    args = p.parse_args()
    if args.smoke:
        apply_smoke_shape(args)
        if args.device == "cuda" and not torch.cuda.is_available():
            args.device = "cpu"

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.device(args.device)
    dim = args.heads * args.head_dim
    model = build_transformer(args, device, dtype)
    inputs = transformer_inputs(args, device, dtype)
    S, L, B = args.latent_frames * args.latent_height * args.latent_width, args.text_len, args.batch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    compile_s = None
    if args.compile:
        if args.compile == "regional":
            model.compile_repeated_blocks(fullgraph=True)
        else:
            model = torch.compile(model)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(**inputs)
        sync()
        compile_s = round(time.perf_counter() - t0, 1)

    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            sync()
            t0 = time.perf_counter()
            model(**inputs)
            sync()
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)

    if args.profile:
        profile_forwards(model, inputs, device, args.profile)

    flops = forward_flops(args.layers, dim, dim, args.caption_channels, args.channels, args.channels, S, L, B)
    median = statistics.median(times)
    tflops = flops / (median * 1e-3) / 1e12
    print(json.dumps(dict(
        impl={None: "diffusers", "full": "diffusers+compile", "regional": "diffusers+regional compile"}[args.compile], compile_seconds=compile_s, device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        dtype=args.dtype, layers=args.layers, dim=dim, heads=args.heads, tokens=S, text=L, batch=B,
        median_ms=round(median, 3), min_ms=round(min(times), 3), iters=args.iters, gflop=round(flops / 1e9, 1),
        tflops=round(tflops, 2), mfu=round(tflops / args.peak_tflops, 4), torch=torch.__version__,
        **(dict(profile_forwards=PROFILE_FORWARDS) if args.profile else {}),
    )))


if __name__ == "__main__":
    main()
