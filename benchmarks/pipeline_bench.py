#!/usr/bin/env python3
"""One LTX-Video text-to-video generation with diffusers' LTXPipeline (--job t2v), or the per-step cost of object
removal (--job remove: LTXConditionPipeline with the video as a condition at frame 0, strength 1, VAE tiling on, 256
text tokens: the same per-token conditioning loop as the official removal): the counterpart of pipeline_bench.cpp.

Same defaults: the 2B transformer (28 layers, 32 heads x 64, caption 4096) and AutoencoderKLLTXVideo() (0.9.0
config) with random weights, random prompt embeddings [1, 128, 4096] (no T5-XXL), 768x512x121, 30 steps,
guidance 3, generator torch.Generator().manual_seed(0). Prints one JSON line: seconds per denoising step (mean
over the steps after the first), total seconds of the call (loop + decode) and the peak CUDA memory. --repeat N
calls the pipeline N times in the process and reports the fastest call.

  pipeline_bench.py [--device cuda] [--precision bf16|fp16|fp32] [--height N] [--width N] [--frames N]
                    [--steps N] [--guidance X] [--layers N] [--smoke] [--repeat N]
"""

import argparse
import json
import time

import torch
from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXConditionPipeline, LTXPipeline,
                       LTXVideoTransformer3DModel)
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--job", choices=["t2v", "remove"], default="t2v")
    p.add_argument("--repeat", type=int, default=1, help="calls of the pipeline; the fastest is reported")
    p.add_argument("--smoke", action="store_true", help="2 layers, 4 heads, 64x64x9, 2 steps (any device)")
    a = p.parse_args()
    if a.smoke:
        a.layers, a.height, a.width, a.frames, a.steps = 2, 64, 64, 9, 2
    dtype, device = DTYPES[a.precision], torch.device(a.device)
    torch.manual_seed(0)
    heads = 4 if a.smoke else a.heads
    torch.set_default_dtype(dtype)
    with device:
        transformer = LTXVideoTransformer3DModel(num_layers=a.layers, num_attention_heads=heads,
                                                 attention_head_dim=a.head_dim, cross_attention_dim=heads * a.head_dim,
                                                 caption_channels=4096)
    torch.set_default_dtype(torch.float32)
    removal = a.job == "remove"
    # float32 VAE as ltxmps' default plan; the removal job runs it in the model dtype, as the official script
    # (LTXConditionPipeline casts the condition video to the prompt embeddings' dtype before the VAE).
    vae = AutoencoderKLLTXVideo().to(dtype if removal else torch.float32)
    cls = LTXConditionPipeline if removal else LTXPipeline
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.to(device),  # float32 (ltxmps' plan)
               text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    text_len = 256 if removal else 128
    embeds = torch.randn(1, text_len, 4096, dtype=dtype).to(device)
    mask = torch.ones(1, text_len, dtype=torch.bool, device=device)
    extra = {}
    if removal:
        vae.enable_tiling()
        video = torch.rand(a.frames, 3, a.height, a.width, generator=torch.Generator().manual_seed(0))
        extra = dict(conditions=[LTXVideoCondition(video=video, frame_index=0, strength=1.0)])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step_end = []
    start = time.perf_counter()

    def on_step(pipeline, i, t, kwargs):
        sync()
        step_end.append(time.perf_counter() - start)
        return kwargs

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    total, per_step = None, 0.0
    for _ in range(max(1, a.repeat)):
        step_end.clear()
        start = time.perf_counter()
        with torch.no_grad():
            frames = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=embeds.clone(),
                          negative_prompt_attention_mask=mask.clone(), height=a.height, width=a.width,
                          num_frames=a.frames, num_inference_steps=a.steps, guidance_scale=a.guidance,
                          generator=torch.Generator().manual_seed(0), output_type="pt",
                          callback_on_step_end=on_step, **extra).frames
        sync()
        run_total = time.perf_counter() - start
        run_step = step_end[0] if len(step_end) == 1 else (step_end[-1] - step_end[0]) / (len(step_end) - 1)
        if total is None or run_total < total:
            total, per_step = run_total, run_step
    print(json.dumps(dict(impl="diffusers", job=a.job, device=str(device), precision=a.precision,
                          size=[a.frames, a.height, a.width], steps=a.steps, guidance=a.guidance, layers=a.layers,
                          seconds_per_step=round(per_step, 4), total_seconds=round(total, 3),
                          peak_memory_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else -1,
                          frames_shape=list(frames.shape))))


if __name__ == "__main__":
    main()
