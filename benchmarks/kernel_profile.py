"""Summarise `nsys stats --report cuda_gpu_kern_sum --format csv` outputs of transformer forwards.

Each input is LABEL=CSV[:FORWARDS] (FORWARDS: how many forwards the profiled process ran, so that the table is
in milliseconds per forward). Prints, as Markdown, the time per forward by kernel class (GEMM, attention,
ltxmps fused kernels, elementwise, normalisation, copies/other) for every input side by side, then each input's
top kernels. scripts/gpu_run.sh runs it on the profiles of the 2B forward before (ATen references) and after (fused
kernels), and of diffusers eager; docs/benchmarks.md keeps the result.

    python3 benchmarks/kernel_profile.py "ltxmps fused=f1.csv:8" "ltxmps unfused=f0.csv:8" [--top 12]
"""

import argparse
import csv
import re
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
    """[(name, total_ns, instances)] from one cuda_gpu_kern_sum CSV (header row found by its 'Name' column)."""
    rows = []
    with open(path, newline="") as f:
        lines = [line for line in f if line.strip()]
    start = next(i for i, line in enumerate(lines) if "Total Time" in line and "Name" in line)
    for rec in csv.DictReader(lines[start:]):
        total = next(v for k, v in rec.items() if k and k.startswith("Total Time"))
        rows.append((rec["Name"], float(total), int(float(rec.get("Instances", rec.get("Count", "0")) or 0))))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=CSV[:FORWARDS]")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()

    profiles = OrderedDict()
    for spec in args.inputs:
        label, _, rest = spec.partition("=")
        path, _, forwards = rest.rpartition(":") if re.search(r":\d+$", rest) else (rest, "", "1")
        profiles[label] = (read(path), int(forwards))

    labels = list(profiles)
    print("| kernel class | " + " | ".join(f"{l} (ms/forward)" for l in labels) + " |")
    print("|---|" + "---:|" * len(labels))
    per_class = {l: OrderedDict() for l in labels}
    for l, (rows, forwards) in profiles.items():
        for name, ns, _ in rows:
            c = classify(name)
            per_class[l][c] = per_class[l].get(c, 0.0) + ns / 1e6 / forwards
    classes = [c for c, _ in CLASSES] + ["other"]
    for c in classes + ["total"]:
        vals = [sum(per_class[l].values()) if c == "total" else per_class[l].get(c, 0.0) for l in labels]
        print(f"| {c} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")

    for l, (rows, forwards) in profiles.items():
        print(f"\nTop kernels, {l} (ms per forward, launches per forward):\n")
        print("| ms | launches | class | kernel |\n|---:|---:|---|---|")
        for name, ns, n in sorted(rows, key=lambda r: -r[1])[: args.top]:
            short = name if len(name) <= 90 else name[:87] + "..."
            short = short.replace("|", "\\|")
            print(f"| {ns / 1e6 / forwards:.2f} | {n / forwards:.0f} | {classify(name)} | `{short}` |")


if __name__ == "__main__":
    main()
