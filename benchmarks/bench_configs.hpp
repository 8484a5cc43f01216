#pragma once
// Released model shapes the C++ benchmarks build with random weights (their Python counterparts use the same
// values: vae_bench.py's CONFIG_097).

#include "ltxmps_pipeline/vae.hpp"

namespace ltxmps::bench {

/// The 0.9.7 (= 0.9.5) VAE config of diffusers' convert_ltx_to_diffusers.py: LTXVideo095DownBlock3D encoder,
/// decoder 256/512/1024 with 5 resnets per block, residual upsamplers, timestep conditioning, compression 32 x 8,
/// 128 latent channels.
inline ltxmps::pipeline::VaeConfig vae_097_config() {
  ltxmps::pipeline::VaeConfig config;
  config.block_out_channels = {128, 256, 512, 1024, 2048};
  config.down_block_types.assign(4, "LTXVideo095DownBlock3D");
  config.decoder_block_out_channels = {256, 512, 1024};
  config.layers_per_block = {4, 6, 6, 2, 2};
  config.decoder_layers_per_block = {5, 5, 5, 5};
  config.spatio_temporal_scaling = {true, true, true, true};
  config.decoder_spatio_temporal_scaling = {true, true, true};
  config.decoder_inject_noise = {false, false, false, false};
  config.downsample_type = {"spatial", "temporal", "spatiotemporal", "spatiotemporal"};
  config.upsample_residual = {true, true, true};
  config.upsample_factor = {2, 2, 2};
  config.timestep_conditioning = true;
  config.spatial_compression_ratio = 32;
  config.temporal_compression_ratio = 8;
  return config;
}

/// vae_097_config() with narrow blocks and one resnet per block (vae_bench.py's CONFIG_SMOKE widths) for CPU smoke
/// runs; `latent_channels` stays a parameter because the two-pass smoke keeps the released 128.
inline ltxmps::pipeline::VaeConfig vae_097_smoke_config(int64_t latent_channels) {
  auto config = vae_097_config();
  config.latent_channels = latent_channels;
  config.block_out_channels = {8, 16, 32, 64, 128};
  config.decoder_block_out_channels = {16, 32, 64};
  config.layers_per_block = {1, 1, 1, 1, 1};
  config.decoder_layers_per_block = {1, 1, 1, 1};
  return config;
}

}  // namespace ltxmps::bench
