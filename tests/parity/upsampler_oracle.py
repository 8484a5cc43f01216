#!/usr/bin/env python3
"""Oracle for the C++ LTXLatentUpsamplerModel and LTXLatentUpsamplePipeline (diffusers 0.42.1).

Writes under OUT/upsampler/:
  <model>/config.json + diffusion_pytorch_model.safetensors    small random upsamplers (save_pretrained), one per
                                                               config variant diffusers supports
  ltxv-spatial-upscaler-tiny.safetensors     the "spatial3d" weights as a Lightricks single file: the same keys, the
                                             constructor arguments as JSON in the metadata entry "config"
  ltxv-spatial-upscaler-nometa.safetensors   the same weights without metadata (config read off the shapes)
  vae095/, vae090/                           small random AutoencoderKLLTXVideo folders (latent_channels 8)
  <case>/inputs.safetensors, <case>/reference.safetensors
  cases.json                                 per case: models, op, options, seed, error bound

Cases: the upsampler's forward for every variant (spatial / temporal / both with dims 3, spatial with dims 2), the
single files, and LTXLatentUpsamplePipeline from latents or from a video, to latents (output_type="latent") or
to frames (output_type="pt"), with and without AdaIN and tone mapping.

Only the test oracle uses Python; the C++ side never does.
"""

import argparse
import json
import os

import torch
from diffusers import AutoencoderKLLTXVideo, LTXLatentUpsamplePipeline
from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
from safetensors.torch import save_file

# fp32: max|C++ - diffusers| <= 1e-4 * max(1, max|reference|), as every parity suite.
FP32_BOUND = 1e-4

LATENT_CHANNELS = 8

UPSAMPLERS = {
    "spatial3d": dict(in_channels=LATENT_CHANNELS, mid_channels=32, num_blocks_per_stage=2, dims=3,
                      spatial_upsample=True, temporal_upsample=False),
    "temporal3d": dict(in_channels=LATENT_CHANNELS, mid_channels=32, num_blocks_per_stage=1, dims=3,
                       spatial_upsample=False, temporal_upsample=True),
    "both3d": dict(in_channels=LATENT_CHANNELS, mid_channels=32, num_blocks_per_stage=1, dims=3,
                   spatial_upsample=True, temporal_upsample=True),
    "spatial2d": dict(in_channels=LATENT_CHANNELS, mid_channels=64, num_blocks_per_stage=2, dims=2,
                      spatial_upsample=True, temporal_upsample=False),
    "noblocks": dict(in_channels=LATENT_CHANNELS, mid_channels=32, num_blocks_per_stage=0, dims=3,
                     spatial_upsample=True, temporal_upsample=False),
    # An upsampler for another VAE (4 latent channels): the C++ pipeline must refuse it with the 8-channel VAEs.
    "channels4": dict(in_channels=4, mid_channels=32, num_blocks_per_stage=1, dims=3,
                      spatial_upsample=True, temporal_upsample=False),
}

# The 0.9.5-style tiny VAE of vae_oracle.py (timestep conditioning: the decode mixes noise) and a 0.9.0-style one
# (no timestep conditioning).
VAE_095 = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
    block_out_channels=(8, 16, 32, 64, 128), down_block_types=("LTXVideo095DownBlock3D",) * 4,
    decoder_block_out_channels=(16, 32, 64), layers_per_block=(1, 2, 1, 1, 1), decoder_layers_per_block=(1, 1, 2, 1),
    spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False),
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
    patch_size=2, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    spatial_compression_ratio=16, temporal_compression_ratio=8,
)
VAE_090 = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
    block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
    decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
    upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
)


