#!/usr/bin/env python3
"""Oracle for the C++ AutoencoderKLLTXVideo: diffusers' VAE at small random configs.

Writes under OUT/vae/:
  <model>/config.json + diffusion_pytorch_model.safetensors   (model.save_pretrained)
  <case>/inputs.safetensors      `sample` (encode) or `latents` [+ `temb`] (decode)
  <case>/reference.safetensors   encode: `mean`, `logvar` [+ `posterior_sample`]; decode: `sample` (float32)
  cases.json                     per case: model folder, op, tiling state, seeds, error bound

Configs: the tiny "090" and "091" configs of diffusers' LTX VAE unit test
(tests/models/autoencoders/test_models_autoencoder_ltx_video.py), a "090_wide" config whose blocks change width
(LTXVideoDownBlock3D.conv_out, LTXVideoUpBlock3d.conv_in, norm3 + conv_shortcut, patch_size 2) and a
0.9.5/0.9.7-style config (LTXVideo095DownBlock3D with spatial/temporal/spatiotemporal downsamplers, residual
upsamplers with upsample_factor 2, timestep conditioning, patch_size 2, explicit compression ratios 16/8).

0.9.1's decoder noise injection draws from the *global* torch RNG. The "091" model keeps its
per_channel_scale* at zero (their init value), so the noise has no effect and the parity does not depend on
the RNG; the "091_noise" model has non-zero scales and the reference is taken right after
torch.manual_seed(noise_seed), which the C++ side reproduces with a CPU generator seeded the same way.

Only the test oracle uses Python; the C++ side never does.
"""

import argparse
import json
import os

import torch
from diffusers import AutoencoderKLLTXVideo
from safetensors.torch import save_file

# fp32: max|C++ - diffusers| <= 1e-4 * max(1, max|reference|) (the bound; never loosened).
FP32_BOUND = 1e-4

CONFIG_090 = dict(
    in_channels=3, out_channels=3, latent_channels=8,
    block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
    decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
    upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
    encoder_causal=True, decoder_causal=False,
)
CONFIG_090_WIDE = dict(
    in_channels=3, out_channels=3, latent_channels=8,
    block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
    layers_per_block=(1, 2, 1, 1, 1), decoder_layers_per_block=(1, 1, 2, 1, 1),
    spatio_temporal_scaling=(True, True, True, False), decoder_spatio_temporal_scaling=(True, True, True, False),
    patch_size=2, patch_size_t=1, resnet_norm_eps=1e-5,
)
CONFIG_091 = dict(
    in_channels=3, out_channels=3, latent_channels=8,
    block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(16, 32, 64),
    layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, True, False), decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(True, True, True, False), upsample_residual=(True, True, True), upsample_factor=(2, 2, 2),
    timestep_conditioning=True, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
)
CONFIG_095 = dict(
    in_channels=3, out_channels=3, latent_channels=8,
    block_out_channels=(8, 16, 32, 64, 128),
    down_block_types=("LTXVideo095DownBlock3D",) * 4,
    decoder_block_out_channels=(16, 32, 64),
    layers_per_block=(1, 2, 1, 1, 1), decoder_layers_per_block=(1, 1, 2, 1),
    spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False),
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
    patch_size=2, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    spatial_compression_ratio=16, temporal_compression_ratio=8,
)


def build(config, seed, noise_scale=0.0):
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(**config).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm3" in name:  # LayerNorm starts at (1, 0): perturb so the test sees it applied
                p.add_(0.2 * torch.randn_like(p))
            elif "per_channel_scale" in name:
                p.copy_(noise_scale * torch.randn_like(p))
            elif name.endswith("timestep_scale_multiplier"):
                p.fill_(950.0)
        vae.latents_mean.copy_(0.1 * torch.randn_like(vae.latents_mean))
        vae.latents_std.copy_(1.0 + 0.2 * torch.rand_like(vae.latents_std))
    return vae


TILING_DEFAULTS = dict(
    use_tiling=False, use_slicing=False, use_framewise_encoding=False, use_framewise_decoding=False,
    tile_sample_min_height=512, tile_sample_min_width=512, tile_sample_min_num_frames=16,
    tile_sample_stride_height=448, tile_sample_stride_width=448, tile_sample_stride_num_frames=8,
)


