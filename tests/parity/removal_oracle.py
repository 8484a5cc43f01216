#!/usr/bin/env python3
"""Oracle for the C++ video object removal (OmnimatteZero on LTX-Video): removal, effects mask, composition.

A reimplementation of the official OmnimatteZero code (github.com/dvirsamuel/OmnimatteZero: OmnimatteZero.my_call /
my_prepare_latents, self_attention_map.generate_total_mask, the foreground_composition script) on diffusers 0.42.1
components. It follows the official order of operations and random draws; it departs only where the official
code draws from torch's unseeded global RNG (the ltxmps convention below). CPU, float32, a small random model.

Random draws (ltxmps convention):
  removal   one torch.Generator().manual_seed(seed), in the official order: latent noise, the video's VAE posterior
            sample, the mask's posterior sample, one packed [1, N, C] re-noise draw per step, the decode noise (drawn
            even when its weight decode_noise_scale = decode_timestep is 0).
  effects   the same two draws as the official global-RNG ones (the video's posterior sample, then randn of the
            latent shape), from one torch.Generator().manual_seed(seed).
  compose   encodes take the posterior mode; the refinement's re-encode of the latent-addition video is a posterior
            sample from torch.Generator().manual_seed(seed); LTXConditionPipeline.__call__ gets a fresh one.
Inputs are uint8 RGB frames already at the target size: preprocessing is v / 255 * 2 - 1 in float32 (diffusers'
VideoProcessor on PIL frames, called here and checked).

Writes under OUT/removal/:
  model/     LTXConditionPipeline.save_pretrained: random transformer (patch 1x1, 2 layers, 4 heads x 8, perturbed
             norms), random T5 + SentencePiece tokenizer (t5_oracle), the 0.9.7 scheduler config
             (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False): shift 1, no terminal stretch), a tiny
             0.9.5/0.9.7-style VAE (LTXVideo095DownBlock3D, timestep conditioning, patch 4, compression 32 x 8 as
             released) with random latents_mean / latents_std and scaling_factor 1.0. Its encoder biases are zero
             and its log-variance bias is -8: a mid-grey (0) region encodes to zero-mean latents plus a small
             posterior noise, so the removal's token test (|channel mean| > 0.01) keeps some tokens.
  model_sf/  the same with the VAE's scaling_factor 1.5 (normalisation ignores it, the decode uses it).
  cases/<case>/inputs.safetensors, uint8 [F, H, W, 3] frames:
    removal          `video`, `mask` (the total mask)
    effects          `video`, `mask` (the object mask)
    effects_removal  `video`, `mask` (the object mask), `removal_mask` (the effects total mask x 255, RGB: what
                     the removal consumed)
    compose          `original`, `background`, `object_mask`, `total_mask`, `new_background`
  cases/<case>/reference.safetensors:
    removal          `latents` f32 [1, C, F', H', W'] (final latents unpacked and denormalised with scaling_factor,
                     before the cast for decode); `token_mask` f32 [1, 1, F', H', W'] (1 = regenerated);
                     `mask_channel_mean` f32 [F', H', W'] (what the token test reads); `frames` f32 [F_out, 3, H, W]
                     in [0, 1] (the decode postprocessed as output_type="pt", before 8-bit quantisation)
    effects          `scores` f32 [F', H', W'] (per-token score before upsampling); `object_tokens` f32 [F', H', W'];
                     `upsampled` f32 [T, H, W]; `effects_mask`, `total_mask` uint8 [T, H, W] 0/1; `threshold` f32
                     0-dim (the value used)
    effects_removal  the effects and the removal fields in one file
    compose          `foreground`, `latent_addition` f32 [F, 3, H, W] in [0, 1]; `foreground_u8`,
                     `latent_addition_u8` uint8 [F, H, W, 3] (official (x * 255).long(): truncation); `refinement`
                     f32 [F, 3, H, W] (output_type="pt"); `decoded_object_mask`, `decoded_total_mask` f32
                     [1, 3, F, H, W] (before the > 0 test); `latent_addition_raw` f32 [1, 3, F, H, W] (the unclamped
                     video the refinement re-encodes); `refinement_latents` f32 [1, C, F', H', W'] (its normalised
                     posterior sample: the pipeline's `latents` argument)
  cases.json: a list of {name, kind (removal | effects | effects_removal | compose), model (folder), bound
    (max|C++ - reference| <= bound * max(1, max|reference|) per float tensor), inputs (names), args, derived}.
    args, removal: prompt, negative_prompt, height, width, num_frames (official: len(video)), num_inference_steps,
      guidance_scale, seed, frame_rate, image_cond_noise_scale, decode_timestep, decode_noise_scale (null: the
      decode_timestep), max_sequence_length, strength (the condition strength, 1).
    args, effects: prompt, height, width, threshold (null: adaptive, mean + 0.5 * unbiased std), threshold_source,
      dilation, extraction_sigma, seed, layers (null: every attn1 in block order), max_sequence_length.
    args, effects_removal: {effects: effects args, removal: removal args}; derived likewise.
    args, compose: height, width, seed, prompt, negative_prompt, denoise_strength, num_inference_steps,
      decode_timestep, image_cond_noise_scale, guidance_scale, frame_rate, max_sequence_length, temb (the decode
      timestep of the latent arithmetic).
    derived (computed by the oracle, for checks and diagnostics), removal: input_frames, conditioning_frames (after
      trim_conditioning_sequence), latent_shape [F', H', W'], output_frames, regenerated_tokens, kept_tokens,
      token_margin (min | |channel mean| - 0.01 |), sigmas, kept_noise_scale (image_cond_noise_scale * sigma_last^2).
    derived, effects: input_frames, frames_used ((T - 1) // 8 * 8 + 1), latent_shape, layers_used, threshold,
      threshold_margin (min |upsampled - threshold|), near_threshold_pixels (closer than 1e-5), object_pixels,
      effects_pixels, total_pixels.
    derived, compose: frames, latent_shape, mask_margin (min |decoded mask value|), near_zero_mask_values (|x| <
      1e-5), refinement_steps.

Only the test oracle uses Python; the C++ side never does.
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline_oracle  # noqa: E402  (save_pipeline, TRANSFORMER)
import t5_oracle  # noqa: E402  (train_tokenizer, build, RELU)
import vae_oracle  # noqa: E402  (build)

from diffusers import FlowMatchEulerDiscreteScheduler, LTXConditionPipeline, LTXVideoTransformer3DModel  # noqa: E402
from diffusers.pipelines.ltx.pipeline_ltx_condition import (  # noqa: E402
    linear_quadratic_schedule,
    retrieve_latents,
    retrieve_timesteps,
)
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

diffusers_logging.set_verbosity_error()  # set_timesteps warns about custom timesteps without sigmas

# fp32: max|C++ - oracle| <= 1e-4 * max(1, max|reference|) (never loosened).
FP32_BOUND = 1e-4
NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"
MAX_SEQUENCE_LENGTH = 256

TRANSFORMER = dict(pipeline_oracle.TRANSFORMER, num_layers=2)
# The 0.9.7 VAE structure (convert_ltx_to_diffusers.py) at tiny widths. A pixel reaches about three latent tokens
# on each side through the encoder, which the case geometries leave room for.
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=TRANSFORMER["in_channels"],
    block_out_channels=(8, 16, 16, 16, 16), down_block_types=("LTXVideo095DownBlock3D",) * 4,
    decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 0, 0, 0), decoder_layers_per_block=(1, 1, 1, 1),
    spatio_temporal_scaling=(True,) * 4, decoder_spatio_temporal_scaling=(True,) * 3,
    decoder_inject_noise=(False,) * 4, downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_residual=(True,) * 3, upsample_factor=(2, 2, 2), timestep_conditioning=True, patch_size=4,
    patch_size_t=1, resnet_norm_eps=1e-6, scaling_factor=1.0, encoder_causal=True, decoder_causal=False,
    spatial_compression_ratio=32, temporal_compression_ratio=8,
)
LOGVAR_BIAS = -8.0
# convert_ltx_to_diffusers.py saves FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False) for 0.9.5/0.9.7.
SCHEDULER_097 = dict(use_dynamic_shifting=False)


# ----------------------------------------------------------------------------------------------------- model

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


def build_vae(seed, scaling_factor):
    vae = vae_oracle.build(dict(VAE, scaling_factor=scaling_factor), seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.startswith("encoder.") and name.endswith(".bias"):
                p.zero_()
        vae.encoder.conv_out.conv.bias[-1] = LOGVAR_BIAS
        g = torch.Generator().manual_seed(seed + 1)
        vae.latents_mean.copy_(0.5 * torch.randn(vae.latents_mean.shape, generator=g))
        vae.latents_std.copy_(0.5 + torch.rand(vae.latents_std.shape, generator=g))
    return vae


def save_models(root):
    tok_dir = os.path.join(root, "tokenizer_src")
    t5_oracle.train_tokenizer(tok_dir, model_max_length=128)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    text_encoder = t5_oracle.build(t5_oracle.RELU, len(tokenizer), seed=31)
    transformer = build_transformer(seed=32)
    pipes = {}
    for folder, scaling_factor in (("model", 1.0), ("model_sf", 1.5)):
        pipe = LTXConditionPipeline(transformer=transformer, vae=build_vae(33, scaling_factor),
                                    text_encoder=text_encoder, tokenizer=tokenizer,
                                    scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_097))
        pipeline_oracle.save_pipeline(pipe, os.path.join(root, folder), tok_dir)
        # Run what the C++ side loads: the saved folder.
        loaded = LTXConditionPipeline.from_pretrained(os.path.join(root, folder), torch_dtype=torch.float32)
        loaded.set_progress_bar_config(disable=True)
        assert torch.equal(loaded.vae.latents_mean, pipe.vae.latents_mean), "latents_mean was not saved"
        assert torch.equal(loaded.vae.latents_std, pipe.vae.latents_std), "latents_std was not saved"
        assert loaded.vae.config.scaling_factor == scaling_factor
        assert (loaded.vae_spatial_compression_ratio, loaded.vae_temporal_compression_ratio) == (32, 8)
        assert not loaded.scheduler.config.use_dynamic_shifting and loaded.scheduler.config.shift == 1.0
        assert loaded.scheduler.config.shift_terminal is None
        pipes[folder] = loaded
    shutil.rmtree(tok_dir)
    return pipes


# ---------------------------------------------------------------------------------------------- inputs

def _coverage(yy, xx, cy, cx, ry, rx, edge=1.5):
    """Anti-aliased ellipse coverage in [0, 1] (soft over about `edge` pixels)."""
    rho = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip(0.5 + (1.0 - rho) * min(ry, rx) / edge, 0.0, 1.0)


def _lossy_mask(cov, rng):
    """A mask as an H.264 round trip leaves it: grey values at the edges, small ringing around 0 and 255."""
    v = cov[..., None] * 255.0 + rng.normal(0.0, 1.5, cov.shape + (3,))
    band = (cov > 0.0) & (cov < 1.0)
    v[band] += rng.normal(0.0, 6.0, (int(band.sum()), 3))
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def make_clip(num_frames, height, width, seed, x_range=(0.2, 0.4), y=0.38, colored=False):
    """Textured background, a moving red ellipse, its moving shadow, the object and total masks (uint8).
    x_range: the object's centre moves from x_range[0] * width to x_range[1] * width; y: its centre row / height."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([0.5 + 0.22 * np.sin(2 * np.pi * (xx / 23.0 + yy / 37.0) + phase[c])
                     + 0.08 * np.cos(2 * np.pi * yy / 11.0 + 2 * phase[c]) for c in range(3)], -1)
    base += 0.1 * ((np.floor(xx / 8) + np.floor(yy / 8)) % 2)[..., None]
    new_bg = np.stack([0.45 + 0.3 * np.cos(2 * np.pi * (xx / 41.0 - yy / 19.0) + phase[c]) for c in range(3)], -1)
    out = {k: [] for k in ("video", "background", "object_mask", "total_mask", "new_background")}
    ry, rx = 0.2 * min(height, width), 0.15 * min(height, width)
    color = np.array([0.9, 0.2, 0.15])
    for f in range(num_frames):
        s = f / max(num_frames - 1, 1)
        cy = (y + 0.05 * np.sin(3 * s)) * height
        cx = (x_range[0] + (x_range[1] - x_range[0]) * s) * width
        obj = _coverage(yy, xx, cy, cx, ry, rx)
        shadow = _coverage(yy, xx, cy + 1.45 * ry, cx + 0.7 * rx, 0.35 * ry, 1.3 * rx, edge=3.0)
        bg = np.clip(base + rng.normal(0.0, 0.02, base.shape), 0, 1)
        frame = bg * (1.0 - 0.55 * shadow[..., None])
        shade = 0.8 + 0.2 * np.clip((yy - cy) / ry, -1, 1)[..., None]
        frame = frame * (1.0 - obj[..., None]) + obj[..., None] * color * shade
        object_mask = _lossy_mask(obj, rng)
        if colored:
            # Left half red-dominant (channel mean < 128: not the object for the effects pass; the removal's
            # per-channel test still sees R), right half yellow (mean > 128, but B is 0).
            inside = obj > 0.5
            object_mask[inside & (xx < cx)] = (250, 60, 40)
            object_mask[inside & (xx >= cx)] = (230, 225, 35)
        out["video"].append(np.rint(np.clip(frame, 0, 1) * 255))
        out["background"].append(np.rint(bg * 255))
        out["new_background"].append(np.rint(np.clip(new_bg + rng.normal(0, 0.02, new_bg.shape), 0, 1) * 255))
        out["object_mask"].append(object_mask)
        out["total_mask"].append(_lossy_mask(np.maximum(obj, shadow), rng))
    return {k: torch.from_numpy(np.stack(v).astype(np.uint8)) for k, v in out.items()}


