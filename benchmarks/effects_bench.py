#!/usr/bin/env python3
"""OmnimatteZero's effects pass done the official way, with diffusers: the baseline for effects_bench.cpp.

One LTXVideoTransformer3DModel forward with a pre-hook on every `attn1` that recomputes q = norm_q(to_q(x)),
k = norm_k(to_k(x)), the full softmax(q·kᵀ/√d) [1, heads, N, N] in the model dtype, its mean over heads, and
keeps it on the host (`.cpu()`), as the official `self_attention_map.py` does; then the official per-frame
reduction to one score per token on the host. Default shape: the 13B model (48 layers, 32 heads x 128) at
512x768 with 209 frames: latent 27 x 16 x 24 = N = 10,368 tokens, bf16, random weights.

Prints one JSON line: the plain forward (ms), the forward with the maps (ms), the reduction (ms), the peak GPU
memory of each and the host bytes the maps hold.

    python3 benchmarks/effects_bench.py            # full size, CUDA
    python3 benchmarks/effects_bench.py --smoke    # tiny config on the CPU (a check, not a benchmark)
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from diffusers import LTXVideoTransformer3DModel


def official_maps(model, store):
    handles = []
    modules = [m for name, m in model.named_modules() if name.split(".")[-1] == "attn1"]

    def make(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            q, k = module.norm_q(module.to_q(hidden)), module.norm_k(module.to_k(hidden))
            b, n, _ = q.shape
            d = q.shape[-1] // module.heads
            q = q.view(b, n, module.heads, d).transpose(1, 2)
            k = k.view(b, -1, module.heads, d).transpose(1, 2)
            store[index] = F.softmax(torch.matmul(q, k.transpose(-2, -1)) * d ** -0.5, dim=-1).mean(dim=1).cpu()
        return hook

    for index, module in enumerate(modules):
        handles.append(module.register_forward_pre_hook(make(index), with_kwargs=True))
    return handles


def official_reduction(maps, tokens, nf, s, dtype):
    frames = []
    for frame_t in range(nf):
        acc = torch.zeros(1, s, dtype=dtype)
        for attn in maps.values():
            attn_t = attn.view(1, nf, s, nf, s)[:, frame_t]
            to_object = torch.zeros(1, s, dtype=dtype)
            for src in range(nf):
                to_object += (attn_t[:, :, src, :] * tokens[src].reshape(1, -1).unsqueeze(1)).sum(dim=-1)
            acc += to_object
        frames.append(acc / (len(maps) + 1e-8))
    return torch.stack(frames, dim=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--latent-frames", type=int, default=27)
    p.add_argument("--latent-height", type=int, default=16)
    p.add_argument("--latent-width", type=int, default=24)
    p.add_argument("--text-len", type=int, default=256)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.layers, args.heads, args.head_dim, args.text_len, args.device = 2, 2, 8, 8, "cpu"
        args.latent_frames, args.latent_height, args.latent_width = 3, 2, 3
    device, dtype = torch.device(args.device), torch.bfloat16
    dim = args.heads * args.head_dim
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with device:
        model = LTXVideoTransformer3DModel(
            in_channels=128, out_channels=128, num_attention_heads=args.heads, attention_head_dim=args.head_dim,
            cross_attention_dim=dim, num_layers=args.layers, caption_channels=4096 if not args.smoke else 16).eval()
    torch.set_default_dtype(torch.float32)
    nf, h, w = args.latent_frames, args.latent_height, args.latent_width
    n, s = nf * h * w, h * w
    caption = model.config.caption_channels
    inputs = dict(hidden_states=torch.randn(1, n, 128, device=device, dtype=dtype),
                  encoder_hidden_states=torch.randn(1, args.text_len, caption, device=device, dtype=dtype),
                  timestep=torch.full((1, 1), 500.0, device=device),
                  encoder_attention_mask=torch.ones(1, args.text_len, device=device, dtype=torch.int64),
                  num_frames=nf, height=h, width=w, return_dict=False)
    tokens = torch.zeros(nf, h, w, dtype=dtype)
    tokens[:, h // 3: h // 3 + max(1, h // 4), w // 3: w // 3 + max(1, w // 4)] = 1

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def peak_reset():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def peak():
        return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0

    out = dict(impl="diffusers-official-maps", device=str(device), layers=args.layers, dim=dim, tokens=n,
               gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None, torch=torch.__version__)
    with torch.inference_mode():
        model(**inputs)  # warm-up
        sync()
        weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        peak_reset()
        t0 = time.perf_counter()
        model(**inputs)
        sync()
        out["forward_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        out["forward_peak_gib"] = round(peak() / 2**30, 3)
        out["weights_gib"] = round(weights / 2**30, 3)
        maps = {}
        handles = official_maps(model, maps)
        peak_reset()
        t0 = time.perf_counter()
        model(**inputs)
        sync()
        out["maps_forward_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        out["maps_peak_gib"] = round(peak() / 2**30, 3)
        for hnd in handles:
            hnd.remove()
        out["maps_host_gib"] = round(sum(m.numel() * m.element_size() for m in maps.values()) / 2**30, 3)
        t0 = time.perf_counter()
        official_reduction(maps, tokens, nf, s, dtype)
        out["reduction_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
    out["total_ms"] = round(out["maps_forward_ms"] + out["reduction_ms"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
