"""Oracle for ltxmps::randn: torch.randn values from seeded CPU generators, as exact hex floats.

Writes <out>/randn_reference.txt with one case per line:
    <seed> <shape, comma-separated> <per-sample seeds or '-'> <values as float.hex(), space-separated>
"""
import argparse
import os

import torch

CASES = [
    (0, (5,), None),
    (42, (2, 3, 4), None),
    (123456789, (1, 8, 3, 4, 4), None),
    (2**63 + 11, (7,), None),  # seeds above 2**63 as torch accepts them (uint64)
    (0, (3, 2, 5), [5, 6, 7]),  # diffusers randn_tensor with a list of generators
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines = []
    for seed, shape, per_sample in CASES:
        if per_sample is None:
            values = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        else:
            item = (1,) + shape[1:]
            values = torch.cat([torch.randn(item, generator=torch.Generator().manual_seed(s)) for s in per_sample])
        flat = " ".join(float(v).hex() for v in values.flatten().tolist())
        seeds = ",".join(str(s) for s in per_sample) if per_sample else "-"
        lines.append(f"{seed} {','.join(map(str, shape))} {seeds} {flat}")
    with open(os.path.join(args.out, "randn_reference.txt"), "w") as f:
        f.write(f"# torch {torch.__version__}\n")
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