def preprocess(pipe, frames, height, width):
    """VideoProcessor.preprocess_video on PIL frames, checked to be v / 255 * 2 - 1 (no resize at this size)."""
    video = pipe.video_processor.preprocess_video([PIL.Image.fromarray(f.numpy()) for f in frames], height, width)
    expected = (frames.permute(3, 0, 1, 2)[None].float() / 255.0) * 2.0 - 1.0
    assert video.dtype == torch.float32 and torch.equal(video, expected), "preprocessing is not v / 255 * 2 - 1"
    return video


# --------------------------------------------------------------------------------------------- removal

def encode_prompts(pipe, prompt, negative_prompt, guidance_scale, max_sequence_length):
    do_cfg = guidance_scale > 1.0
    pe, pm, ne, nm = pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt,
                                        do_classifier_free_guidance=do_cfg, num_videos_per_prompt=1,
                                        max_sequence_length=max_sequence_length, device=torch.device("cpu"))
    if do_cfg:
        pe, pm = torch.cat([ne, pe], dim=0), torch.cat([nm, pm], dim=0)
    return pe, pm


def conditioning_tensor(pipe, frames, height, width, num_frames):
    """my_call's video condition: preprocess, trim_conditioning_sequence (frame_index 0), the 8k+1 check."""
    tensor = preprocess(pipe, frames, height, width)
    tensor = tensor[:, :, :pipe.trim_conditioning_sequence(0, tensor.size(2), num_frames)].to(pipe.vae.dtype)
    assert tensor.size(2) % pipe.vae_temporal_compression_ratio == 1, "my_call raises here"
    return tensor


