#pragma once
// Small variants of the released shapes (ltxmps_pipeline/released_configs.hpp) for the benchmarks' CPU smoke runs
// (their Python counterparts use the same values: vae_bench.py's CONFIG_SMOKE).

#include "ltxmps_pipeline/released_configs.hpp"

namespace ltxmps::bench {

/// ltx_097_vae_config() with narrow blocks and one resnet per block (vae_bench.py's CONFIG_SMOKE widths) for CPU
/// smoke runs; `latent_channels` stays a parameter because the two-pass smoke keeps the released 128.
inline ltxmps::pipeline::VaeConfig vae_097_smoke_config(int64_t latent_channels) {
  auto config = ltxmps::pipeline::ltx_097_vae_config();
  config.latent_channels = latent_channels;
  config.block_out_channels = {8, 16, 32, 64, 128};
  config.decoder_block_out_channels = {16, 32, 64};
  config.layers_per_block = {1, 1, 1, 1, 1};
  config.decoder_layers_per_block = {1, 1, 1, 1};
  return config;
}

}  // namespace ltxmps::bench
