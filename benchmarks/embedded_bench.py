"""The embedded default's jobs in Python: the counterpart of `ltxmps_pipeline_bench --model embedded`.

The CLI's embedded default model (reference_pipeline/src/embedded_default.cpp) rebuilt with diffusers and
transformers components of the same configs and random weights: the tiny LTXVideoTransformer3DModel (in/out 8,
4 heads x 8, cross-attention 32, 2 layers, caption 32, patch 1), the tiny "090"-style AutoencoderKLLTXVideo (8
latent channels, blocks of 16, patch 4, 32x / 8x compression), a T5EncoderModel (d_model 32, 4 heads x 8, d_ff 64,
2 layers, relu) over the same byte tokens (byte b is id b + 3, then </s>, padded with 0), and
FlowMatchEulerDiscreteScheduler() (FlowMatchSchedulerConfig's defaults).

  --job t2v     LTXPipeline at 64x64x9, 4 steps, guidance 3, the CLI's default prompt (32 tokens), output_type "pt"
  --job remove  object removal as the official OmnimatteZero code runs it (my_prepare_latents + my_call, in
                tests/parity/removal_oracle.py, the oracle of the C++ removal's parity suite): a random 192x128
                clip of 17 frames with a mask over its middle third, 30 steps, guidance 3, the official prompts
                (256 tokens), VAE tiling on as the official script

Each run encodes its prompts with the T5, as the C++ side does. Prints one JSON line with pipeline_bench's fields:
the fastest of --repeat runs (after one warm-up run that is not counted), its seconds per step (mean over the steps
after the first) and total seconds. CPU, float32.

    python3 benchmarks/embedded_bench.py --job remove [--repeat 3]
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "parity"))
import removal_oracle as oracle  # noqa: E402  (the official removal's steps)

from diffusers import (  # noqa: E402
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXConditionPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel  # noqa: E402

TRANSFORMER = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                   attention_head_dim=8, cross_attention_dim=32, num_layers=2, caption_channels=32)
VAE = dict(latent_channels=8, block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
           layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
           spatio_temporal_scaling=(True, True, True, False), decoder_spatio_temporal_scaling=(True, True, True, False),
           decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
           timestep_conditioning=False, patch_size=4, patch_size_t=1)
T5 = dict(vocab_size=256 + 3, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, relative_attention_num_buckets=8,
          relative_attention_max_distance=16, feed_forward_proj="relu", is_encoder_decoder=False)
T2V_PROMPT = "a red fox running through snow"  # EmbeddedDefault::prompt


def byte_tokens(prompts, max_length):
    """embedded_default_tokenize: UTF-8 bytes + 3, then </s> (1), padded with <pad> (0); ids and mask [B, L]."""
    ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
    for i, p in enumerate(prompts):
        row = [b + 3 for b in p.encode("utf-8")][: max_length - 1] + [1]
        ids[i, : len(row)] = torch.tensor(row)
    return ids, (ids != 0).long()


def encode(text_encoder, prompts, max_length, mask_to_t5):
    """T5 embeddings [B, L, 32] and the mask, as the pipelines' _get_t5_prompt_embeds (the condition pipeline passes
    the mask to T5, LTXPipeline does not)."""
    ids, mask = byte_tokens(prompts, max_length)
    return text_encoder(ids, attention_mask=mask if mask_to_t5 else None)[0], mask


def build(job):
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(**TRANSFORMER).eval()
    vae = AutoencoderKLLTXVideo(**VAE).eval()
    text_encoder = T5EncoderModel(T5Config(**T5)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler()
    cls = LTXConditionPipeline if job == "remove" else LTXPipeline
    pipe = cls(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    if job == "remove":
        pipe.vae.enable_tiling()
    return pipe


class StepTimer:
    def __init__(self):
        self.steps = []

    def __call__(self, pipeline, i, t, kwargs):
        self.steps.append(time.perf_counter())
        return {}


def run_t2v(pipe, steps, timer):
    e, m = encode(pipe.text_encoder, [T2V_PROMPT], 32, mask_to_t5=False)
    ne, nm = encode(pipe.text_encoder, [""], 32, mask_to_t5=False)
    return pipe(prompt_embeds=e, prompt_attention_mask=m, negative_prompt_embeds=ne,
                negative_prompt_attention_mask=nm, height=64, width=64, num_frames=9, num_inference_steps=steps,
                guidance_scale=3.0, output_type="pt", generator=torch.Generator().manual_seed(0),
                callback_on_step_end=timer).frames


def run_remove(pipe, frames, mask_frames, steps, timer):
    """The official removal (oracle.run_removal without its checks), one step time per transformer call."""
    args = dict(guidance_scale=3.0, image_cond_noise_scale=0.15)
    generator = torch.Generator().manual_seed(1)
    f, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
    e, m = encode(pipe.text_encoder, ["Empty"], 256, mask_to_t5=True)
    ne, nm = encode(pipe.text_encoder, [oracle.NEGATIVE_PROMPT], 256, mask_to_t5=True)
    embeds = (torch.cat([ne, e]), torch.cat([nm, m]))
    video = oracle.conditioning_tensor(pipe, frames, h, w, f)
    mask = oracle.conditioning_tensor(pipe, mask_frames, h, w, f)
    sigmas = oracle.linear_quadratic_schedule(steps)
    timesteps, _ = oracle.retrieve_timesteps(pipe.scheduler, steps, torch.device("cpu"), sigmas * 1000)
    latents, cond_mask, video_ids, _, _, shape = oracle.prepare_removal_latents(pipe, video, mask, f, h, w, 1.0,
                                                                                 generator)
    coords = video_ids.float()
    coords[:, 0] = coords[:, 0] * (1.0 / 25.0)
    coords = torch.cat([coords, coords], dim=0)
    hook = pipe.transformer.register_forward_hook(lambda *_: timer.steps.append(time.perf_counter()))
    try:
        latents, _, _ = oracle.denoise(pipe, latents, cond_mask, coords, timesteps, embeds, args, generator)
    finally:
        hook.remove()
    latents = pipe._unpack_latents(latents, shape[2], shape[3], shape[4], 1, 1)
    latents = pipe._denormalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std,
                                        pipe.vae.config.scaling_factor)
    return oracle.decode_latents(pipe, latents, embeds[0].dtype, 0.0, None, generator)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", choices=["t2v", "remove"], default="remove")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    pipe = build(a.job)
    steps = 30 if a.job == "remove" else 4
    size = [17, 128, 192] if a.job == "remove" else [9, 64, 64]
    frames = torch.randint(0, 256, (size[0], size[1], size[2], 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(frames)
    mask[:, size[1] // 3: 2 * size[1] // 3, size[2] // 3: 2 * size[2] // 3] = 255
    best = None
    for run in range(a.repeat + 1):  # run 0 warms up
        timer = StepTimer()
        t0 = time.perf_counter()
        out = run_remove(pipe, frames, mask, steps, timer) if a.job == "remove" else run_t2v(pipe, steps, timer)
        total = time.perf_counter() - t0
        step = (timer.steps[-1] - timer.steps[0]) / (len(timer.steps) - 1) if len(timer.steps) > 1 else 0.0
        if run > 0 and (best is None or total < best[0]):
            best = (total, step, list(out.shape))
    total, step, shape = best
    print(json.dumps(dict(impl="diffusers", job=a.job, device="cpu", precision="fp32", size=size, steps=steps,
                          guidance=3.0, model="embedded", layers=TRANSFORMER["num_layers"],
                          seconds_per_step=round(step, 4), total_seconds=round(total, 3), frames_shape=shape,
                          torch=torch.__version__)))


if __name__ == "__main__":
    main()