def prepare_removal_latents(pipe, video, mask, num_frames, height, width, strength, generator):
    """my_prepare_latents: noise, video posterior sample, mask to extremes + posterior sample, token mask."""
    rt, rs = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
    pt, ps = pipe.transformer_temporal_patch_size, pipe.transformer_spatial_patch_size
    shape = (1, pipe.transformer.config.in_channels, (num_frames - 1) // rt + 1, height // rs, width // rs)
    noise = randn_tensor(shape, generator=generator, dtype=torch.float32)
    latents = noise.clone()
    cond = retrieve_latents(pipe.vae.encode(video), generator=generator)
    cond = pipe._normalize_latents(cond, pipe.vae.latents_mean, pipe.vae.latents_std).to(dtype=torch.float32)
    mask[mask < 0] = 0
    mask[mask > 0] = 100
    mask_latents = retrieve_latents(pipe.vae.encode(mask), generator=generator)
    channel_mean = mask_latents[0].mean(0)
    token_mask = torch.logical_or(channel_mean > 0.01, channel_mean < -0.01).type(torch.float32)[None, None]
    n = cond.size(2)
    latents[:, :, :n] = torch.lerp(latents[:, :, :n], cond, strength)
    video_ids = pipe._prepare_video_ids(1, shape[2], shape[3], shape[4], patch_size_t=pt, patch_size=ps)
    conditioning_mask = 1 - token_mask[0].reshape(1, -1)
    video_ids = pipe._scale_video_ids(video_ids, scale_factor=rs, scale_factor_t=rt, frame_index=0)
    latents = latents * (1 - token_mask) + noise * token_mask
    latents = pipe._pack_latents(latents, ps, pt)
    return latents, conditioning_mask, video_ids, token_mask, channel_mean, shape


def denoise(pipe, latents, conditioning_mask, coords, timesteps, embeds, args, generator):
    """my_call's loop: re-noise kept tokens, per-token timesteps, CFG, per-token Euler step, keep regenerated."""
    prompt_embeds, prompt_mask = embeds
    do_cfg = args["guidance_scale"] > 1.0
    init_latents = latents.clone()
    eps = None
    for t in timesteps:
        if args["image_cond_noise_scale"] > 0:  # add_noise_to_image_conditioning_latents(t / 1000, ...)
            eps = randn_tensor(latents.shape, generator=generator, dtype=latents.dtype)
            noised = init_latents + args["image_cond_noise_scale"] * eps * ((t / 1000.0) ** 2)
            latents = torch.where((conditioning_mask > 1.0 - 1e-6).unsqueeze(-1), noised, latents)
        model_input = (torch.cat([latents] * 2) if do_cfg else latents).to(prompt_embeds.dtype)
        mask_input = torch.cat([conditioning_mask] * 2) if do_cfg else conditioning_mask
        timestep = t.expand(model_input.shape[0]).unsqueeze(-1).float()
        timestep = torch.min(timestep, (1 - mask_input) * 1000.0)
        noise_pred = pipe.transformer(hidden_states=model_input, encoder_hidden_states=prompt_embeds,
                                      timestep=timestep, encoder_attention_mask=prompt_mask, video_coords=coords,
                                      return_dict=False)[0]
        if do_cfg:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + args["guidance_scale"] * (text - uncond)
            timestep, _ = timestep.chunk(2)
        stepped = pipe.scheduler.step(-noise_pred, t, latents, per_token_timesteps=timestep, return_dict=False)[0]
        latents = torch.where((t / 1000 - 1e-6 < (1.0 - conditioning_mask)).unsqueeze(-1), stepped, latents)
    return latents, init_latents, eps


def decode_latents(pipe, latents, dtype, decode_timestep, decode_noise_scale, generator):
    """my_call's decode: cast, decode noise drawn and mixed, vae.decode(temb), postprocess as output_type='pt'."""
    latents = latents.to(dtype)
    noise = randn_tensor(latents.shape, generator=generator, dtype=latents.dtype)
    scale = decode_timestep if decode_noise_scale is None else decode_noise_scale
    timestep = torch.tensor([decode_timestep], dtype=latents.dtype)
    scale = torch.tensor([scale], dtype=latents.dtype)[:, None, None, None, None]
    latents = (1 - scale) * latents + scale * noise
    video = pipe.vae.decode(latents, timestep, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="pt")[0]


def run_removal(pipe, video_frames, mask_frames, args):
    generator = torch.Generator().manual_seed(args["seed"])
    height, width, num_frames = args["height"], args["width"], args["num_frames"]
    embeds = encode_prompts(pipe, args["prompt"], args["negative_prompt"], args["guidance_scale"],
                            args["max_sequence_length"])
    video = conditioning_tensor(pipe, video_frames, height, width, num_frames)
    mask = conditioning_tensor(pipe, mask_frames, height, width, num_frames)
    sigmas = linear_quadratic_schedule(args["num_inference_steps"])
    timesteps, _ = retrieve_timesteps(pipe.scheduler, args["num_inference_steps"], torch.device("cpu"),
                                      sigmas * 1000)
    latents, cond_mask, video_ids, token_mask, channel_mean, shape = prepare_removal_latents(
        pipe, video, mask, num_frames, height, width, args["strength"], generator)
    coords = video_ids.float()
    coords[:, 0] = coords[:, 0] * (1.0 / args["frame_rate"])
    if args["guidance_scale"] > 1.0:
        coords = torch.cat([coords, coords], dim=0)
    latents, init_latents, eps = denoise(pipe, latents, cond_mask, coords, timesteps, embeds, args, generator)

    # Kept tokens end as their clean latents plus the last step's re-noise; regenerated ones moved.
    kept = cond_mask[0] > 0.5
    scale = args["image_cond_noise_scale"] * (timesteps[-1] / 1000.0) ** 2
    assert kept.any() and (~kept).any(), f"token mask must keep and regenerate tokens: {int(kept.sum())} kept"
    assert torch.equal(latents[0, kept], (init_latents + args["image_cond_noise_scale"] * eps
                                          * ((timesteps[-1] / 1000.0) ** 2))[0, kept]), "kept tokens moved"
    assert (latents[0, ~kept] - init_latents[0, ~kept]).abs().max() > 0.1, "regenerated tokens did not move"
    assert abs(float(timesteps[-1]) / 1000.0 - float(sigmas[-1])) < 1e-6

    latents = pipe._unpack_latents(latents, shape[2], shape[3], shape[4], pipe.transformer_spatial_patch_size,
                                   pipe.transformer_temporal_patch_size)
    latents = pipe._denormalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std,
                                        pipe.vae.config.scaling_factor)
    frames = decode_latents(pipe, latents, embeds[0].dtype, args["decode_timestep"], args["decode_noise_scale"],
                            generator)
    reference = dict(latents=latents, token_mask=token_mask, mask_channel_mean=channel_mean, frames=frames)
    derived = dict(input_frames=int(video_frames.shape[0]), conditioning_frames=int(video.size(2)),
                   latent_shape=list(shape[2:]), output_frames=int(frames.shape[0]),
                   regenerated_tokens=int(token_mask.sum()), kept_tokens=int(kept.sum()),
                   token_margin=float(((channel_mean.abs() - 0.01).abs()).min()),
                   sigmas=[float(s) for s in sigmas], kept_noise_scale=float(scale))
    assert derived["token_margin"] > 1e-5, f"a token sits on the 0.01 test: {derived['token_margin']}"
    return reference, derived


