#!/usr/bin/env python3
"""One LTX-Video text-to-video generation with diffusers' LTXPipeline (--job t2v), one image-to-video generation
with LTXImageToVideoPipeline (--job i2v: a random image as the first frame), the per-step cost of object
removal (--job remove: LTXConditionPipeline with the video as a condition at frame 0, strength 1, VAE tiling on, 256
text tokens: the same per-token conditioning loop as the official removal), or the documented 0.9.7 two-pass flow
(--job two-pass): the counterpart of pipeline_bench.cpp.

Same defaults: the 2B transformer (28 layers, 32 heads x 64, caption 4096) and AutoencoderKLLTXVideo() (0.9.0
config) with random weights, random prompt embeddings [1, 128, 4096] (no T5-XXL), 768x512x121, 30 steps,
guidance 3, generator torch.Generator().manual_seed(0). Prints one JSON line: seconds per denoising step (mean
over the steps after the first), total seconds of the call (loop + decode), the split of that total at the last
step's end (t2v, i2v, remove: "loop_seconds", "decode_seconds") and the peak CUDA memory, also per phase (as
pipeline_bench.cpp's PhasePeaks). --repeat N calls the pipeline N times in the process and reports the fastest
call.

--job two-pass: diffusers' documented 0.9.7-dev example (LTXConditionPipeline at
round_to_nearest_resolution_acceptable_by_vae(int(size * scale)) with output_type="latent",
LTXLatentUpsamplePipeline, LTXConditionPipeline at twice that size with latents= and denoise_strength, then the
frames resized to the requested size) with the 0.9.7 VAE config (vae_bench.py's CONFIG_097) and
LTXLatentUpsamplerModel() (mid 512, 4 blocks per stage, spatial), random weights, every component in the model
dtype and vae.enable_tiling() as the example; 256-token prompt embeddings. First pass --steps (default 8), second
pass --second-pass-steps (default 10) from --second-pass-strength (default 0.4), i.e. int(10 * 0.4) = 4 steps,
guidance_rescale 0.7, decode timestep 0.05 / noise 0.025, image_cond_noise_scale 0. The JSON line adds per-pass
sizes, executed steps and seconds; its "seconds_per_step" is the second pass's.

  pipeline_bench.py [--device cuda] [--precision bf16|fp16|fp32] [--height N] [--width N] [--frames N]
                    [--steps N] [--guidance X] [--layers N] [--heads N] [--head-dim N]
                    [--job t2v|i2v|remove|two-pass]
                    [--first-pass-scale X|A/B] [--second-pass-steps N] [--second-pass-strength X] [--smoke]
                    [--repeat N] [--prompt-tokens N]
--prompt-tokens N: the prompt embeddings' first N tokens are the prompt (mask 1), the rest padding (mask 0), as T5
pads a short prompt (default: every token is the prompt); the official removal's two prompts take 16 of 256.
--smoke: 2 layers, 4 heads, 64x64x9, 2 steps (any device); two-pass: 96x96x9 (passes 64x64 and 128x128),
2 + int(5 * 0.4) = 2 steps, the 0.9.7 VAE with narrow blocks and an upsampler of width 32 with one block per stage.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXConditionPipeline,
                       LTXImageToVideoPipeline, LTXLatentUpsamplePipeline, LTXPipeline, LTXVideoTransformer3DModel)
from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
from diffusers.utils import logging as diffusers_logging

from vae_bench import CONFIG_097, CONFIG_SMOKE

diffusers_logging.set_verbosity_error()  # the condition pipeline warns about its own timesteps on every call

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fraction(text):
    """A number or a fraction such as 2/3."""
    num, _, den = text.partition("/")
    return float(num) / float(den) if den else float(num)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--steps", type=int, default=None, help="30; two-pass: the first pass's, 8")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--job", choices=["t2v", "i2v", "remove", "two-pass"], default="t2v")
    p.add_argument("--first-pass-scale", type=fraction, default=fraction("2/3"))
    p.add_argument("--second-pass-steps", type=int, default=10)
    p.add_argument("--second-pass-strength", type=float, default=0.4)
    p.add_argument("--repeat", type=int, default=1, help="calls of the pipeline; the fastest is reported")
    p.add_argument("--prompt-tokens", type=int, default=None, help="tokens of the prompt; the rest is padding")
    p.add_argument("--smoke", action="store_true", help="2 layers, 4 heads, 64x64x9 (two-pass: 96x96x9), 2 steps")
    a = p.parse_args()
    if a.steps is None:
        a.steps = 8 if a.job == "two-pass" else 30
    if a.smoke:
        side = 96 if a.job == "two-pass" else 64
        a.layers, a.heads, a.height, a.width, a.frames, a.steps, a.second_pass_steps = 2, 4, side, side, 9, 2, 5
    return a


def build_components(a, dtype, device):
    """The transformer (made on the device in `dtype`), the VAE and, for two-pass, the latent upsampler."""
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with device:
        transformer = LTXVideoTransformer3DModel(num_layers=a.layers, num_attention_heads=a.heads,
                                                 attention_head_dim=a.head_dim,
                                                 cross_attention_dim=a.heads * a.head_dim, caption_channels=4096)
    torch.set_default_dtype(torch.float32)
    upsampler = None
    with device:  # the 0.9.7 VAE has 1.2 B parameters: made in place rather than on the host
        if a.job == "two-pass":
            vae = AutoencoderKLLTXVideo(**(dict(CONFIG_SMOKE, latent_channels=128) if a.smoke else CONFIG_097))
            upsampler = (LTXLatentUpsamplerModel(mid_channels=32, num_blocks_per_stage=1) if a.smoke
                         else LTXLatentUpsamplerModel()).to(dtype=dtype).eval()
        else:
            vae = AutoencoderKLLTXVideo()
    # float32 VAE for t2v as ltxmps' default plan; the other jobs run it in the model dtype: LTXImageToVideoPipeline
    # and the condition pipeline cast the image / condition video to the prompt embeddings' dtype before the VAE (a
    # float32 VAE fails on a bfloat16 image), the official removal script and the documented two-pass example give
    # every component torch_dtype; removal and two-pass with tiling, as those two.
    vae = vae.to(device=device, dtype=torch.float32 if a.job == "t2v" else dtype).eval()
    if a.job not in ("t2v", "i2v"):
        vae.enable_tiling()
    return transformer, vae, upsampler


class Timer:
    """Seconds since start() at each denoising step's end, the device synchronized first."""

    def __init__(self, device):
        self.device, self.start_time, self.steps = device, 0.0, []
        self.phase, self.peaks = "loop", {}

    def mark(self, phase=None):
        """The peak CUDA memory since the last mark becomes (the highest of) `phase`'s (default: the running one):
        the same phases as pipeline_bench.cpp's PhasePeaks."""
        if self.device.type != "cuda":
            return
        name = phase or self.phase
        self.peaks[name] = max(self.peaks.get(name, -1), torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def start(self):
        self.sync()
        self.start_time, self.steps = time.perf_counter(), []

    def now(self):
        self.sync()
        return time.perf_counter() - self.start_time

    def on_step(self, pipeline, i, t, kwargs):
        self.steps.append(self.now())
        self.mark()
        return kwargs


def per_step(step_end):
    """Mean seconds per step over the steps after the first (the first alone when there is one)."""
    if not step_end:
        return 0.0
    return step_end[0] if len(step_end) == 1 else (step_end[-1] - step_end[0]) / (len(step_end) - 1)


def run_single(a, transformer, vae, prompts, timer):
    """One t2v call (LTXPipeline), i2v call (LTXImageToVideoPipeline) or removal-style call (LTXConditionPipeline):
    total, s/step, frames."""
    removal = a.job == "remove"
    cls = {"t2v": LTXPipeline, "i2v": LTXImageToVideoPipeline, "remove": LTXConditionPipeline}[a.job]
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
               transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    extra = {}
    if removal:
        video = torch.rand(a.frames, 3, a.height, a.width, generator=torch.Generator().manual_seed(0))
        extra = dict(conditions=[LTXVideoCondition(video=video, frame_index=0, strength=1.0)])
    if a.job == "i2v":
        extra = dict(image=torch.rand(1, 3, a.height, a.width, generator=torch.Generator().manual_seed(0)))
    timer.start()
    timer.phase = "loop"
    frames = pipe(**prompts, height=a.height, width=a.width, num_frames=a.frames, num_inference_steps=a.steps,
                  guidance_scale=a.guidance, generator=torch.Generator().manual_seed(0), output_type="pt",
                  callback_on_step_end=timer.on_step, **extra).frames
    total = timer.now()
    timer.mark("decode")
    loop_end = timer.steps[-1] if timer.steps else 0.0
    return total, per_step(timer.steps), frames, dict(loop_seconds=round(loop_end, 3),
                                                      decode_seconds=round(total - loop_end, 3))


def pass_fields(frames, height, width, step_end, seconds):
    return dict(size=[frames, height, width], steps=len(step_end), seconds=round(seconds, 3),
                seconds_per_step=round(per_step(step_end), 4))


def run_two_pass(a, transformer, vae, upsampler, prompts, timer):
    """The documented two-pass example: the three calls, then the resize to the requested size."""
    pipe = LTXConditionPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                tokenizer=None, transformer=transformer)
    pipe_upsample = LTXLatentUpsamplePipeline(vae=vae, latent_upsampler=upsampler)
    for p in (pipe, pipe_upsample):
        p.set_progress_bar_config(disable=True)
    unit = pipe.vae_spatial_compression_ratio  # round_to_nearest_resolution_acceptable_by_vae
    h1, w1 = int(a.height * a.first_pass_scale), int(a.width * a.first_pass_scale)
    h1, w1 = h1 - h1 % unit, w1 - w1 % unit
    shared = dict(**prompts, num_frames=a.frames, guidance_scale=a.guidance, guidance_rescale=0.7,
                  decode_timestep=0.05, decode_noise_scale=0.025, image_cond_noise_scale=0.0,
                  callback_on_step_end=timer.on_step)
    timer.start()
    timer.phase = "first_pass"
    latents = pipe(**shared, height=h1, width=w1, num_inference_steps=a.steps,
                   generator=torch.Generator().manual_seed(0), output_type="latent").frames
    first_end, first_steps = timer.now(), list(timer.steps)
    timer.mark()
    upsampled = pipe_upsample(latents=latents, output_type="latent").frames
    up_end = timer.now()
    timer.mark("upsample")
    timer.steps, timer.phase = [], "second_pass_loop"
    frames = pipe(**shared, height=2 * h1, width=2 * w1, num_inference_steps=a.second_pass_steps,
                  denoise_strength=a.second_pass_strength, latents=upsampled,
                  generator=torch.Generator().manual_seed(0), output_type="pt").frames
    b, f = frames.shape[:2]
    frames = F.interpolate(frames.float().cpu().flatten(0, 1), size=(a.height, a.width), mode="bicubic",
                           align_corners=False, antialias=True).clamp(0, 1).unflatten(0, (b, f))
    total = timer.now()
    timer.mark("decode")
    passes = dict(first_pass=pass_fields(a.frames, h1, w1, first_steps, first_end),
                  upsample_seconds=round(up_end - first_end, 3),
                  second_pass=pass_fields(a.frames, 2 * h1, 2 * w1, timer.steps, total - up_end),
                  decode_seconds=round(total - (timer.steps[-1] if timer.steps else up_end), 3),
                  first_pass_scale=a.first_pass_scale, second_pass_strength=a.second_pass_strength,
                  vae_tiling=True)
    return total, per_step(timer.steps), frames, passes