def build_upsampler(config, seed):
    torch.manual_seed(seed)
    model = LTXLatentUpsamplerModel(**config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # GroupNorm starts at (1, 0): perturb so the test sees the affine applied
                p.add_(0.2 * torch.randn_like(p))
    return model


def build_vae(config, seed):
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(**config).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("timestep_scale_multiplier"):
                p.fill_(950.0)
        vae.latents_mean.copy_(0.1 * torch.randn_like(vae.latents_mean))
        vae.latents_std.copy_(1.0 + 0.2 * torch.rand_like(vae.latents_std))
    return vae


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "upsampler")
    os.makedirs(root, exist_ok=True)
    torch.set_grad_enabled(False)
    cases = []

    upsamplers = {}
    for i, (name, config) in enumerate(UPSAMPLERS.items()):
        upsamplers[name] = build_upsampler(config, 100 + i)
        upsamplers[name].save_pretrained(os.path.join(root, name))
    vaes = {"vae095": build_vae(VAE_095, 7), "vae090": build_vae(VAE_090, 8)}
    for name, vae in vaes.items():
        vae.save_pretrained(os.path.join(root, name))

    # Lightricks single files: the state dict under the same names, with and without the metadata config.
    state = {k: v.contiguous() for k, v in upsamplers["spatial3d"].state_dict().items()}
    lightricks_config = dict(_class_name="LatentUpsampler", **UPSAMPLERS["spatial3d"], spatial_scale=2.0,
                             rational_resampler=False)
    save_file(state, os.path.join(root, "ltxv-spatial-upscaler-tiny.safetensors"),
              metadata={"config": json.dumps(lightricks_config)})
    save_file(state, os.path.join(root, "ltxv-spatial-upscaler-nometa.safetensors"))

    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=g)

    def write_case(name, inputs, reference, **fields):
        case_dir = os.path.join(root, name)
        os.makedirs(case_dir, exist_ok=True)
        save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case_dir, "inputs.safetensors"))
        save_file({k: v.float().contiguous() for k, v in reference.items()},
                  os.path.join(case_dir, "reference.safetensors"))
        cases.append(dict(name=name, bound=FP32_BOUND, inputs=os.path.join(name, "inputs.safetensors"),
                          reference=os.path.join(name, "reference.safetensors"), **fields))

    # The model's forward on un-normalized latents, for every variant; 3 latent frames so the temporal variants
    # show the dropped first frame (2·3 - 1 = 5 frames out).
    for name in ("spatial3d", "temporal3d", "both3d", "spatial2d", "noblocks"):
        latents = randn(2, LATENT_CHANNELS, 3, 4, 6)
        write_case(f"forward_{name}", dict(latents=latents), dict(output=upsamplers[name](latents)),
                   op="forward", upsampler=name)
    latents = randn(1, LATENT_CHANNELS, 2, 5, 3)
    for file in ("ltxv-spatial-upscaler-tiny.safetensors", "ltxv-spatial-upscaler-nometa.safetensors"):
        stem = file.split("-")[-1].split(".")[0]
        write_case(f"forward_file_{stem}", dict(latents=latents), dict(output=upsamplers["spatial3d"](latents)),
                   op="forward", upsampler=file)

    # LTXLatentUpsamplePipeline. Latent inputs are normalized (as the denoising loop leaves them); the latent
    # output is normalized again by diffusers.
    def pipeline_case(name, upsampler, vae, options, seed, video=None, latents=None, output="latent",
                      decode_timestep=0.0, decode_noise_scale=None):
        pipe = LTXLatentUpsamplePipeline(vae=vaes[vae], latent_upsampler=upsamplers[upsampler])
        pipe.set_progress_bar_config(disable=True)
        kwargs = dict(adain_factor=options["adain_factor"],
                      tone_map_compression_ratio=options["tone_map_compression_ratio"],
                      generator=torch.Generator().manual_seed(seed), output_type=output,
                      decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale)
        if video is not None:
            kwargs.update(video=video, height=video.shape[2], width=video.shape[3])
            inputs = dict(video=video)
        else:
            kwargs.update(latents=latents)
            inputs = dict(latents=latents)
        frames = pipe(**kwargs).frames
        reference = dict(latents=frames) if output == "latent" else dict(frames=frames)
        write_case(name, inputs, reference, op="pipeline", upsampler=upsampler, vae=vae, options=options, seed=seed,
                   output=output, decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale)

    off = dict(adain_factor=0.0, tone_map_compression_ratio=0.0)
    normalized = randn(2, LATENT_CHANNELS, 2, 3, 4)
    pipeline_case("pipeline_latents", "spatial3d", "vae095", off, 1, latents=normalized)
    pipeline_case("pipeline_adain", "spatial3d", "vae095", dict(off, adain_factor=0.7), 1, latents=normalized)
    pipeline_case("pipeline_adain_full", "spatial2d", "vae095", dict(off, adain_factor=1.0), 1, latents=normalized)
    pipeline_case("pipeline_tone_map", "spatial3d", "vae095", dict(off, tone_map_compression_ratio=0.6), 1,
                  latents=3.0 * normalized)
    pipeline_case("pipeline_adain_tone_map", "both3d", "vae095",
                  dict(adain_factor=0.5, tone_map_compression_ratio=1.0), 1, latents=normalized)
    # Frames out: a timestep-conditioned decode (the decode noise comes from the generator) and a plain one.
    pipeline_case("pipeline_frames_095", "spatial3d", "vae095", dict(off, adain_factor=0.3), 5,
                  latents=normalized[:1], output="pt", decode_timestep=0.05, decode_noise_scale=0.025)
    pipeline_case("pipeline_frames_090", "temporal3d", "vae090", off, 6, latents=normalized[:1, :, :, :, :3],
                  output="pt")
    # A video: 10 frames are truncated to 9 (k·8 + 1), encoded (a posterior sample from the generator), upsampled;
    # once to latents, once to frames (then the decode noise is the generator's second draw).
    video = torch.rand(10, 3, 32, 48, generator=g)
    pipeline_case("pipeline_video_latents", "spatial3d", "vae095", dict(off, tone_map_compression_ratio=0.4), 11,
                  video=video)
    pipeline_case("pipeline_video_frames", "spatial3d", "vae095", off, 12, video=video, output="pt",
                  decode_timestep=0.05)

    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main()
