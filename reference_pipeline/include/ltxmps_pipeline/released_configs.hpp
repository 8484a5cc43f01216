#pragma once
/// @file released_configs.hpp
/// @brief The configs of released LTX-Video components, for planning and benchmarking without their files:
///        `plan --simulate` plans the weights for them, and the tests and benchmarks build random models with them.
///        A model folder's own config.json always wins where there is one.

#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

namespace ltxmps::pipeline {

/// @brief The LTX-Video 0.9.7 / 0.9.8 13B transformer: 48 blocks of 32 heads × 128, caption 4096, in/out 128.
inline TransformerConfig ltx_13b_transformer_config() {
  TransformerConfig t;
  t.num_layers = 48;
  t.attention_head_dim = 128;
  t.cross_attention_dim = 4096;
  return t;
}

/// @brief The 0.9.5 / 0.9.7 VAE of diffusers' convert_ltx_to_diffusers.py: LTXVideo095DownBlock3D encoder, decoder
///        256/512/1024 with 5 resnets per block, residual upsamplers, timestep conditioning, compression 32 × 8,
///        128 latent channels.
inline VaeConfig ltx_097_vae_config() {
  VaeConfig v;
  v.block_out_channels = {128, 256, 512, 1024, 2048};
  v.down_block_types.assign(4, "LTXVideo095DownBlock3D");
  v.decoder_block_out_channels = {256, 512, 1024};
  v.layers_per_block = {4, 6, 6, 2, 2};
  v.decoder_layers_per_block = {5, 5, 5, 5};
  v.spatio_temporal_scaling = {true, true, true, true};
  v.decoder_spatio_temporal_scaling = {true, true, true};
  v.decoder_inject_noise = {false, false, false, false};
  v.downsample_type = {"spatial", "temporal", "spatiotemporal", "spatiotemporal"};
  v.upsample_residual = {true, true, true};
  v.upsample_factor = {2, 2, 2};
  v.timestep_conditioning = true;
  v.spatial_compression_ratio = 32;
  v.temporal_compression_ratio = 8;
  return v;
}

/// @brief The encoder of google/t5-v1_1-xxl, the text encoder of every LTX-Video release.
inline T5Config t5_xxl_config() {
  T5Config c;
  c.vocab_size = 32128;
  c.d_model = 4096;
  c.d_kv = 64;
  c.num_heads = 64;
  c.d_ff = 10240;
  c.num_layers = 24;
  c.feed_forward_proj = "gated-gelu";
  c.dense_act_fn = "gelu_new";
  c.is_gated_act = true;
  return c;
}

}  // namespace ltxmps::pipeline
