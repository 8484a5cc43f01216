"""Same-run ratios of the benchmarks' JSON lines: each C++ measurement beside the Python reference of the same case.

Reads the JSON lines that the benchmarks print (`ltxmps_*_bench` and their `*.py` counterparts; other lines are
skipped) from the files given and prints one Markdown table: per case (transformer forward by layer count, pipeline
job, VAE decode mode, T5 encode, a GEMM or attention of ltxmps_library_choices_bench) every variant's time, and the
reference's time over it ("× ref": above 1 is faster than the reference). The reference of a case is diffusers
eager (transformers for T5, what ATen runs for a library's candidates); where a case has none in the input, its
ratio column is empty. Pass only one run's files: ratios across machines mean nothing.

    python3 benchmarks/bench_ratios.py out/speed_bench.jsonl [more.jsonl ...]
"""

import argparse
import json
from collections import OrderedDict

REFERENCES = ("diffusers", "transformers", "ATen")


def read_lines(paths):
    """The JSON objects of the lines of `paths` that hold one; other lines are skipped."""
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def forward_variant(r):
    """The label of one transformer forward line: the implementation and its switches."""
    if r["impl"] != "ltxmps":
        return r["impl"]
    parts = ["ltxmps"]
    if r.get("fused") == 0:
        parts.append("unfused")
    if r.get("weights") not in (None, "dense"):
        parts.append(r["weights"])
    if r.get("fp8_attention"):
        parts.append("fp8 attention")
    if r.get("cuda_graph"):
        parts.append("CUDA graph")
    return " + ".join(parts) if len(parts) > 1 else "ltxmps bf16"


def library_choices(r):
    """The rows of an ltxmps_library_choices_bench line: ATen's time is the reference of the library's candidates."""
    case = f"{r['op']} [{r['shape']}]"
    rows = [(case, "ATen", r["aten_ms"], "")]
    for i, c in enumerate(r["candidates"]):
        if c["ms"] >= 0 and (i == 0 or i == r["fastest"]):
            label = "first offered" if i == 0 else f"fastest offered (#{i})"
            rows.append((case, label, c["ms"], f"{c['name']}, {len(r['candidates'])} offered"))
    return rows


def classify(r):
    """(case, variant, milliseconds, extra text) of a benchmark line, or None for a line of no known kind."""
    impl = r.get("impl")
    if impl is None:
        return None
    if "gflop" in r:
        extra = []
        if r.get("compile_seconds") is not None:
            extra.append(f"compiled in {r['compile_seconds']} s")
        if r.get("fp8_err_max_scaled") is not None:
            extra.append(f"scaled error max {r['fp8_err_max_scaled']:.3f}, mean {r.get('fp8_err_mean_scaled', 0):.4f}")
        return (f"transformer forward, {r['layers']} layers, D {r['dim']}", forward_variant(r), r["median_ms"],
                ", ".join(extra))
    if "job" in r and "total_seconds" in r:
        size = "×".join(str(x) for x in r.get("size", []))
        case = f"pipeline {r['job']}, {r.get('layers')} layers, {size}, {r.get('steps')} steps"
        variant = impl + (" + CUDA graphs" if r.get("cuda_graphs") else "")
        peak = r.get("peak_memory_bytes")
        extra = f"{r['seconds_per_step']} s/step" + (f", peak {peak / 1e9:.2f} GB" if peak and peak > 0 else "")
        return case, variant, r["total_seconds"] * 1e3, extra
    if "framewise" in r and "tiling" in r:
        mode = "framewise tiles" if r["framewise"] else "spatial tiles" if r["tiling"] else "untiled"
        peak = r.get("peak_cuda_mib")
        case = f"VAE {r.get('op', 'decode')} ({r.get('config')}, {r.get('dtype')}), {mode}"
        return case, impl, r["median_ms"], f"peak {peak / 1024:.2f} GiB" if peak else ""
    if "tokens" in r and "batch" in r and ("d_model" in r or impl == "transformers"):
        peak = r.get("peak_cuda_mib")
        case = f"T5 encode, {r['batch']}×{r['tokens']} tokens"
        return case, impl, r["median_ms"], f"peak {peak / 1024:.2f} GiB" if peak else ""
    return None


def table(rows):
    cases = OrderedDict()
    for case, variant, ms, extra in rows:
        cases.setdefault(case, []).append((variant, ms, extra))
    out = ["| case | variant | ms | × ref | |", "|---|---|---:|---:|---|"]
    for case, entries in cases.items():
        refs = [ms for variant, ms, _ in entries if variant in REFERENCES]
        ref = refs[0] if refs else None
        for variant, ms, extra in entries:
            ratio = f"{ref / ms:.2f}" if ref and variant not in REFERENCES else ""
            shown = f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"
            out.append(f"| {case} | {variant} | {shown} | {ratio} | {extra} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="JSON lines files of one run")
    args = p.parse_args()
    rows = []
    for r in read_lines(args.files):
        row = None if "candidates" in r else classify(r)
        if "candidates" in r:
            rows += library_choices(r)
        elif row is not None:
            rows.append(row)
    print(table(rows) if rows else "no benchmark lines found")


if __name__ == "__main__":
    main()
