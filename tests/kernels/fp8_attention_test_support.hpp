#pragma once
// What the CPU and GPU FP8 attention suites share: exact attention in float64, the error bound, and a small
// transformer whose self-attention FP8 attention replaces.

#include "ltxmps_pipeline/transformer.hpp"

#include <ltxmps/ltxmps.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace ltxmps_test {

// Note [FP8 attention error bound]
// Five roundings to e4m3 (q, k, v, the probabilities, the output) each move a value by at most 2^-4 of itself,
// uniformly: 2^-4/√3 in the mean square. With unit-variance scores (q and k normalized as the model's RMSNorm
// leaves them) each acts on a quantity of v's size at most, so the output's error stays below √5 · 2^-4/√3 ≈ 0.081
// of rms(v) in the mean square; sharp attention (large scores) can do worse, and is not what this bounds.
inline constexpr double kFp8AttentionRmsBound = 0.0806;  // √5 · 2^-4 / √3

/// softmax(q_h k_hᵀ · scale) v_h per head in float64, heads merged back: [B, S, D].
inline at::Tensor exact_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads,
                                  double scale) {
  const auto split = [heads](const at::Tensor& x) {
    return x.to(at::kDouble).unflatten(2, {heads, -1}).permute({0, 2, 1, 3});
  };
  const auto p = at::softmax(at::matmul(split(q), split(k).transpose(-1, -2)) * scale, -1);
  return at::matmul(p, split(v)).permute({0, 2, 1, 3}).flatten(2, 3);
}

inline double rms(const at::Tensor& t) {
  return t.to(at::kDouble).pow(2).mean().sqrt().item<double>();
}

/// Random weights of unit-scale rows (norm weights near 1, biases near 0), the same for a name on every run.
inline at::Tensor fp8_attention_test_weight(const std::string& name, const std::vector<int64_t>& shape) {
  auto g = ltxmps::make_cpu_generator(std::hash<std::string>{}(name));
  const bool bias = name.find("bias") != std::string::npos;
  if (shape.size() == 1) return ltxmps::randn(shape, g).mul_(0.05).add_(bias ? 0.0 : 1.0);
  return ltxmps::randn(shape, g).mul_(1.0 / std::sqrt(static_cast<double>(shape[1])));
}

/// The relative rms change of a two-block transformer's output [heads × head_dim wide, frames × height × width
/// tokens] when its self-attention runs through FP8 attention, on `runtime`'s device and dtype.
inline double fp8_attention_forward_error(ltxmps::pipeline::TransformerRuntime runtime, int64_t heads,
                                          int64_t head_dim, int64_t frames, int64_t height, int64_t width) {
  using namespace ltxmps::pipeline;
  TransformerConfig config;
  config.in_channels = config.out_channels = 8;
  config.num_attention_heads = heads;
  config.attention_head_dim = head_dim;
  config.cross_attention_dim = heads * head_dim;
  config.num_layers = 2;
  config.caption_channels = 12;
  auto g = ltxmps::make_cpu_generator(11);
  TransformerInputs in;
  in.hidden_states = ltxmps::randn({2, frames * height * width, 8}, g);
  in.encoder_hidden_states = ltxmps::randn({2, 5, 12}, g);
  in.timestep = at::tensor({400.0f, 30.0f});
  in.num_frames = frames;
  in.height = height;
  in.width = width;
  runtime.fp8_attention = false;
  auto model = TransformerModel::from_weights(config, runtime, fp8_attention_test_weight);
  const auto plain = model.forward(in).to(at::kCPU, at::kDouble);
  model.runtime.fp8_attention = true;
  const auto fp8 = model.forward(in).to(at::kCPU, at::kDouble);
  return rms(fp8 - plain) / rms(plain);
}

}  // namespace ltxmps_test
