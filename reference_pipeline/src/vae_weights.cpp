// AutoencoderKLLTXVideo's weights: the module tree of diffusers 0.42.1 models/autoencoders/autoencoder_kl_ltx.py
// (LTXVideoEncoder3d / LTXVideoDecoder3d __init__) bound to checkpoint tensors, and the loading of a vae/ folder.
// The forward passes are in vae.cpp.

#include "ltxmps_pipeline/vae.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"

#include "ltxmps/error.hpp"

#include <array>
#include <string>
#include <utility>
#include <vector>

namespace ltxmps::pipeline {

// ---------------------------------------------------------------------------------------------------
// Weights

namespace {

struct WeightBuilder {
  const VaeWeightSource& weights;
  at::TensorOptions options;
  double eps;  // resnet_norm_eps
  bool channels_last;

  // The checkpoint tensor in `options`, converted and laid out in `format` by one copy (or none).
  at::Tensor tensor(const std::string& name, std::vector<int64_t> shape,
                    at::MemoryFormat format = at::MemoryFormat::Preserve) const {
    auto t = weights(name, shape);
    LTXMPS_CHECK(t.defined() && t.sizes() == at::IntArrayRef(shape), "VAE weight '", name, "' has shape ",
                 t.defined() ? t.sizes() : at::IntArrayRef{}, ", expected ", at::IntArrayRef(shape));
    return t.to(options, /*non_blocking=*/false, /*copy=*/false, format);
  }
  VaeConv3dWeights conv(const std::string& name, int64_t in, int64_t out, int64_t k, bool causal,
                        std::array<int64_t, 3> stride = {1, 1, 1}) const {
    VaeConv3dWeights c;
    c.weight = tensor(name + ".conv.weight", {out, in, k, k, k},
                      channels_last ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Preserve);
    c.bias = tensor(name + ".conv.bias", {out});
    c.stride = stride;
    c.is_causal = causal;
    return c;
  }
  LinearWeights linear(const std::string& name, int64_t in, int64_t out) const {
    return {tensor(name + ".weight", {out, in}), tensor(name + ".bias", {out})};
  }
  VaeTimeEmbedderWeights time_embedder(const std::string& name, int64_t dim) const {
    return {linear(name + ".timestep_embedder.linear_1", 256, dim), linear(name + ".timestep_embedder.linear_2", dim, dim)};
  }
  VaeResnetWeights resnet(const std::string& name, int64_t in, int64_t out, bool causal, bool noise = false,
                          bool conditioned = false) const {
    VaeResnetWeights r;
    r.conv1 = conv(name + ".conv1", in, out, 3, causal);
    r.conv2 = conv(name + ".conv2", out, out, 3, causal);
    if (in != out) {
      r.norm3_weight = tensor(name + ".norm3.weight", {in});
      r.norm3_bias = tensor(name + ".norm3.bias", {in});
      r.norm3_eps = eps;
      r.conv_shortcut = conv(name + ".conv_shortcut", in, out, 1, causal);
    }
    if (noise) {
      r.per_channel_scale1 = tensor(name + ".per_channel_scale1", {in, 1, 1});
      r.per_channel_scale2 = tensor(name + ".per_channel_scale2", {in, 1, 1});
    }
    if (conditioned) r.scale_shift_table = tensor(name + ".scale_shift_table", {4, in});
    return r;
  }
  std::vector<VaeResnetWeights> resnets(const std::string& name, int64_t count, int64_t channels, bool causal,
                                        bool noise = false, bool conditioned = false) const {
    std::vector<VaeResnetWeights> out;
    for (int64_t j = 0; j < count; ++j)
      out.push_back(resnet(name + ".resnets." + std::to_string(j), channels, channels, causal, noise, conditioned));
    return out;
  }
};

template <typename T>
T reversed_at(const std::vector<T>& v, size_t i) {
  return v[v.size() - 1 - i];
}

// The same test VaeConfig::validate makes: the last down block type decides the encoder layout.
// The downsampler of encoder block `p` (LTXVideoDownBlock3D's conv, or LTXVideo095DownBlock3D's `type`).
VaeDownsamplerWeights downsampler(const WeightBuilder& w, const std::string& p, const std::string& type, int64_t in,
                                  int64_t out, bool causal) {
  VaeDownsamplerWeights d;
  if (type == "conv") {
    d.conv = w.conv(p + ".downsamplers.0", in, in, 3, causal, {2, 2, 2});
  } else {
    d.space_to_depth = true;
    d.stride = type == "spatial" ? std::array<int64_t, 3>{1, 2, 2}
                                 : (type == "temporal" ? std::array<int64_t, 3>{2, 1, 1} : std::array<int64_t, 3>{2, 2, 2});
    const int64_t s = d.stride[0] * d.stride[1] * d.stride[2];
    d.group_size = in * s / out;
    d.conv = w.conv(p + ".downsamplers.0.conv", in, out / s, 3, causal);
  }
  return d;
}

// LTXVideoEncoder3d.__init__.
VaeEncoderWeights encoder_weights(const VaeConfig& config, const WeightBuilder& w) {
  const bool enc_causal = config.encoder_causal;
  const bool v095 = config.is_095_encoder();
  const auto& boc = config.block_out_channels;
  const size_t n_down = boc.size() - (v095 ? 1 : 0);
  VaeEncoderWeights enc;
  enc.conv_in = w.conv("encoder.conv_in", config.in_channels * config.patch_size * config.patch_size, boc[0], 3, enc_causal);
  int64_t out = boc[0];
  for (size_t i = 0; i < n_down; ++i) {
    const int64_t in = out;
    out = v095 ? boc[i + 1] : (i + 1 < n_down ? boc[i + 1] : boc[i]);
    const std::string p = "encoder.down_blocks." + std::to_string(i);
    VaeDownBlockWeights b;
    b.resnets = w.resnets(p, config.layers_per_block[i], in, enc_causal);
    const bool block_095 = config.down_block_types[i] == "LTXVideo095DownBlock3D";
    if (config.spatio_temporal_scaling[i])
      b.downsampler = downsampler(w, p, block_095 ? config.downsample_type[i] : "conv", in, out, enc_causal);
    if (!block_095 && in != out) b.conv_out = w.resnet(p + ".conv_out", in, out, enc_causal);
    enc.down_blocks.push_back(std::move(b));
  }
  enc.mid_block.resnets = w.resnets("encoder.mid_block", config.layers_per_block.back(), out, enc_causal);
  enc.conv_out = w.conv("encoder.conv_out", out, config.latent_channels + 1, 3, enc_causal);
  return enc;
}

// LTXVideoDecoder3d.__init__ (tuples reversed, as it does).
VaeDecoderWeights decoder_weights(const VaeConfig& config, const WeightBuilder& w) {
  const bool dec_causal = config.decoder_causal;
  const bool cond = config.timestep_conditioning;
  const auto& dboc = config.decoder_block_out_channels;
  const size_t nb = dboc.size();
  VaeDecoderWeights dec;
  int64_t channels = reversed_at(dboc, 0);
  dec.conv_in = w.conv("decoder.conv_in", config.latent_channels, channels, 3, dec_causal);
  if (cond) dec.mid_block.time_embedder = w.time_embedder("decoder.mid_block.time_embedder", 4 * channels);
  dec.mid_block.resnets = w.resnets("decoder.mid_block", reversed_at(config.decoder_layers_per_block, 0), channels,
                                    dec_causal, reversed_at(config.decoder_inject_noise, 0), cond);
  for (size_t i = 0; i < nb; ++i) {
    const int64_t u = reversed_at(config.upsample_factor, i);
    const int64_t in = channels / u;
    channels = reversed_at(dboc, i) / u;
    const bool noise = reversed_at(config.decoder_inject_noise, i + 1);
    const std::string p = "decoder.up_blocks." + std::to_string(i);
    VaeUpBlockWeights b;
    if (cond) b.time_embedder = w.time_embedder(p + ".time_embedder", 4 * in);
    if (in != channels) b.conv_in = w.resnet(p + ".conv_in", in, channels, dec_causal, noise, cond);
    if (reversed_at(config.decoder_spatio_temporal_scaling, i)) {
      VaeUpsamplerWeights up;
      up.residual = reversed_at(config.upsample_residual, i);
      up.upscale_factor = u;
      up.conv = w.conv(p + ".upsamplers.0.conv", channels * u, channels * 8, 3, dec_causal);
      b.upsampler = up;
    }
    b.resnets = w.resnets(p, reversed_at(config.decoder_layers_per_block, i + 1), channels, dec_causal, noise, cond);
    dec.up_blocks.push_back(std::move(b));
  }
  dec.conv_out = w.conv("decoder.conv_out", channels, config.out_channels * config.patch_size * config.patch_size, 3,
                        dec_causal);
  if (cond) {
    dec.timestep_scale_multiplier = w.tensor("decoder.timestep_scale_multiplier", {});
    dec.time_embedder = w.time_embedder("decoder.time_embedder", 2 * channels);
    dec.scale_shift_table = w.tensor("decoder.scale_shift_table", {2, channels});
  }
  return dec;
}

}  // namespace

VaeModel VaeModel::from_weights(const VaeConfig& config, const VaeRuntime& runtime, const VaeWeightSource& weights) {
  config.validate();
  const WeightBuilder w{weights, at::TensorOptions().device(runtime.device).dtype(runtime.dtype),
                        config.resnet_norm_eps, runtime.channels_last};
  VaeModel m;
  m.config = config;
  m.runtime = runtime;
  m.encoder = encoder_weights(config, w);
  m.decoder = decoder_weights(config, w);
  m.latents_mean = w.tensor("latents_mean", {config.latent_channels});
  m.latents_std = w.tensor("latents_std", {config.latent_channels});
  return m;
}

// ---------------------------------------------------------------------------------------------------
// Loading

VaeModel load_vae(const std::filesystem::path& model_dir, const VaeRuntime& runtime, std::optional<std::string> variant,
                  std::optional<VaeConfig> parsed) {
  LTXMPS_CHECK(std::filesystem::is_directory(model_dir), "VAE folder ", model_dir.string(),
               " does not exist or is not a folder");
  const auto config = parsed ? *parsed : VaeConfig::from_file(model_dir / "config.json");
  return load_strict<VaeModel>(WeightStore::open_component(model_dir, std::move(variant)), config, runtime);
}

}  // namespace ltxmps::pipeline
