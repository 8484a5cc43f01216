#pragma once
// Small random LTX-Video transformers shared by the CPU and GPU suites (weight streaming, FP8, effects mask): the
// config of a given size, weights that depend only on each tensor's name, and random inputs of the config's sizes.
// Each suite keeps its own sizes and seeds: its bounds and expectations were derived for those.
#include "ltxmps_pipeline/transformer.hpp"

#include "ltxmps/random.hpp"

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ltxmps_test {

/// `layers` blocks of `heads` x `head_dim`, `channels` packed-token features in and out, captions of
/// `caption_channels`; cross-attention as wide as self-attention, as in the released models.
inline ltxmps::pipeline::TransformerConfig tiny_transformer_config(int64_t channels, int64_t heads, int64_t head_dim,
                                                                   int64_t layers, int64_t caption_channels) {
  ltxmps::pipeline::TransformerConfig c;
  c.in_channels = channels;
  c.out_channels = channels;
  c.num_attention_heads = heads;
  c.attention_head_dim = head_dim;
  c.cross_attention_dim = c.inner_dim();
  c.num_layers = layers;
  c.caption_channels = caption_channels;
  return c;
}

/// Deterministic weights by name (a generator seeded with the name's hash, so that a tensor does not depend on the
/// order the model asks for them), scaled by 1/sqrt(fan_in); 1-D tensors (norm weights, biases) near 1 and near 0.
inline at::Tensor random_weight(const std::string& name, const std::vector<int64_t>& shape) {
  auto g = ltxmps::make_cpu_generator(std::hash<std::string>{}(name));
  auto t = ltxmps::randn(shape, g);
  if (shape.size() == 1) {
    const bool bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
    return bias ? t.mul_(0.05) : t.mul_(0.05).add_(1.0);
  }
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  return t.mul_(1.0 / std::sqrt(static_cast<double>(fan_in)));
}

/// The model of `config` with random_weight(), built on `runtime`'s device, dtype and linear mode.
inline ltxmps::pipeline::TransformerModel tiny_transformer(const ltxmps::pipeline::TransformerConfig& config,
                                                           const ltxmps::pipeline::TransformerRuntime& runtime = {}) {
  return ltxmps::pipeline::TransformerModel::from_weights(config, runtime, random_weight);
}

/// Inputs of `config`'s sizes drawn from a generator seeded with `seed`: `batch` clips on the latent grid
/// `grid` = (frames, height, width), `text_len` caption tokens of which the last `masked` are masked out. The
/// caller sets the timestep (and any RoPE scale) its test is about.
inline ltxmps::pipeline::TransformerInputs tiny_transformer_inputs(const ltxmps::pipeline::TransformerConfig& config,
                                                                   uint64_t seed, int64_t batch,
                                                                   const std::array<int64_t, 3>& grid,
                                                                   int64_t text_len, int64_t masked) {
  auto g = ltxmps::make_cpu_generator(seed);
  ltxmps::pipeline::TransformerInputs in;
  in.hidden_states = ltxmps::randn({batch, grid[0] * grid[1] * grid[2], config.in_channels}, g);
  in.encoder_hidden_states = ltxmps::randn({batch, text_len, config.caption_channels}, g);
  in.encoder_attention_mask = at::ones({batch, text_len});
  in.encoder_attention_mask->narrow(1, text_len - masked, masked).zero_();
  in.num_frames = grid[0];
  in.height = grid[1];
  in.width = grid[2];
  return in;
}

}  // namespace ltxmps_test