# --------------------------------------------------------------------------------------------- effects

class SelfAttentionMaps:
    """The official extractor: hooks every `attn1` (block order), recomputes softmax(q k^T / sqrt(d)) from the
    AdaLN-modulated input with norm_q / norm_k and without RoPE, averaged over heads."""

    def __init__(self, transformer, layers=None):
        self.maps, self.handles = {}, []
        modules = [m for name, m in transformer.named_modules() if name.split(".")[-1] == "attn1"]
        for index, module in enumerate(modules):
            if layers is None or index in layers:
                self.handles.append(module.register_forward_pre_hook(self._hook(index), with_kwargs=True))

    def _hook(self, index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            assert kwargs.get("encoder_hidden_states") is None, "attn1 is self-attention"
            query, key = module.norm_q(module.to_q(hidden)), module.norm_k(module.to_k(hidden))
            b, n, _ = query.shape
            d = query.shape[-1] // module.heads
            query = query.view(b, n, module.heads, d).transpose(1, 2)
            key = key.view(b, -1, module.heads, d).transpose(1, 2)
            weights = F.softmax(torch.matmul(query, key.transpose(-2, -1)) * d ** -0.5, dim=-1)
            self.maps[index] = weights.mean(dim=1)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def effects_scores(pipe, video, object_mask, args, generator):
    """extract_from_video + the per-frame reduction of extract_effects_mask: [F', h, w] scores."""
    latents = retrieve_latents(pipe.vae.encode(video), generator=generator)
    latents = pipe._normalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std)
    noise = torch.randn(latents.shape, dtype=latents.dtype, generator=generator)
    sigma = args["extraction_sigma"]
    noisy = (1 - sigma) * latents + sigma * noise
    timestep = torch.tensor([sigma * 1000])
    embeds, embeds_mask, _, _ = pipe.encode_prompt(prompt=args["prompt"], negative_prompt=None,
                                                   do_classifier_free_guidance=False, num_videos_per_prompt=1,
                                                   max_sequence_length=args["max_sequence_length"],
                                                   device=torch.device("cpu"))
    nf, h, w = latents.shape[2:]
    ids = pipe._prepare_video_ids(1, nf, h, w, pipe.transformer_temporal_patch_size,
                                  pipe.transformer_spatial_patch_size)
    ids = pipe._scale_video_ids(ids, scale_factor=pipe.vae_spatial_compression_ratio,
                                scale_factor_t=pipe.vae_temporal_compression_ratio, frame_index=0)
    packed = pipe._pack_latents(noisy, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)
    extractor = SelfAttentionMaps(pipe.transformer, args["layers"])
    try:
        pipe.transformer(hidden_states=packed.to(embeds.dtype), encoder_hidden_states=embeds,
                         timestep=timestep.expand(1, -1).float(), encoder_attention_mask=embeds_mask,
                         video_coords=ids.float(), return_dict=False)
    finally:
        extractor.remove()
    maps = extractor.maps
    assert len(maps) == (len(args["layers"]) if args["layers"] is not None else TRANSFORMER["num_layers"])

    T, s = object_mask.shape[2], h * w
    dtype = pipe.transformer.dtype
    tokens = torch.stack([F.interpolate(object_mask[:, :, min(t * pipe.vae_temporal_compression_ratio, T - 1)],
                                        size=(h, w), mode="nearest") for t in range(nf)], dim=2)
    frames = []
    for frame_t in range(nf):
        acc = torch.zeros(1, s, dtype=dtype)
        for attn in maps.values():
            assert attn.shape[-1] == nf * s
            attn_t = attn.view(1, nf, s, nf, s)[:, frame_t]
            to_object = torch.zeros(1, s, dtype=dtype)
            for src in range(nf):
                to_object += (attn_t[:, :, src, :] * tokens[:, 0, src].reshape(1, -1).unsqueeze(1)).sum(dim=-1)
            acc += to_object
        frames.append((acc / (len(maps) + 1e-8)).view(1, h, w))
    return torch.stack(frames, dim=1), tokens[0, 0], sorted(maps)


