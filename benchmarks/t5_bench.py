#!/usr/bin/env python3
"""One T5 encoder forward in transformers: the baseline for benchmarks/t5_bench.cpp.

Default: T5-XXL as LTX-Video uses it (google/t5-v1_1-xxl shape: d_model 4096, d_kv 64, 64 heads, d_ff 10240,
24 layers, gated-gelu, 32 buckets, max distance 128), random weights in bf16, batch 2 (prompt + negative), 128
tokens, no attention mask (LTXPipeline calls T5 without it). Prints one JSON line: median / min milliseconds over
--iters timed runs after --warmup, and the peak CUDA memory (weights included).

    python3 benchmarks/t5_bench.py                 # full size, CUDA
    python3 benchmarks/t5_bench.py --smoke         # tiny config, any device
"""

import argparse
import json
import statistics
import time

import torch
from transformers import T5Config, T5EncoderModel

XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24,
           relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu")
SMOKE = dict(XXL, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, vocab_size=128)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    config = T5Config(**(SMOKE if args.smoke else XXL))
    if args.smoke and args.device == "cuda" and not torch.cuda.is_available():
        args.device = "cpu"
    device = torch.device(args.device)
    torch.manual_seed(0)
    with device:
        model = T5EncoderModel._from_config(config, dtype=DTYPES[args.dtype]).eval()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.tokens), device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = model(input_ids=ids).last_hidden_state
            if cuda:
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({
        "impl": "transformers", "device": str(device), "dtype": args.dtype, "batch": args.batch, "tokens": args.tokens,
        "layers": config.num_layers, "d_model": config.d_model, "output_dtype": str(out.dtype).replace("torch.", ""),
        "median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "iters": args.iters,
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        "attn_implementation": getattr(model.config, "_attn_implementation", None), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
