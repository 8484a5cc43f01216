"""Summarise the GPU kernels of Chrome traces of transformer forwards (PyTorch profiler, i.e. Kineto).

Each input is LABEL=JSON[:FORWARDS]: a trace written by `transformer_bench --profile PATH` (C++, LibTorch's Kineto)
or `transformer_bench.py --profile PATH` (torch.profiler), and how many forwards it recorded (3 for both; default
1), so that the tables are per forward. Kernels are the trace events of category "kernel" (any case), grouped by
name: total "dur" (microseconds) and launch count; memory copies and sets (gpu_memcpy, gpu_memset) are not kernels
and are left out. A trace without kernel events (a CPU run, or CUDA activity not recorded) is reported on stderr
and skipped. Prints, as Markdown, the time per forward by kernel class (GEMM, attention, ltxmps fused kernels,
elementwise, normalisation, other) for every input side by side, then each input's top kernels. scripts/gpu_run.sh
runs it on the profiles of the 2B forward before (ATen references) and after (fused kernels), and of diffusers
eager; docs/benchmarks.md keeps the result.

    python3 benchmarks/kernel_profile.py "ltxmps fused=f1.json:3" "ltxmps unfused=f0.json:3" [--top 12]
"""

import argparse
import json
import re
import sys
from collections import OrderedDict

# First match wins; the patterns are the kernel names cuBLAS/cuBLASLt, cuDNN, FlashAttention and ATen use.
CLASSES = [
    ("ltxmps fused", r"ltxmps|rms_norm_modulate|gated_residual|qk_rms_norm_rope|layer_norm_modulate|quantize_fp8|dequantize_fp8"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn.*(mha|sdp)|sm90_flash|generated_fort_native_sdpa"),
    ("GEMM", r"gemm|cutlass|sm90_xmma|nvjet|cublas|matmul|_scaled_mm|wgmma"),
    ("normalisation", r"norm|reduce|welford"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|triton_poi|copy_kernel|cat|where|gelu|silu|fill"),
]


def classify(name):
    low = name.lower()
    for label, pattern in CLASSES:
        if re.search(pattern, low):
            return label
    return "other"


def read(path):
    """[(name, total_ms, launches)] of the kernel events of one Chrome trace, by kernel name."""
    with open(path) as f:
        trace = json.load(f)
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    totals = OrderedDict()
    for ev in events:
        if str(ev.get("cat", "")).lower() != "kernel" or "dur" not in ev:
            continue
        ms, n = totals.get(ev["name"], (0.0, 0))
        totals[ev["name"]] = (ms + float(ev["dur"]) / 1e3, n + 1)
    return [(name, ms, n) for name, (ms, n) in totals.items()]


def load(specs):
    """{label: (rows, forwards)} of the LABEL=JSON[:FORWARDS] specs that hold kernels; the others are reported."""
    profiles = OrderedDict()
    for spec in specs:
        label, _, rest = spec.partition("=")
        path, _, forwards = rest.rpartition(":") if re.search(r":\d+$", rest) else (rest, "", "1")
        try:
            rows = read(path)
        except (OSError, ValueError) as e:
            print(f"kernel_profile.py: {label}: cannot read the trace {path}: {e}", file=sys.stderr)
            continue
        if not rows:
            print(f"kernel_profile.py: {label}: {path} has no GPU kernel events (category 'kernel'): a CPU-only run, "
                  "or the profiler did not record CUDA activity; skipped", file=sys.stderr)
            continue
        profiles[label] = (rows, int(forwards))
    return profiles


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=JSON[:FORWARDS]")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()

    profiles = load(args.inputs)
    if not profiles:
        sys.exit("kernel_profile.py: no input holds GPU kernel events; nothing to tabulate")

    labels = list(profiles)
    print("| kernel class | " + " | ".join(f"{l} (ms/forward)" for l in labels) + " |")
    print("|---|" + "---:|" * len(labels))
    per_class = {l: OrderedDict() for l in labels}
    for l, (rows, forwards) in profiles.items():
        for name, ms, _ in rows:
            c = classify(name)
            per_class[l][c] = per_class[l].get(c, 0.0) + ms / forwards
    classes = [c for c, _ in CLASSES] + ["other"]
    for c in classes + ["total"]:
        vals = [sum(per_class[l].values()) if c == "total" else per_class[l].get(c, 0.0) for l in labels]
        print(f"| {c} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")

    for l, (rows, forwards) in profiles.items():
        print(f"\nTop kernels, {l} (ms per forward, launches per forward):\n")
        print("| ms | launches | class | kernel |\n|---:|---:|---|---|")
        for name, ms, n in sorted(rows, key=lambda r: -r[1])[: args.top]:
            # Doxygen reads "(anonymous namespace)::f" in a Markdown table as a link request: drop the noise.
            short = name.removeprefix("void ").replace("(anonymous namespace)::", "")
            short = short if len(short) <= 90 else short[:87] + "..."
            short = short.replace("|", "\\|")
            launches = f"{n / forwards:.1f}".removesuffix(".0")
            print(f"| {ms / forwards:.2f} | {launches} | {classify(name)} | `{short}` |")


if __name__ == "__main__":
    main()