def upsample_scores(scores, T, H, W):
    nf, h, w = scores.shape[1:]
    spatial = F.interpolate(scores.view(nf, 1, h, w), size=(H, W), mode="bilinear", align_corners=False)
    spatial = spatial.view(1, nf, H, W)
    return F.interpolate(spatial.unsqueeze(1), size=(T, H, W), mode="trilinear", align_corners=False).squeeze(1)


def effects_masks(upsampled, object_binary, threshold, dilation):
    """Threshold (adaptive: mean + 0.5 * unbiased std), per-frame dilation, union with the object."""
    volume = upsampled.unsqueeze(1)
    if threshold is None:
        flat = volume.view(-1)
        threshold = flat.mean() + 0.5 * flat.std()
    effects = (volume > threshold).float()
    if dilation > 0:
        kernel = torch.ones(1, 1, dilation, dilation)
        effects = torch.stack([(F.conv2d(effects[:, :, t], kernel, padding=dilation // 2) > 0).float()
                               for t in range(effects.shape[2])], dim=2)
    total = torch.clamp(object_binary + effects, 0, 1)
    return effects, total, torch.as_tensor(threshold, dtype=torch.float32)


def widest_gap_threshold(upsampled, quantiles):
    """A fixed threshold for a case: the middle of the widest gap between the upsampled values within a quantile
    range, so that float rounding on either side is least likely to move a pixel across it."""
    values = torch.unique(upsampled.flatten())
    lo, hi = (int(values.numel() * q) for q in quantiles)
    gaps = values[lo + 1:hi] - values[lo:hi - 1]
    i = int(torch.argmax(gaps)) + lo
    return float(((values[i] + values[i + 1]) / 2).item())


def run_effects(pipe, video_frames, mask_frames, args, threshold_quantiles=None):
    generator = torch.Generator().manual_seed(args["seed"])
    video = preprocess(pipe, video_frames, args["height"], args["width"]).to(pipe.transformer.dtype)
    mask = preprocess(pipe, mask_frames, args["height"], args["width"]).to(pipe.transformer.dtype)
    ratio = pipe.vae_temporal_compression_ratio
    T = (video.shape[2] - 1) // ratio * ratio + 1  # fix_num_frames_for_vae
    video, mask = video[:, :, :T], mask[:, :, :T]
    # Channel mean > 0 (extract_effects_mask applies the same test again to this binary mask: a no-op).
    object_binary = (mask.mean(dim=1, keepdim=True) > 0).float()
    scores, tokens, layers_used = effects_scores(pipe, video, object_binary, args, generator)
    upsampled = upsample_scores(scores, T, video.shape[3], video.shape[4])
    threshold = args["threshold"]
    if threshold_quantiles is not None:
        threshold = widest_gap_threshold(upsampled, threshold_quantiles)
        args["threshold"] = threshold
    effects, total, used = effects_masks(upsampled, object_binary, threshold, args["dilation"])
    margin = (upsampled - used).abs()
    reference = dict(scores=scores[0], object_tokens=tokens, upsampled=upsampled[0],
                     effects_mask=effects[0, 0].to(torch.uint8), total_mask=total[0, 0].to(torch.uint8),
                     threshold=used)
    derived = dict(input_frames=int(video_frames.shape[0]), frames_used=T, latent_shape=list(scores.shape[1:]),
                   layers_used=layers_used, threshold=float(used), threshold_margin=float(margin.min()),
                   near_threshold_pixels=int((margin < 1e-5).sum()), object_pixels=int(object_binary.sum()),
                   effects_pixels=int(effects.sum()), total_pixels=int(total.sum()))
    assert torch.all(total >= object_binary), "the total mask must contain the object"
    assert 0.02 < effects.mean() < 0.9, f"trivial effects mask: {float(effects.mean())}"
    assert derived["total_pixels"] > derived["object_pixels"], "the effects add nothing"
    assert tokens.sum() > 0, "no object token"
    return reference, derived


# ----------------------------------------------------------------------------------------- composition

def latent_arithmetic(pipe, videos, temb):
    """MyAutoencoderKLLTXVideo.forward: posterior modes (un-normalised), z = z_new_bg + (z_orig - z_bg), four
    decodes with the given temb."""
    vae = pipe.vae
    z_all, z_bg, z_mask, z_mask2, z_new_bg = (vae.encode(v).latent_dist.mode() for v in videos)
    z_diff = z_all - z_bg
    z = z_new_bg + z_diff
    return tuple(vae.decode(x, temb).sample for x in (z, z_diff, z_mask, z_mask2))


def quantize(frames):
    """The official 8-bit frames: (x * 255).long() (truncation), [F, H, W, 3]."""
    return (frames * 255).long().permute(0, 2, 3, 1).to(torch.uint8)


def run_compose(pipe, inputs, args):
    names = ("original", "background", "object_mask", "total_mask", "new_background")
    videos = [preprocess(pipe, inputs[k], args["height"], args["width"]).to(pipe.vae.dtype) for k in names]
    nframes = min(videos[4].shape[2], videos[0].shape[2])
    videos = [v[:, :, :nframes] for v in videos]
    video_p = videos[0]
    temb = torch.tensor(args["temb"], dtype=pipe.vae.dtype)
    composite, foreground_only, decoded_mask, decoded_mask2 = latent_arithmetic(pipe, videos, temb)
    mask = (decoded_mask.float() > 0).type(video_p.dtype)
    mask2 = (decoded_mask2.float() > 0).type(video_p.dtype)

    foreground = (foreground_only * (1 - mask) + video_p * mask) * mask2
    foreground = pipe.video_processor.postprocess_video(foreground, output_type="pt")[0]
    addition_raw = composite * (1 - mask) + video_p * mask
    addition = pipe.video_processor.postprocess_video(addition_raw, output_type="pt")[0]

    latents = retrieve_latents(pipe.vae.encode(addition_raw), generator=torch.Generator().manual_seed(args["seed"]))
    latents = pipe._normalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std).to(addition_raw.dtype)
    refinement = pipe(prompt=args["prompt"], negative_prompt=args["negative_prompt"], width=args["width"],
                      height=args["height"], num_frames=addition.shape[0], denoise_strength=args["denoise_strength"],
                      num_inference_steps=args["num_inference_steps"], latents=latents,
                      decode_timestep=args["decode_timestep"], image_cond_noise_scale=args["image_cond_noise_scale"],
                      guidance_scale=args["guidance_scale"], frame_rate=args["frame_rate"],
                      max_sequence_length=args["max_sequence_length"],
                      generator=torch.Generator().manual_seed(args["seed"]), output_type="pt").frames[0]

    decoded = torch.cat([decoded_mask.flatten(), decoded_mask2.flatten()]).abs()
    reference = dict(foreground=foreground, latent_addition=addition, foreground_u8=quantize(foreground),
                     latent_addition_u8=quantize(addition), refinement=refinement,
                     decoded_object_mask=decoded_mask, decoded_total_mask=decoded_mask2,
                     latent_addition_raw=addition_raw, refinement_latents=latents)
    derived = dict(frames=nframes, latent_shape=list(latents.shape[2:]), mask_margin=float(decoded.min()),
                   near_zero_mask_values=int((decoded < 1e-5).sum()), refinement_steps=pipe.num_timesteps)
    assert refinement.shape == addition.shape, (refinement.shape, addition.shape)
    assert 0.05 < float(mask.mean()) < 0.95 and 0.05 < float(mask2.mean()) < 0.95, "degenerate decoded masks"
    assert not torch.equal(refinement, addition), "the refinement changed nothing"
    return reference, derived


# ------------------------------------------------------------------------------------------------ cases

def removal_args(height, width, num_frames, seed=1, steps=3):
    return dict(prompt="Empty", negative_prompt=NEGATIVE_PROMPT, height=height, width=width, num_frames=num_frames,
                num_inference_steps=steps, guidance_scale=3.0, seed=seed, frame_rate=25, image_cond_noise_scale=0.15,
                decode_timestep=0.0, decode_noise_scale=None, max_sequence_length=MAX_SEQUENCE_LENGTH, strength=1.0)


def effects_args(height, width, threshold=None, seed=0, layers=None, threshold_source="adaptive"):
    return dict(prompt="", height=height, width=width, threshold=threshold, threshold_source=threshold_source,
                dilation=3, extraction_sigma=0.5, seed=seed, layers=layers, max_sequence_length=MAX_SEQUENCE_LENGTH)


GAP = "fixed; chosen by the oracle in the widest gap of the upsampled scores within a quantile range"


class CaseWriter:
    def __init__(self, root):
        self.root, self.cases = root, []

    def write(self, name, kind, model, inputs, reference, args, derived):
        folder = os.path.join(self.root, "cases", name)
        os.makedirs(folder)
        save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(folder, "inputs.safetensors"))
        tensors = {k: (v.contiguous() if v.dtype == torch.uint8 else v.float().contiguous())
                   for k, v in reference.items()}
        save_file(tensors, os.path.join(folder, "reference.safetensors"))
        self.cases.append(dict(name=name, kind=kind, model=model, bound=FP32_BOUND, inputs=sorted(inputs),
                               args=args, derived=derived))

    def finish(self):
        with open(os.path.join(self.root, "cases.json"), "w") as f:
            json.dump(self.cases, f, indent=1)