def main():
    a = parse_args()
    dtype, device = DTYPES[a.precision], torch.device(a.device)
    transformer, vae, upsampler = build_components(a, dtype, device)
    # LTXPipeline's and LTXImageToVideoPipeline's / LTXConditionPipeline's max_sequence_length
    text_len = 128 if a.job in ("t2v", "i2v") else 256
    embeds = torch.randn(1, text_len, 4096, dtype=dtype).to(device)
    mask = torch.ones(1, text_len, dtype=torch.bool, device=device)
    if a.prompt_tokens is not None:
        mask[:, a.prompt_tokens:] = False
    prompts = dict(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=embeds.clone(),
                   negative_prompt_attention_mask=mask.clone())
    timer = Timer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = None
    for _ in range(max(1, a.repeat)):
        with torch.no_grad():
            if a.job == "two-pass":
                result = run_two_pass(a, transformer, vae, upsampler, prompts, timer)
            else:
                result = run_single(a, transformer, vae, prompts, timer)
        if best is None or result[0] < best[0]:
            best = result
    total, step, frames, passes = best
    print(json.dumps(dict(impl="diffusers", job=a.job, device=str(device), precision=a.precision,
                          size=[a.frames, a.height, a.width], steps=a.steps, guidance=a.guidance, layers=a.layers,
                          seconds_per_step=round(step, 4), total_seconds=round(total, 3),
                          peak_memory_bytes=max(timer.peaks.values(), default=-1),
                          peak_memory_bytes_by_phase=timer.peaks,
                          frames_shape=list(frames.shape), **passes)))


if __name__ == "__main__":
    main()
