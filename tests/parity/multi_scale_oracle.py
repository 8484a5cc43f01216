#!/usr/bin/env python3
"""Oracle for the C++ two-pass (multi-scale) flow: diffusers 0.42.1's documented LTX-Video 0.9.7/0.9.8 example on
small random components, CPU float32.

Writes under OUT/multi_scale/:
  cond/                          LTXConditionPipeline.save_pretrained (timestep-conditioned "091" VAE, noise zeroed)
  upsampler/                     LTXLatentUpsamplerModel.save_pretrained (8 channels, mid 32, 1 block per stage)
  cases/<case>/reference.safetensors
      first     normalized first-pass latents (LTXConditionPipeline output_type="latent")
      upsampled normalized upsampled latents (LTXLatentUpsamplePipeline output_type="latent")
      latents   final latents of the second pass, denormalized (as GenerateResult documents them)
      frames    the second pass decoded (output_type="pt", [B, F, 3, H, W])
  cases.json                     per case: sizes, call arguments, seed, bounds

The flow is the documented one: first pass at round_to_nearest_resolution_acceptable_by_vae(int(size * 2/3)),
upsample, second pass at twice that with `latents=` and `denoise_strength`, every call with
generator=torch.Generator().manual_seed(seed). The "dev" case keeps the 0.9.7-dev example's settings (guidance 5,
rescale 0.7, decode timestep 0.05 / noise 0.025, image_cond_noise_scale 0) with fewer steps and a size that is
rounded; "distilled" the distilled example's (guidance 1, both timestep lists, strength 0.999, AdaIN 1, and 0.9.8's
tone mapping 0.6).
"""

import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline_oracle  # noqa: E402  (build_transformer, save_pipeline)
import t5_oracle  # noqa: E402
import upsampler_oracle  # noqa: E402  (build_upsampler)
import vae_oracle  # noqa: E402

from diffusers import FlowMatchEulerDiscreteScheduler, LTXConditionPipeline, LTXLatentUpsamplePipeline  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

diffusers_logging.set_verbosity_error()

LATENT_BOUND = 1e-4   # max|C++ - diffusers| / max(1, max|reference|), fp32
FRAME_LEVELS = 2      # decoded frames: at most 2 of 255 levels apart


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "multi_scale")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)

    tok_dir = os.path.join(root, "tokenizer_src")
    t5_oracle.train_tokenizer(tok_dir, model_max_length=128)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    pipe = LTXConditionPipeline(
        transformer=pipeline_oracle.build_transformer(seed=31),
        vae=vae_oracle.build(vae_oracle.CONFIG_091, seed=32, noise_scale=0.0),
        text_encoder=t5_oracle.build(t5_oracle.RELU, len(tokenizer), seed=33), tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipeline_oracle.save_pipeline(pipe, os.path.join(root, "cond"), tok_dir)
    upsampler = upsampler_oracle.build_upsampler(
        dict(in_channels=8, mid_channels=32, num_blocks_per_stage=1, dims=3, spatial_upsample=True,
             temporal_upsample=False), seed=34)
    upsampler.save_pretrained(os.path.join(root, "upsampler"))
    pipe_upsample = LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
    pipe_upsample.set_progress_bar_config(disable=True)

    def round_to_nearest_resolution_acceptable_by_vae(height, width):
        height = height - (height % pipe.vae_spatial_compression_ratio)
        width = width - (width % pipe.vae_spatial_compression_ratio)
        return height, width

    cases = []

    def run(name, seed, height, width, first, upsample, second, shared):
        dh, dw = round_to_nearest_resolution_acceptable_by_vae(int(height * (2 / 3)), int(width * (2 / 3)))
        base = dict(prompt="a red cat walks over the ocean", negative_prompt="worst quality", num_frames=9,
                    max_sequence_length=16, **shared)
        first_latents = pipe(**base, width=dw, height=dh, **first, generator=torch.Generator().manual_seed(seed),
                             output_type="latent").frames
        upsampled = pipe_upsample(latents=first_latents, **upsample, output_type="latent").frames
        uh, uw = dh * 2, dw * 2
        outs = {}
        for output_type in ["pt", "latent"]:
            outs[output_type] = pipe(**base, width=uw, height=uh, latents=upsampled, **second,
                                     generator=torch.Generator().manual_seed(seed), output_type=output_type).frames
        final = pipe._denormalize_latents(outs["latent"], pipe.vae.latents_mean, pipe.vae.latents_std,
                                          pipe.vae.config.scaling_factor)
        folder = os.path.join(root, "cases", name)
        os.makedirs(folder)
        save_file({"first": first_latents.float().contiguous(), "upsampled": upsampled.float().contiguous(),
                   "latents": final.float().contiguous(), "frames": outs["pt"].float().contiguous()},
                  os.path.join(folder, "reference.safetensors"))
        cases.append(dict(name=name, seed=seed, height=height, width=width, first_height=dh, first_width=dw,
                          second_height=uh, second_width=uw, prompt=base["prompt"],
                          negative_prompt=base["negative_prompt"], num_frames=9, max_sequence_length=16,
                          shared=shared, first=first, upsample=upsample, second=second,
                          latent_bound=LATENT_BOUND, frame_levels=FRAME_LEVELS))

    dev_shared = dict(guidance_scale=5.0, guidance_rescale=0.7, decode_timestep=0.05, decode_noise_scale=0.025,
                      image_cond_noise_scale=0.0)
    run("dev", 40, 98, 145, dict(num_inference_steps=3), dict(),
        dict(num_inference_steps=4, denoise_strength=0.5), dev_shared)
    distilled_shared = dict(dev_shared, guidance_scale=1.0)
    run("distilled", 41, 48, 96, dict(timesteps=[1000, 993, 987, 981, 975, 909, 725, 0.03]),
        dict(adain_factor=1.0, tone_map_compression_ratio=0.6),
        dict(timesteps=[1000, 909, 725, 421, 0], denoise_strength=0.999), distilled_shared)

    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main()
