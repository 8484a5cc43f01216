#!/usr/bin/env python3
"""One AutoencoderKLLTXVideo decode (or, with --encode, one encode) in diffusers: the baseline for
benchmarks/vae_bench.cpp.

Default: the LTX-Video 0.9.7 VAE config (= 0.9.5: LTXVideo095DownBlock3D, decoder (256, 512, 1024) with 5
resnets per block, residual upsamplers with factor 2, timestep conditioning, compression 32 x 8) with random
weights in float32 (the recommended VAE precision), decoding the latent of a 768x512x121 video:
[1, 128, 16, 16, 24] with decode timestep 0.05 -> [1, 3, 121, 512, 768].

--tiling enables diffusers' spatial tiles (enable_tiling() defaults: 512 px tiles, stride 448),
--framewise the temporal tiles (use_framewise_decoding: 16 frames, stride 8). --config 090 is the 0.9.0 VAE
(AutoencoderKLLTXVideo()'s defaults, pipeline_bench.py's VAE for t2v, i2v and removal). --config small keeps the
0.9.7 structure with narrow blocks (CONFIG_SMOKE), for CPU runs at shapes where the tiles matter. --encode times the
encoder instead: the video whose latent that is (768x512x121 by default), uniform in [-1, 1], to its posterior
(encode(video).latent_dist). Prints one JSON line: median / min milliseconds over --iters timed runs after
--warmup runs and the peak CUDA memory.

    python3 benchmarks/vae_bench.py [--tiling] [--framewise] [--dtype fp32|bf16|fp16]   # full size, CUDA
    python3 benchmarks/vae_bench.py --smoke                                             # tiny config, any device
    python3 benchmarks/vae_bench.py --config small --device cpu --latent-frames 5 --tiling --framewise
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import AutoencoderKLLTXVideo

CONFIG_097 = dict(
    in_channels=3, out_channels=3, latent_channels=128,
    block_out_channels=(128, 256, 512, 1024, 2048), down_block_types=("LTXVideo095DownBlock3D",) * 4,
    decoder_block_out_channels=(256, 512, 1024), layers_per_block=(4, 6, 6, 2, 2),
    decoder_layers_per_block=(5, 5, 5, 5), spatio_temporal_scaling=(True, True, True, True),
    decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False, False, False, False),
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"), upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2), timestep_conditioning=True, patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6,
    scaling_factor=1.0, encoder_causal=True, decoder_causal=False, spatial_compression_ratio=32,
    temporal_compression_ratio=8,
)
# The same structure with 8/16/32 decoder channels, one resnet per block and 8 latent channels.
CONFIG_SMOKE = dict(
    CONFIG_097, latent_channels=8, block_out_channels=(8, 16, 32, 64, 128), decoder_block_out_channels=(16, 32, 64),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent-frames", type=int, default=16)
    p.add_argument("--latent-height", type=int, default=16)
    p.add_argument("--latent-width", type=int, default=24)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="fp32")
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", choices=["097", "090", "small"], default="097")
    p.add_argument("--tiling", action="store_true")
    p.add_argument("--framewise", action="store_true")
    p.add_argument("--encode", action="store_true", help="time the encoder on the latent's video instead")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--channels-last", action="store_true",
                   help="the weights and the input in torch.channels_last_3d (module.to(memory_format=...))")
    p.add_argument("--smoke", action="store_true", help="tiny config on --device (cpu without CUDA) for a quick check")
    args = p.parse_args()
    config = {"097": CONFIG_097, "090": {}, "small": CONFIG_SMOKE}[args.config]
    if args.smoke:
        config = CONFIG_SMOKE
        args.latent_frames, args.latent_height, args.latent_width, args.warmup, args.iters = 3, 2, 3, 1, 2
        if args.device == "cuda" and not torch.cuda.is_available():
            args.device = "cpu"

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.device(args.device)
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(**config).to(device=device, dtype=dtype).eval()
    layout = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    vae.to(memory_format=layout)
    if args.tiling:
        vae.enable_tiling()
    vae.use_framewise_decoding = args.framewise
    latents = torch.randn(1, vae.config.latent_channels, args.latent_frames, args.latent_height, args.latent_width,
                          device=device, dtype=dtype).contiguous(memory_format=layout)
    temb = torch.tensor([0.05], device=device, dtype=dtype)
    if args.encode:
        frames = (args.latent_frames - 1) * vae.temporal_compression_ratio + 1
        video = torch.rand(1, vae.config.in_channels, frames, args.latent_height * vae.spatial_compression_ratio,
                           args.latent_width * vae.spatial_compression_ratio, device=device, dtype=dtype) * 2 - 1
        video = video.contiguous(memory_format=layout)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            sync()
            t0 = time.perf_counter()
            out = vae.encode(video).latent_dist.mean if args.encode else vae.decode(latents, temb).sample
            sync()
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    print(json.dumps(dict(
        impl="diffusers", op="encode" if args.encode else "decode", device=str(device),
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        dtype=args.dtype, latent=list(latents.shape), output=list(out.shape),
        config="small" if config is CONFIG_SMOKE else args.config, tiling=args.tiling,
        framewise=args.framewise, channels_last=args.channels_last,
        median_ms=round(statistics.median(times), 3), min_ms=round(min(times), 3),
        iters=args.iters, peak_cuda_mib=None if peak is None else round(peak / 2**20, 1), torch=torch.__version__,
    )))


if __name__ == "__main__":
    main()