def removal_cases(pipes, out):
    # 2 x 8 latent tokens per frame: the object and its shadow sit in the left columns, and the mask encode's
    # receptive field (about 3 latent columns) leaves the right ones kept.
    clip = make_clip(17, 64, 256, seed=1, x_range=(0.06, 0.14))
    inputs = dict(video=clip["video"], mask=clip["total_mask"])
    latents = {}
    for name, model in (("removal_17f", "model"), ("removal_scaling_factor", "model_sf")):
        args = removal_args(64, 256, 17)
        ref, derived = run_removal(pipes[model], clip["video"], clip["total_mask"], args)
        out.write(name, "removal", model, inputs, ref, args, derived)
        assert derived["output_frames"] == 17
        latents[model] = ref["latents"] - pipes[model].vae.latents_mean.view(1, -1, 1, 1, 1)
    # Same normalised latents (the encode normalisation ignores scaling_factor); only the denormalisation divides.
    assert torch.allclose(latents["model_sf"] * 1.5, latents["model"], rtol=0, atol=1e-5), "scaling_factor use"

    # 20 frames: num_frames = len(video) = 20 gives 3 latent frames; each condition is trimmed to 17 frames by
    # trim_conditioning_sequence, which always matches the latent count, so it runs; the decode gives 17 frames.
    clip = make_clip(20, 96, 192, seed=2, x_range=(0.88, 0.8), y=0.3, colored=True)
    mask = clip["total_mask"].clone()
    mask[:, :, :, 1] = clip["object_mask"][:, :, :, 1]  # channels disagree: per-channel extremes
    args = removal_args(96, 192, 20, seed=5)
    ref, derived = run_removal(pipes["model"], clip["video"], mask, args)
    out.write("removal_trim_20f_colored_mask", "removal", "model", dict(video=clip["video"], mask=mask), ref, args,
              derived)
    assert (derived["conditioning_frames"], derived["latent_shape"][0], derived["output_frames"]) == (17, 3, 17)


