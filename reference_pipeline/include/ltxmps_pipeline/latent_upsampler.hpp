#pragma once
/// @file latent_upsampler.hpp
/// @brief `LTXLatentUpsamplerModel` (diffusers 0.42.1, `pipelines/ltx/modeling_latent_upsampler.py`), the
///        latent upsampler of LTX-Video 0.9.7+ ("spatial upscaler"), as a flat struct of checkpoint tensors.
///
/// The model works on *un-normalized* VAE latents `[B, C, F, H, W]`: the pipeline
/// (latent_upsample.hpp) denormalizes before and re-normalizes after it. docs/models/latent_upsampler.md
/// describes the layers, the config variants and the two checkpoint formats.

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The `config.json` of a diffusers `LTXLatentUpsamplerModel` folder, field by field, with the defaults
///        of `LTXLatentUpsamplerModel.__init__`.
struct LatentUpsamplerConfig {
  int64_t in_channels = 128;          ///< latent channels in and out (the VAE's latent_channels)
  int64_t mid_channels = 512;         ///< width of the res blocks (GroupNorm(32): a multiple of 32)
  int64_t num_blocks_per_stage = 4;   ///< ResBlocks before and after the upsampler
  int64_t dims = 3;                   ///< 3: Conv3d blocks; 2: Conv2d blocks applied frame by frame
  bool spatial_upsample = true;       ///< doubles H and W
  bool temporal_upsample = false;     ///< F -> 2F - 1 (the first, causal frame is not doubled)

  /// @brief How many times H and W grow (2 or 1).
  int64_t spatial_factor() const { return spatial_upsample ? 2 : 1; }
  /// @brief The output frame count for `frames` input frames.
  int64_t output_frames(int64_t frames) const { return temporal_upsample ? 2 * frames - 1 : frames; }

  /// @brief Parses a config object. Keys starting with '_' are metadata; any other unknown key is an
  ///        error naming it and `source`. Missing keys keep the constructor defaults.
  static LatentUpsamplerConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
  /// @brief Reads and parses `path` (a latent upsampler `config.json`).
  static LatentUpsamplerConfig from_file(const std::filesystem::path& path);
  /// @brief Throws ltxmps::Error when the values describe no model diffusers can build and run (dims other than
  ///        2 or 3, no upsampling, temporal upsampling with dims 2, mid_channels not a multiple of 32, sizes
  ///        out of range); `source` is named in the message.
  void validate(const std::string& source = "LatentUpsamplerConfig") const;
};

/// @brief Where and in which precision the upsampler runs (weights and activations in `dtype`).
struct LatentUpsamplerRuntime {
  c10::Device device = c10::kCPU;     ///< where the weights live and the model runs
  at::ScalarType dtype = at::kFloat;  ///< weights and activations
};

/// @brief A convolution (`torch.nn.Conv2d` / `Conv3d`, kernel 3, padding 1) or a `torch.nn.GroupNorm(32, C)`:
///        `<name>.weight` and `<name>.bias`.
struct LatentUpsamplerLayer {
  at::Tensor weight;  ///< conv: [out, in, 3, 3(, 3)]; norm: [C]
  at::Tensor bias;    ///< [out] / [C]
};

/// @brief `ResBlock` (`res_blocks.{i}` / `post_upsample_res_blocks.{i}`):
///        `silu(norm2(conv2(silu(norm1(conv1(x))))) + x)`.
struct LatentUpsamplerResBlockWeights {
  LatentUpsamplerLayer conv1;  ///< mid -> mid
  LatentUpsamplerLayer norm1;  ///< GroupNorm(32, mid)
  LatentUpsamplerLayer conv2;  ///< mid -> mid
  LatentUpsamplerLayer norm2;  ///< GroupNorm(32, mid)
};

/// @brief Supplies one weight by checkpoint name and expected shape (for example `StrictLoader::take`).
using LatentUpsamplerWeightSource =
    std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;

/// @brief `LTXLatentUpsamplerModel` in eval mode: member names are the checkpoint names.
struct LatentUpsamplerModel {
  LatentUpsamplerConfig config;    ///< the checkpoint's config
  LatentUpsamplerRuntime runtime;  ///< device, dtype

  LatentUpsamplerLayer initial_conv;  ///< in_channels -> mid
  LatentUpsamplerLayer initial_norm;  ///< GroupNorm(32, mid)
  std::vector<LatentUpsamplerResBlockWeights> res_blocks;  ///< `res_blocks.{i}`
  /// `upsampler.0`: the conv before the pixel shuffle, mid -> 4·mid (spatial, Conv2d), 2·mid (temporal,
  /// Conv3d) or 8·mid (both, Conv3d).
  LatentUpsamplerLayer upsampler_0;
  std::vector<LatentUpsamplerResBlockWeights> post_upsample_res_blocks;  ///< `post_upsample_res_blocks.{i}`
  LatentUpsamplerLayer final_conv;  ///< mid -> in_channels

  /// @brief Builds the model from `weights`, asked once for every tensor of the checkpoint (in a fixed
  ///        order); each tensor is moved to `runtime.device` / `runtime.dtype`.
  static LatentUpsamplerModel from_weights(const LatentUpsamplerConfig& config, const LatentUpsamplerRuntime& runtime,
                                           const LatentUpsamplerWeightSource& weights);

  /// @brief `LTXLatentUpsamplerModel.forward`: un-normalized latents `[B, in_channels, F, H, W]` (any device and
  ///        floating dtype; moved and cast) -> `[B, in_channels, output_frames(F), 2H, 2W]` (H, W unchanged
  ///        without spatial upsampling) in `runtime.dtype` on `runtime.device`.
  at::Tensor forward(const at::Tensor& latents) const;
};

/// @brief Loads a latent upsampler from either format:
///        - a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`, as
///          `LTXLatentUpsamplerModel.save_pretrained` writes it);
///        - a Lightricks single file (`ltxv-spatial-upscaler-*.safetensors`), whose keys are already the
///          diffusers names. Its config comes from the `config` entry of the safetensors metadata when present,
///          else it is read off the tensor shapes; either way it is checked against the shapes.
///
/// Strict: missing, unexpected and mis-shaped tensors are errors naming the file and tensor.
LatentUpsamplerModel load_latent_upsampler(const std::filesystem::path& folder_or_file,
                                           const LatentUpsamplerRuntime& runtime);

/// @brief The config of a Lightricks single-file upsampler without loading its weights: the metadata's
///        `config` entry if any (checked against the shapes), else read off the tensor shapes.
LatentUpsamplerConfig lightricks_latent_upsampler_config(const std::filesystem::path& file);

}  // namespace ltxmps::pipeline
