#!/usr/bin/env python3
"""Oracle for tests/pipeline/test_safetensors.cpp, using the Python `safetensors` package.

--out DIR      writes reference files under DIR/safetensors_ref (single files per dtype, a mixed-dtype
               file, a diffusers component folder with a variant, sharded sets with index files, a
               transformers-style model.safetensors and an original-Lightricks-style checkpoint).
--verify FILE  loads FILE (written by the C++ writer) with safetensors.torch.load_file and checks it
               equals the MIXED spec below; exit status 0 when it does.
--expect-reject FILE...  exit status 0 when the Python library rejects every FILE (the corrupt files
               the C++ reader rejects), else names the files it accepted.

Tensor values come from ref() and are rebuilt with the same ATen ops on the C++ side
(reference_values() in test_safetensors.cpp), so both sides compare bit for bit.
"""
import argparse
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}

# (name, dtype, shape, k): the contents of mixed.safetensors and of the file C++ writes for --verify.
MIXED = [(name.lower(), name, [2, 3], k) for k, name in enumerate(DTYPES)] + [
    ("scalar", "F32", [], 11), ("empty", "BF16", [0, 4], 12), ("big", "F16", [3, 4, 5], 13)]


def ref(shape, dtype_name, k):
    dtype = DTYPES[dtype_name]
    n = 1
    for d in shape:
        n *= d
    if dtype.is_floating_point:
        x = torch.arange(n, dtype=torch.float64) * 0.37 - 3.0 + k
    elif dtype == torch.bool:
        x = (torch.arange(n, dtype=torch.int64) + k) % 3 == 0
    elif dtype == torch.uint8:
        x = torch.arange(n, dtype=torch.int64) * 3 + k
    else:
        x = torch.arange(n, dtype=torch.int64) * 3 - 11 + k
    return x.reshape(shape).to(dtype)


def spec_tensors(spec):
    return {name: ref(shape, dt, k) for name, dt, shape, k in spec}


def write_sharded(folder, stem, variant, shards):
    """Writes shards [{name: (dtype, shape, k)}] and the diffusers-style index for them."""
    os.makedirs(folder, exist_ok=True)
    weight_map = {}
    total = len(shards)
    for i, shard in enumerate(shards):
        infix = f".{variant}" if variant else ""
        fname = f"{stem}{infix}-{i + 1:05d}-of-{total:05d}.safetensors"
        save_file({n: ref(s, dt, k) for n, (dt, s, k) in shard.items()}, os.path.join(folder, fname),
                  metadata={"format": "pt"})
        for n in shard:
            weight_map[n] = fname
    index_name = f"{stem}.safetensors.index.{variant}.json" if variant else f"{stem}.safetensors.index.json"
    with open(os.path.join(folder, index_name), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)


def make(out):
    root = os.path.join(out, "safetensors_ref")
    os.makedirs(root, exist_ok=True)
    basic = [("a", [3, 5], 0), ("b.weight", [7], 1), ("c", [], 2), ("empty", [0, 4], 3)]
    for dt in ("F32", "F16", "BF16"):
        save_file({n: ref(s, dt, k) for n, s, k in basic}, os.path.join(root, f"{dt.lower()}.safetensors"),
                  metadata={"format": "pt", "source": "python"})
    save_file(spec_tensors(MIXED), os.path.join(root, "mixed.safetensors"))

    comp = os.path.join(root, "component")
    os.makedirs(comp, exist_ok=True)
    with open(os.path.join(comp, "config.json"), "w") as f:
        json.dump({"_class_name": "TestModel", "hidden_size": 4, "norm": True}, f)
    component = {"proj.weight": ([4, 3], 0), "proj.bias": ([4], 1)}
    save_file({n: ref(s, "F32", k) for n, (s, k) in component.items()},
              os.path.join(comp, "diffusion_pytorch_model.safetensors"))
    save_file({n: ref(s, "BF16", k) for n, (s, k) in component.items()},
              os.path.join(comp, "diffusion_pytorch_model.bf16.safetensors"))

    shards = [{"proj.weight": ("F32", [4, 3], 0)}, {"proj.bias": ("F32", [4], 1), "norm.weight": ("F32", [4], 2)}]
    write_sharded(os.path.join(root, "sharded"), "diffusion_pytorch_model", None, shards)
    shards16 = [{n: ("F16", s, k) for n, (_, s, k) in shard.items()} for shard in shards]
    write_sharded(os.path.join(root, "sharded"), "diffusion_pytorch_model", "fp16", shards16)

    t5 = os.path.join(root, "t5")
    os.makedirs(t5, exist_ok=True)
    save_file({"shared.weight": ref([5, 4], "F32", 0)}, os.path.join(t5, "model.safetensors"))

    lightricks = {
        "model.diffusion_model.patchify_proj.weight": ([4, 3], 0),
        "model.diffusion_model.adaln_single.linear.bias": ([6], 1),
        "model.diffusion_model.transformer_blocks.0.attn1.q_norm.weight": ([4], 2),
        "model.diffusion_model.transformer_blocks.0.attn1.k_norm.weight": ([4], 3),
        "model.diffusion_model.scale_shift_table": ([2, 4], 4),
        "vae.decoder.conv_in.weight": ([2], 5),
    }
    save_file({n: ref(s, "BF16", k) for n, (s, k) in lightricks.items()}, os.path.join(root, "lightricks.safetensors"))


def verify(path):
    got = load_file(path)
    want = spec_tensors(MIXED)
    errors = []
    if sorted(got) != sorted(want):
        errors.append(f"names {sorted(got)} != {sorted(want)}")
    for name, w in want.items():
        g = got.get(name)
        if g is None:
            continue
        if g.dtype != w.dtype or list(g.shape) != list(w.shape) or not torch.equal(g, w):
            errors.append(f"tensor {name}: got {g.dtype} {list(g.shape)} {g.flatten()[:6].tolist()}, "
                          f"want {w.dtype} {list(w.shape)} {w.flatten()[:6].tolist()}")
    with safe_open(path, framework="pt") as f:
        if f.metadata() != {"writer": "ltxmps", "format": "pt"}:
            errors.append(f"metadata {f.metadata()}")
    for e in errors:
        print("verify:", e, file=sys.stderr)
    return 1 if errors else 0


def expect_reject(paths):
    accepted = []
    for path in paths:
        try:
            load_file(path)
            accepted.append(path)
        except Exception:  # noqa: BLE001 - any rejection counts
            pass
    for path in accepted:
        print("expect-reject: the Python library accepts", path, file=sys.stderr)
    return 1 if accepted else 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--verify")
    parser.add_argument("--expect-reject", nargs="+")
    args = parser.parse_args()
    if args.verify:
        return verify(args.verify)
    if args.expect_reject:
        return expect_reject(args.expect_reject)
    make(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