def effects_cases(pipes, out):
    pipe = pipes["model"]
    clip = make_clip(17, 96, 160, seed=3, x_range=(0.2, 0.45))
    args = effects_args(96, 160, threshold_source=GAP)
    ref, derived = run_effects(pipe, clip["video"], clip["object_mask"], args, threshold_quantiles=(0.6, 0.9))
    out.write("effects_fixed_threshold", "effects", "model", dict(video=clip["video"], mask=clip["object_mask"]),
              ref, args, derived)

    clip = make_clip(17, 64, 128, seed=4, x_range=(0.3, 0.5), colored=True)
    args = effects_args(64, 128)
    ref, derived = run_effects(pipe, clip["video"], clip["object_mask"], args)
    out.write("effects_adaptive_colored_mask", "effects", "model", dict(video=clip["video"], mask=clip["object_mask"]),
              ref, args, derived)

    clip = make_clip(20, 64, 160, seed=5, x_range=(0.4, 0.6))
    args = effects_args(64, 160, layers=[1], seed=9)
    ref, derived = run_effects(pipe, clip["video"], clip["object_mask"], args)
    out.write("effects_layer1_trim_20f", "effects", "model", dict(video=clip["video"], mask=clip["object_mask"]),
              ref, args, derived)
    assert derived["frames_used"] == 17 and derived["layers_used"] == [1]