def set_tiling(vae, tiling):
    for key, value in dict(TILING_DEFAULTS, **tiling).items():
        setattr(vae, key, value)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "vae")
    os.makedirs(root, exist_ok=True)
    torch.set_grad_enabled(False)
    cases = []
    models = {}

    def model(name, config, seed, noise_scale=0.0):
        vae = build(config, seed, noise_scale)
        vae.save_pretrained(os.path.join(root, name))
        models[name] = vae
        return vae

    def run_case(name, model_name, op, inputs, tiling=None, noise_seed=None, sample_seed=None, reference=None):
        vae = models[model_name]
        tiling = dict(tiling or {})
        set_tiling(vae, tiling)
        case_dir = os.path.join(root, name)
        os.makedirs(case_dir, exist_ok=True)
        save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case_dir, "inputs.safetensors"))
        if reference is None:
            if op == "encode":
                dist = vae.encode(inputs["sample"]).latent_dist
                reference = dict(mean=dist.mean, logvar=dist.logvar)
                if sample_seed is not None:
                    reference["posterior_sample"] = dist.sample(generator=torch.Generator().manual_seed(sample_seed))
            else:
                if noise_seed is not None:
                    torch.manual_seed(noise_seed)
                reference = dict(sample=vae.decode(inputs["latents"], inputs.get("temb")).sample)
        save_file({k: v.float().contiguous() for k, v in reference.items()}, os.path.join(case_dir, "reference.safetensors"))
        set_tiling(vae, {})
        cases.append(dict(name=name, model=model_name, op=op, tiling=dict(TILING_DEFAULTS, **tiling),
                          noise_seed=noise_seed, sample_seed=sample_seed, bound=FP32_BOUND,
                          inputs=os.path.join(name, "inputs.safetensors"),
                          reference=os.path.join(name, "reference.safetensors")))
        return reference

    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=g)

    tiles_32_24 = dict(use_tiling=True, tile_sample_min_height=32, tile_sample_min_width=32,
                       tile_sample_stride_height=24, tile_sample_stride_width=24)

    # 0.9.0 (diffusers' unit-test "090" config): spatial/temporal compression 4/4.
    model("090", CONFIG_090, 0)
    run_case("090_encode", "090", "encode", dict(sample=randn(2, 3, 9, 16, 16)), sample_seed=42)
    run_case("090_decode", "090", "decode", dict(latents=randn(2, 8, 3, 4, 4)))
    run_case("090_encode_tiled", "090", "encode", dict(sample=randn(1, 3, 9, 64, 96)), tiling=tiles_32_24)
    run_case("090_decode_tiled", "090", "decode", dict(latents=randn(1, 8, 3, 16, 24)), tiling=tiles_32_24)
    framewise = dict(tiles_32_24, use_framewise_decoding=True, tile_sample_min_num_frames=8,
                     tile_sample_stride_num_frames=4)
    # use_framewise_decoding also switches diffusers' encode to temporal tiles (a diffusers 0.42.1 quirk).
    run_case("090_encode_framewise", "090", "encode", dict(sample=randn(1, 3, 17, 48, 48)), tiling=framewise)
    run_case("090_decode_framewise", "090", "decode", dict(latents=randn(1, 8, 5, 12, 12)), tiling=framewise)
    run_case("090_encode_sliced", "090", "encode", dict(sample=randn(2, 3, 9, 32, 32)),
             tiling=dict(tiles_32_24, use_slicing=True, tile_sample_min_height=24, tile_sample_stride_height=16))
    run_case("090_decode_sliced", "090", "decode", dict(latents=randn(2, 8, 3, 8, 8)), tiling=dict(use_slicing=True))

    # 0.9.0 with width changes: conv_out / conv_in resnets, patch_size 2 (compression 16/8).
    model("090_wide", CONFIG_090_WIDE, 1)
    run_case("090_wide_encode", "090_wide", "encode", dict(sample=randn(2, 3, 17, 32, 48)), sample_seed=7)
    run_case("090_wide_decode", "090_wide", "decode", dict(latents=randn(1, 8, 3, 2, 3)))

    # 0.9.1 (diffusers' unit-test "091" config): timestep conditioning, residual upsamplers; per_channel_scale* zero.
    model("091", CONFIG_091, 2)
    run_case("091_encode", "091", "encode", dict(sample=randn(2, 3, 9, 16, 16)))
    temb2 = torch.tensor([0.05, 0.2])
    run_case("091_decode", "091", "decode", dict(latents=randn(2, 8, 2, 2, 2), temb=temb2))
    run_case("091_decode_tiled", "091", "decode", dict(latents=randn(1, 8, 2, 8, 12), temb=torch.tensor([0.05])),
             tiling=tiles_32_24)
    # Slicing with temb: diffusers 0.42.1 zips (z.split(1), temb.split(1)) wrongly and fails, so the C++
    # sliced decode is compared with diffusers' unsliced decode (they must be equal).
    lat = randn(2, 8, 2, 2, 2)
    ref = run_case("091_decode_unsliced", "091", "decode", dict(latents=lat, temb=temb2))
    run_case("091_decode_sliced", "091", "decode", dict(latents=lat, temb=temb2), tiling=dict(use_slicing=True),
             reference=ref)
    # 0.9.1 with its noise injection active: the global RNG stream after torch.manual_seed(noise_seed).
    model("091_noise", CONFIG_091, 3, noise_scale=0.5)
    run_case("091_noise_decode", "091_noise", "decode", dict(latents=randn(2, 8, 2, 2, 3), temb=temb2),
             noise_seed=1234)

    # 0.9.5 / 0.9.7 style.
    model("095", CONFIG_095, 4)
    run_case("095_encode", "095", "encode", dict(sample=randn(2, 3, 17, 32, 32)), sample_seed=3)
    run_case("095_decode", "095", "decode", dict(latents=randn(2, 8, 3, 2, 2), temb=temb2))
    tiles_32_16 = dict(use_tiling=True, tile_sample_min_height=32, tile_sample_min_width=32,
                       tile_sample_stride_height=16, tile_sample_stride_width=16)
    run_case("095_encode_tiled", "095", "encode", dict(sample=randn(1, 3, 9, 64, 64)), tiling=tiles_32_16)
    run_case("095_decode_tiled", "095", "decode", dict(latents=randn(1, 8, 2, 4, 6), temb=torch.tensor([0.05])),
             tiling=tiles_32_16)
    # Default frame tiles (16 / 8 pixel frames): 25 frames leave an empty last encode tile.
    run_case("095_encode_framewise", "095", "encode", dict(sample=randn(1, 3, 25, 16, 16)),
             tiling=dict(use_framewise_decoding=True))
    run_case("095_decode_framewise", "095", "decode", dict(latents=randn(1, 8, 4, 2, 2), temb=torch.tensor([0.05])),
             tiling=dict(use_framewise_decoding=True))

    with open(os.path.join(root, "cases.json"), "w") as fh:
        json.dump(cases, fh, indent=1)


if __name__ == "__main__":
    main()
