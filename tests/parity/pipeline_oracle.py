#!/usr/bin/env python3
"""Oracle for the C++ LTX-Video pipelines and scheduler: diffusers 0.42.1 pipelines on small random components.

Writes under OUT/pipeline/:
  <model>/                       pipe.save_pretrained(...): model_index.json, transformer/, vae/, text_encoder/,
                                 tokenizer/, scheduler/ (checked to be there)
  cases/<case>/inputs.safetensors     image / condition frames / latents given to the pipeline (if any)
  cases/<case>/reference.safetensors  `frames` (output_type="pt", [B, F, 3, H, W]) and `latents` (output_type=
                                      "latent", unpacked and denormalized as GenerateResult documents them)
  cases.json                     per case: model folder, pipeline kind, call arguments, seed, bound
  scheduler.safetensors + scheduler_cases.json   FlowMatchEulerDiscreteScheduler.set_timesteps and
                                 linear_quadratic_schedule results (float32) with their arguments

Components (the tiny configs of diffusers' tests/pipelines/ltx/test_ltx*.py): transformer in/out 8, 4 heads x 8,
cross 32, 1 layer, caption 32; the tiny "090" VAE (latent_channels 8, compression 4/4) or, for decode_timestep / decode_noise_scale, the tiny timestep-conditioned
"091" VAE with per_channel_scale zeroed (its noise injection draws from the global RNG); FlowMatchEulerDiscrete-
Scheduler() defaults; a small random T5 (d_model 32) with a SentencePiece tokenizer trained as t5_oracle.py does.
Every pipeline runs on the CPU with generator=torch.Generator().manual_seed(seed), 32x32, 2 steps,
max_sequence_length 16.

Only the test oracle uses Python; the C++ side never does.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import t5_oracle  # noqa: E402  (train_tokenizer, build, RELU)
import vae_oracle  # noqa: E402  (build, CONFIG_090, CONFIG_091)

from diffusers import (  # noqa: E402
    FlowMatchEulerDiscreteScheduler,
    LTXConditionPipeline,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift  # noqa: E402
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition, linear_quadratic_schedule  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

diffusers_logging.set_verbosity_error()  # set_timesteps warns about custom timesteps on every condition run

# fp32: max|C++ - diffusers| <= 1e-4 * max(1, max|reference|) (never loosened).
FP32_BOUND = 1e-4

TRANSFORMER = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                   attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32)
COMPONENT_DIRS = ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"]


def build_transformer(seed):
    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(**TRANSFORMER).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # RMSNorm weights start at ones: perturb them
                p.add_(0.2 * torch.randn_like(p))
            elif "scale_shift_table" in name or "proj_out" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_pipeline(pipe, folder, tok_dir):
    pipe.save_pretrained(folder)
    for sub in COMPONENT_DIRS:
        assert os.path.isdir(os.path.join(folder, sub)), f"save_pretrained wrote no {sub}/"
    assert os.path.isfile(os.path.join(folder, "model_index.json"))
    assert os.path.isfile(os.path.join(folder, "scheduler", "scheduler_config.json"))
    # transformers 5 saves the tokenizers-backed tokenizer (tokenizer.json); the C++ tokenizer reads the
    # SentencePiece model it was built from, as the published LTX folders ship it.
    if not os.path.isfile(os.path.join(folder, "tokenizer", "spiece.model")):
        shutil.copy(os.path.join(tok_dir, "spiece.model"), os.path.join(folder, "tokenizer", "spiece.model"))


def scheduler_cases(root):
    cases, tensors = [], {}

    def add(name, config, steps=None, sigmas=None, mu=None, timesteps=None, ltx_sigmas=None):
        sched = FlowMatchEulerDiscreteScheduler(**config)
        if ltx_sigmas is not None:  # LTXPipeline: np.linspace(1.0, 1 / N, N) as custom sigmas
            sigmas = np.linspace(1.0, 1 / ltx_sigmas, ltx_sigmas)
        kwargs = dict(sigmas=None if sigmas is None else list(sigmas), mu=mu,
                      timesteps=None if timesteps is None else list(timesteps))
        sched.set_timesteps(steps, **kwargs)
        tensors[name + ".timesteps"] = sched.timesteps.float().contiguous()
        tensors[name + ".sigmas"] = sched.sigmas.float().contiguous()
        cases.append(dict(name=name, config=config, num_inference_steps=steps, mu=mu, ltx_sigmas=ltx_sigmas,
                          sigmas=None if (sigmas is None or ltx_sigmas is not None) else [float(s) for s in sigmas],
                          timesteps=None if timesteps is None else [float(t) for t in timesteps]))

    v091 = dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                max_image_seq_len=4096, shift_terminal=0.1)
    mu = calculate_shift(7392, 1024, 4096, 0.95, 2.05)
    add("defaults_10", {}, steps=10)
    add("defaults_1", {}, steps=1)
    add("shift_3_7", dict(shift=3.0), steps=7)
    add("ltx_sigmas_2", {}, ltx_sigmas=2)
    add("ltx_sigmas_50", {}, ltx_sigmas=50)
    add("dynamic_mu_ltx_sigmas_30", v091, ltx_sigmas=30, mu=mu)
    add("dynamic_mu_default_30", v091, steps=30, mu=mu)
    add("dynamic_linear_mu_20", dict(use_dynamic_shifting=True, time_shift_type="linear"), steps=20, mu=1.7)
    add("shift_terminal_20", dict(shift=2.0, shift_terminal=0.1), steps=20)
    add("shift_terminal_ltx_sigmas_9", dict(shift=2.0, shift_terminal=0.05), ltx_sigmas=9)
    add("custom_timesteps", {}, timesteps=[999.0, 850.5, 600.25, 300.0, 25.0])
    add("custom_timesteps_shift", dict(shift=2.0), timesteps=[1000.0, 975.0, 700.0, 333.3, 10.0])
    add("custom_sigmas", dict(shift=1.5), sigmas=[1.0, 0.8, 0.61, 0.3, 0.05])
    add("invert_sigmas", dict(invert_sigmas=True), steps=6)
    shifts = [dict(seq_len=n, base=b, max_len=m, base_shift=bs, max_shift=ms,
                   mu=calculate_shift(n, b, m, bs, ms))
              for n, b, m, bs, ms in [(192, 256, 4096, 0.5, 1.15), (7392, 1024, 4096, 0.95, 2.05),
                                      (4096, 256, 4096, 0.5, 1.15), (33, 256, 4096, 0.5, 1.15)]]
    lq = []
    for n in [1, 2, 3, 10, 30]:
        s = linear_quadratic_schedule(n)
        tensors[f"lq_{n}"] = s.float().contiguous()
        # as LTXConditionPipeline uses it: custom timesteps sigmas * 1000 through the default scheduler
        sched = FlowMatchEulerDiscreteScheduler()
        sched.set_timesteps(timesteps=s * 1000)
        tensors[f"lq_{n}.timesteps"] = sched.timesteps.float().contiguous()
        tensors[f"lq_{n}.sigmas"] = sched.sigmas.float().contiguous()
        lq.append(n)
    save_file(tensors, os.path.join(root, "scheduler.safetensors"))
    with open(os.path.join(root, "scheduler_cases.json"), "w") as f:
        json.dump(dict(set_timesteps=cases, calculate_shift=shifts, linear_quadratic=lq), f, indent=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "pipeline")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    torch.set_num_threads(2)

    scheduler_cases(root)

    tok_dir = os.path.join(root, "tokenizer_src")
    t5_oracle.train_tokenizer(tok_dir, model_max_length=128)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    text_encoder = t5_oracle.build(t5_oracle.RELU, len(tokenizer), seed=11)
    transformer = build_transformer(seed=12)
    vae_090 = vae_oracle.build(vae_oracle.CONFIG_090, seed=13)
    vae_091 = vae_oracle.build(vae_oracle.CONFIG_091, seed=14, noise_scale=0.0)

    def components(vae):
        return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                    scheduler=FlowMatchEulerDiscreteScheduler())

    pipes = {
        "t2v": LTXPipeline(**components(vae_090)),
        "t2v_091": LTXPipeline(**components(vae_091)),
        "i2v": LTXImageToVideoPipeline(**components(vae_090)),
        "cond": LTXConditionPipeline(**components(vae_090)),
    }
    for name, pipe in pipes.items():
        pipe.set_progress_bar_config(disable=True)
        save_pipeline(pipe, os.path.join(root, name), tok_dir)

    gen = torch.Generator().manual_seed(1234)
    image = torch.rand(3, 32, 32, generator=gen)          # [0, 1]: the pipelines map it to [-1, 1]
    image_neg = torch.rand(3, 32, 32, generator=gen) * 2 - 1  # already in [-1, 1]
    video9 = torch.rand(9, 3, 32, 32, generator=gen)
    video13 = torch.rand(13, 3, 32, 32, generator=gen)
    v2v_latents = torch.randn(1, 8, 3, 8, 8, generator=gen)

    base = dict(prompt="a red cat walks over the ocean", negative_prompt="", height=32, width=32, num_frames=9,
                num_inference_steps=2, max_sequence_length=16)
    cases = []

    def run(name, model, kind, seed, call, inputs=None, describe=None):
        pipe = pipes[model]
        kwargs = dict(base, **call)
        outs = {}
        for output_type in ["pt", "latent"]:
            result = pipe(**kwargs, generator=torch.Generator().manual_seed(seed), output_type=output_type)
            outs[output_type] = result.frames
        latents = outs["latent"]
        F = (kwargs["num_frames"] - 1) // pipe.vae_temporal_compression_ratio + 1
        H = kwargs["height"] // pipe.vae_spatial_compression_ratio
        W = kwargs["width"] // pipe.vae_spatial_compression_ratio
        if kind != "condition":  # LTXPipeline / I2V return packed, normalized latents
            latents = pipe._unpack_latents(latents, F, H, W, 1, 1)
        latents = pipe._denormalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std,
                                            pipe.vae.config.scaling_factor)
        folder = os.path.join(root, "cases", name)
        os.makedirs(folder)
        save_file({"frames": outs["pt"].float().contiguous(), "latents": latents.float().contiguous()},
                  os.path.join(folder, "reference.safetensors"))
        if inputs:
            save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(folder, "inputs.safetensors"))
        args = {k: v for k, v in kwargs.items() if not isinstance(v, (torch.Tensor, list)) or k == "prompt"}
        args.update(describe or {})
        cases.append(dict(name=name, model=model, kind=kind, seed=seed, args=args, inputs=sorted(inputs or {}),
                          bound=FP32_BOUND))

    run("t2v_cfg", "t2v", "text_to_video", 0, dict(guidance_scale=3.0))
    run("t2v_no_cfg", "t2v", "text_to_video", 1, dict(guidance_scale=1.0, frame_rate=24))
    run("t2v_rescale_batch2", "t2v", "text_to_video", 2,
        dict(prompt=["a red cat walks over the ocean", "the camera pans slowly"], negative_prompt="blurry",
             guidance_scale=3.0, guidance_rescale=0.7))
    run("t2v_decode_noise", "t2v_091", "text_to_video", 3,
        dict(guidance_scale=3.0, decode_timestep=0.05, decode_noise_scale=0.025))
    run("t2v_decode_timestep", "t2v_091", "text_to_video", 4, dict(guidance_scale=1.0, decode_timestep=0.03))
    run("i2v_cfg", "i2v", "image_to_video", 5, dict(image=image.unsqueeze(0), guidance_scale=3.0),
        inputs=dict(image=image))
    run("i2v_no_cfg_signed", "i2v", "image_to_video", 6, dict(image=image_neg.unsqueeze(0), guidance_scale=1.0),
        inputs=dict(image=image_neg))
    run("cond_image_cfg", "cond", "condition", 7,
        dict(conditions=[LTXVideoCondition(image=image.unsqueeze(0), frame_index=0, strength=1.0)],
             guidance_scale=3.0),
        inputs=dict(c0=image.unsqueeze(0)), describe=dict(conditions=[dict(frame_index=0, strength=1.0)]))
    run("cond_video_and_late_image", "cond", "condition", 8,
        dict(conditions=[LTXVideoCondition(video=video9, frame_index=0, strength=0.8),
                         LTXVideoCondition(image=image_neg.unsqueeze(0), frame_index=8, strength=0.9)],
             guidance_scale=1.0),
        inputs=dict(c0=video9, c1=image_neg.unsqueeze(0)),
        describe=dict(conditions=[dict(frame_index=0, strength=0.8), dict(frame_index=8, strength=0.9)]))
    run("cond_video_prefix_cfg", "cond", "condition", 9,
        dict(conditions=[LTXVideoCondition(video=video13, frame_index=4, strength=1.0)], num_frames=17,
             guidance_scale=3.0, guidance_rescale=0.5, frame_rate=24),
        inputs=dict(c0=video13), describe=dict(conditions=[dict(frame_index=4, strength=1.0)]))
    run("cond_none_cfg", "cond", "condition", 10, dict(guidance_scale=3.0))
    run("cond_v2v", "cond", "condition", 11,
        dict(latents=v2v_latents, denoise_strength=0.5, num_inference_steps=4, guidance_scale=1.0),
        inputs=dict(latents=v2v_latents))
    run("cond_v2v_image_cfg", "cond", "condition", 12,
        dict(conditions=[LTXVideoCondition(image=image.unsqueeze(0), frame_index=0, strength=1.0)],
             latents=v2v_latents, denoise_strength=0.6, num_inference_steps=3, guidance_scale=3.0),
        inputs=dict(c0=image.unsqueeze(0), latents=v2v_latents),
        describe=dict(conditions=[dict(frame_index=0, strength=1.0)]))

    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main()