def chained_case(pipes, out):
    """The effects pass's total mask (0/1 x 255 on three channels, no lossy video in between) as the removal mask;
    inputs also hold it as `removal_mask` so that the removal can be checked on its own."""
    pipe = pipes["model"]
    clip = make_clip(17, 64, 256, seed=6, x_range=(0.06, 0.12))
    eargs = effects_args(64, 256, threshold_source=GAP, seed=2)
    eref, ederived = run_effects(pipe, clip["video"], clip["object_mask"], eargs, threshold_quantiles=(0.93, 0.98))
    total = (eref["total_mask"] * 255)[..., None].expand(-1, -1, -1, 3).contiguous()
    rargs = removal_args(64, 256, 17, seed=7)
    rref, rderived = run_removal(pipe, clip["video"], total, rargs)
    out.write("effects_then_removal", "effects_removal", "model",
              dict(video=clip["video"], mask=clip["object_mask"], removal_mask=total), dict(eref, **rref),
              dict(effects=eargs, removal=rargs), dict(effects=ederived, removal=rderived))


def compose_case(pipes, out):
    clip = make_clip(17, 64, 96, seed=19, x_range=(0.3, 0.5))
    inputs = dict(original=clip["video"], background=clip["background"], object_mask=clip["object_mask"],
                  total_mask=clip["total_mask"], new_background=clip["new_background"])
    args = dict(height=64, width=96, seed=0, prompt="", negative_prompt=NEGATIVE_PROMPT, denoise_strength=0.3,
                num_inference_steps=10, decode_timestep=0.05, image_cond_noise_scale=0.025, guidance_scale=3.0,
                frame_rate=25, max_sequence_length=MAX_SEQUENCE_LENGTH, temb=0.0)
    ref, derived = run_compose(pipes["model"], inputs, args)
    out.write("compose", "compose", "model", inputs, ref, args, derived)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "removal")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    torch.set_num_threads(1)  # the models are tiny: a second thread only adds synchronisation
    torch.set_grad_enabled(False)
    start = time.time()
    pipes = save_models(root)
    times = [("models", time.time() - start)]
    out = CaseWriter(root)
    for stage in (removal_cases, effects_cases, chained_case, compose_case):
        t = time.time()
        stage(pipes, out)
        times.append((stage.__name__, time.time() - t))
    out.finish()
    print(f"removal oracle: {len(out.cases)} cases in {time.time() - start:.1f} s ("
          + ", ".join(f"{k} {v:.1f} s" for k, v in times) + ")")


if __name__ == "__main__":
    main()
