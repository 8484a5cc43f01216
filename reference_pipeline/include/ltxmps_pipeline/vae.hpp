#pragma once
/// @file vae.hpp
/// @brief `AutoencoderKLLTXVideo` (diffusers 0.42.1), the causal video VAE of LTX-Video 0.9.0, 0.9.1 and
/// 0.9.5/0.9.7, as nested structs of checkpoint tensors.
///
/// Layout, names and numerics follow diffusers' `models/autoencoders/autoencoder_kl_ltx.py`;
/// docs/models/vae.md describes the versions, the causal convolutions and the tiling rules. Videos are
/// `[B, C, F, H, W]` in [-1, 1].
/// The decode-noise mixing of the pipelines (`(1 - s)·z + s·noise`) is not part of the VAE: see
/// mix_decode_noise(). Latent (de)normalization with `latents_mean` / `latents_std` is also the
/// pipeline's: see VaeModel::normalize_latents() / denormalize_latents().
///
/// Parity (tests/parity/test_vae_parity.cpp) is checked against diffusers in float32 on the CPU for
/// small random 0.9.0, 0.9.1 and 0.9.5-style configs, untiled, spatially tiled, framewise tiled and
/// sliced. 0.9.1's noise injection draws from diffusers' global torch RNG: most 0.9.1 cases keep the
/// `per_channel_scale*` weights at zero (so the noise has no effect); one case uses non-zero scales and
/// reproduces the stream of `torch.manual_seed(s)` with decode()'s `noise_generator`. Known diffusers
/// 0.42.1 deviations: sliced decode with a temb fails there (it zips the slices wrongly); here it equals
/// the unsliced decode.

#include "ltxmps_pipeline/linear.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The `config.json` of a diffusers `vae/` folder, field by field, with the defaults of
///        `AutoencoderKLLTXVideo.__init__` (which is also what an older config missing a newer field gets).
struct VaeConfig {
  int64_t in_channels = 3;        ///< channels of the input video (RGB)
  int64_t out_channels = 3;       ///< channels of the decoded video
  int64_t latent_channels = 128;  ///< channels of the latents
  std::vector<int64_t> block_out_channels{128, 256, 512, 512};  ///< encoder widths, block by block
  /// "LTXVideoDownBlock3D" (0.9.0/0.9.1) or "LTXVideo095DownBlock3D" (0.9.5+). As in diffusers, the
  /// last entry decides whether the encoder has len(block_out_channels) - 1 blocks (0.9.5+) or
  /// len(block_out_channels) blocks.
  std::vector<std::string> down_block_types{"LTXVideoDownBlock3D", "LTXVideoDownBlock3D", "LTXVideoDownBlock3D",
                                            "LTXVideoDownBlock3D"};
  std::vector<int64_t> decoder_block_out_channels{128, 256, 512, 512};  ///< decoder widths (reversed in the decoder)
  std::vector<int64_t> layers_per_block{4, 3, 3, 3, 4};  ///< per encoder block; the last also sizes the mid block
  std::vector<int64_t> decoder_layers_per_block{4, 3, 3, 3, 4};  ///< resnets of the decoder's mid and up blocks
  std::vector<bool> spatio_temporal_scaling{true, true, true, false};  ///< which encoder blocks downsample
  std::vector<bool> decoder_spatio_temporal_scaling{true, true, true, false};  ///< which decoder blocks upsample
  std::vector<bool> decoder_inject_noise{false, false, false, false, false};  ///< 0.9.1: resnets adding a noise map
  std::vector<std::string> downsample_type{"conv", "conv", "conv", "conv"};  ///< conv, spatial, temporal, spatiotemporal
  std::vector<bool> upsample_residual{false, false, false, false};  ///< upsamplers with a depth-to-space residual
  std::vector<int64_t> upsample_factor{1, 1, 1, 1};  ///< each upsampler outputs in / factor channels
  bool timestep_conditioning = false;  ///< 0.9.1+: the decoder takes a decode timestep
  int64_t patch_size = 4;              ///< pixels per patch side in the (un)patchify of encoder and decoder
  int64_t patch_size_t = 1;            ///< frames per patch (diffusers only runs 1)
  double resnet_norm_eps = 1e-6;       ///< eps of the resnets' shortcut LayerNorm
  double scaling_factor = 1.0;         ///< latent scale of (de)normalization (1.0 for every release)
  bool encoder_causal = true;          ///< encoder convs pad time with copies of the first frame only
  bool decoder_causal = false;         ///< decoder convs pad time on both sides
  std::optional<int64_t> spatial_compression_ratio;   ///< null: patch_size · 2^sum(spatio_temporal_scaling)
  std::optional<int64_t> temporal_compression_ratio;  ///< null: patch_size_t · 2^sum(spatio_temporal_scaling)

  /// @brief Whether the encoder is 0.9.5+ (`down_block_types` ends with LTXVideo095DownBlock3D): it then has
  ///        len(block_out_channels) - 1 blocks.
  bool is_095_encoder() const;
  /// @brief diffusers' `vae.spatial_compression_ratio` (the config value, else the formula above).
  int64_t spatial_compression() const;
  /// @brief diffusers' `vae.temporal_compression_ratio`.
  int64_t temporal_compression() const;

  /// @brief Parses a config object. Keys starting with '_' are metadata; any other unknown key is an
  ///        error naming it and `source`. Missing keys keep the constructor defaults.
  static VaeConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
  /// @brief Reads and parses `path` (a VAE `config.json`).
  static VaeConfig from_file(const std::filesystem::path& path);
  /// @brief Throws ltxmps::Error when the values cannot describe a model diffusers can build and run.
  void validate(const std::string& source = "VaeConfig") const;
};

/// @brief The tiling/slicing state of diffusers' `AutoencoderKLLTXVideo` (attributes set by
///        `enable_tiling(...)`, `enable_slicing()`, `use_framewise_{en,de}coding`), in pixel units.
///
/// Tiled results differ from untiled ones (tiles are blended); they equal diffusers' tiled results.
struct VaeTiling {
  bool use_tiling = false;   ///< spatial tiles (enable_tiling)
  bool use_slicing = false;  ///< one batch item at a time (enable_slicing)
  /// Kept for symmetry with diffusers. diffusers 0.42.1 never reads it: its `_encode` tiles over frames
  /// when **use_framewise_decoding** is set, and so does this port (docs/models/vae.md, "Tiling, framewise
  /// tiling and slicing").
  bool use_framewise_encoding = false;
  bool use_framewise_decoding = false;  ///< temporal tiles for decode, and (diffusers quirk) for encode
  int64_t tile_sample_min_height = 512;       ///< tile height in pixels; taller frames are tiled
  int64_t tile_sample_min_width = 512;        ///< tile width in pixels; wider frames are tiled
  int64_t tile_sample_min_num_frames = 16;    ///< temporal tile in pixel frames
  int64_t tile_sample_stride_height = 448;    ///< vertical tile stride (overlap = min - stride, blended)
  int64_t tile_sample_stride_width = 448;     ///< horizontal tile stride
  int64_t tile_sample_stride_num_frames = 8;  ///< temporal tile stride in pixel frames

  /// @brief diffusers' `enable_tiling(...)`: sets use_tiling and overrides the sizes that are given.
  void enable_tiling(std::optional<int64_t> min_height = std::nullopt, std::optional<int64_t> min_width = std::nullopt,
                     std::optional<int64_t> min_num_frames = std::nullopt,
                     std::optional<int64_t> stride_height = std::nullopt,
                     std::optional<int64_t> stride_width = std::nullopt,
                     std::optional<int64_t> stride_num_frames = std::nullopt);
  /// @brief Throws when a size is not positive or a stride exceeds its tile.
  void validate() const;
};

/// @brief Where and in which precision the VAE runs: weights and activations in `dtype` (the norms'
///        statistics and the sinusoidal timestep projection in float32, as in diffusers). float32 is the
///        default and the recommended setting (`vae_float32`); half precision is allowed on CUDA.
struct VaeRuntime {
  c10::Device device = c10::kCPU;     ///< where the weights live and the VAE runs
  at::ScalarType dtype = at::kFloat;  ///< weights and activations
  /// Check every decoder stage (and the encoder output) for NaN/Inf and throw naming the first stage, in
  /// execution order, that produced one. The checks of all tiles are queued on the device and read once at the
  /// end of encode() / decode() (one synchronization; the input latents are read before decoding); false runs
  /// no check at all.
  bool check_finite = true;
  /// Store the convolution weights channels-last (`at::MemoryFormat::ChannelsLast3d`), so that the activations run
  /// channels-last from the first convolution on (Note [VAE channels-last on CUDA] in vae.cpp; the plan's
  /// `vae.channels_last`). The values are those of the channels-first layout up to the convolution algorithms' own
  /// rounding. For CUDA: the weights may live elsewhere (an offload home), but encoding or decoding inputs that are
  /// not on a CUDA device is an error.
  bool channels_last = false;
};

/// @brief `LTXVideoCausalConv3d` (`<name>.conv.weight` / `.conv.bias`).
struct VaeConv3dWeights {
  at::Tensor weight;  ///< [out, in, kt, kh, kw]
  at::Tensor bias;    ///< [out]
  std::array<int64_t, 3> stride{1, 1, 1};  ///< (t, h, w)
  bool is_causal = true;                   ///< time padding: frame 0 in front only (else both ends)
};

/// @brief `LTXVideoResnetBlock3d`.
struct VaeResnetWeights {
  ///@{
  /// The two k3 convolutions of the residual branch.
  VaeConv3dWeights conv1, conv2;
  ///@}
  ///@{
  /// `norm3`: LayerNorm over channels, only when in != out.
  at::Tensor norm3_weight, norm3_bias;
  ///@}
  double norm3_eps = 1e-6;              ///< resnet_norm_eps
  VaeConv3dWeights conv_shortcut;       ///< k1 conv, only when in != out (weight undefined otherwise)
  ///@{
  /// Scales of the injected noise after conv1 / conv2: [in, 1, 1], only with noise injection.
  at::Tensor per_channel_scale1, per_channel_scale2;
  ///@}
  at::Tensor scale_shift_table;                       ///< [4, in], only with timestep conditioning
};

/// @brief `PixArtAlphaCombinedTimestepSizeEmbeddings(dim, 0)`: `time_embedder.timestep_embedder.linear_{1,2}`.
struct VaeTimeEmbedderWeights {
  LinearWeights linear_1;  ///< 256 -> dim
  LinearWeights linear_2;  ///< dim -> dim
  /// @brief Whether the embedder exists (timestep-conditioned decoders only).
  bool defined() const { return linear_1.weight.defined(); }
};

/// @brief The downsampler of an encoder block (`downsamplers.0`).
struct VaeDownsamplerWeights {
  /// false: a stride-2 LTXVideoCausalConv3d (`downsamplers.0.conv.*`, type "conv");
  /// true: LTXVideoDownsampler3d (`downsamplers.0.conv.conv.*`: space-to-depth plus a residual path).
  bool space_to_depth = false;
  VaeConv3dWeights conv;  ///< the strided conv, or the stride-1 conv before space-to-depth
  std::array<int64_t, 3> stride{2, 2, 2};  ///< (t, h, w)
  int64_t group_size = 1;                  ///< channels averaged by the residual path
};

/// @brief `LTXVideoDownBlock3D` / `LTXVideo095DownBlock3D` (`encoder.down_blocks.{i}`).
struct VaeDownBlockWeights {
  std::vector<VaeResnetWeights> resnets;             ///< `resnets.{j}`
  std::optional<VaeDownsamplerWeights> downsampler;  ///< when the block scales
  std::optional<VaeResnetWeights> conv_out;  ///< LTXVideoDownBlock3D with in != out
};

/// @brief `LTXVideoUpsampler3d` (`upsamplers.0`): conv, depth-to-space, first frame dropped.
struct VaeUpsamplerWeights {
  VaeConv3dWeights conv;       ///< in -> in · 8 / upscale_factor
  bool residual = false;       ///< add the depth-to-space of the input, tiled over channels
  int64_t upscale_factor = 1;  ///< upsample_factor of the block
};

/// @brief `LTXVideoMidBlock3d`.
struct VaeMidBlockWeights {
  VaeTimeEmbedderWeights time_embedder;  ///< decoder with timestep conditioning only
  std::vector<VaeResnetWeights> resnets;  ///< `resnets.{j}`
};

/// @brief `LTXVideoUpBlock3d` (`decoder.up_blocks.{i}`).
struct VaeUpBlockWeights {
  std::optional<VaeResnetWeights> conv_in;  ///< in != out (0.9.0)
  VaeTimeEmbedderWeights time_embedder;     ///< timestep conditioning only
  std::optional<VaeUpsamplerWeights> upsampler;  ///< `upsamplers.0`, when the block scales
  std::vector<VaeResnetWeights> resnets;         ///< `resnets.{j}`
};

/// @brief `LTXVideoEncoder3d` (`encoder.*`).
struct VaeEncoderWeights {
  VaeConv3dWeights conv_in;                      ///< patchified pixels -> first block width
  std::vector<VaeDownBlockWeights> down_blocks;  ///< `down_blocks.{i}`
  VaeMidBlockWeights mid_block;                  ///< `mid_block`
  VaeConv3dWeights conv_out;  ///< C -> latent_channels + 1
};

/// @brief `LTXVideoDecoder3d` (`decoder.*`).
struct VaeDecoderWeights {
  VaeConv3dWeights conv_in;                  ///< latent_channels -> first decoder width
  VaeMidBlockWeights mid_block;              ///< `mid_block`
  std::vector<VaeUpBlockWeights> up_blocks;  ///< `up_blocks.{i}`
  VaeConv3dWeights conv_out;             ///< C -> out_channels · patch_size²
  at::Tensor timestep_scale_multiplier;  ///< scalar, timestep conditioning only
  VaeTimeEmbedderWeights time_embedder;  ///< 2C, timestep conditioning only
  at::Tensor scale_shift_table;          ///< [2, C]: row 0 shift, row 1 scale
};

/// @brief diffusers' `DiagonalGaussianDistribution` of an encoding.
struct VaePosterior {
  at::Tensor mean;    ///< [B, latent_channels, F', H', W']
  at::Tensor logvar;  ///< same shape, clamped to [-30, 20]

  /// @brief The mean (diffusers' `mode()`).
  at::Tensor mode() const { return mean; }
  /// @brief `exp(0.5 · logvar)`.
  at::Tensor std() const;
  /// @brief `mean + std · ε`, ε drawn with ltxmps::randn from the CPU `generator` (same values as diffusers'
  ///        `sample(generator=torch.Generator().manual_seed(s))` with `make_cpu_generator(s)`); consumes it.
  at::Tensor sample(at::Generator& generator) const;
};

/// @brief Supplies one weight by checkpoint name and expected shape (for example `StrictLoader::take`).
using VaeWeightSource = std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;

/// @brief `AutoencoderKLLTXVideo` in eval mode.
struct VaeModel {
  VaeConfig config;    ///< the checkpoint's config.json
  VaeRuntime runtime;  ///< device, dtype, finiteness checks
  VaeTiling tiling;    ///< tiling / slicing state (all off by default, as in diffusers)

  VaeEncoderWeights encoder;  ///< `encoder.*`
  VaeDecoderWeights decoder;  ///< `decoder.*`
  at::Tensor latents_mean;  ///< [latent_channels] (buffer; the pipeline normalizes with it)
  at::Tensor latents_std;   ///< [latent_channels]

  /// @brief Builds the model from `weights`, asked once for every tensor of the checkpoint; each tensor
  ///        is moved to `runtime.device` / `runtime.dtype`.
  static VaeModel from_weights(const VaeConfig& config, const VaeRuntime& runtime, const VaeWeightSource& weights);

  /// @brief diffusers' `encode(x).latent_dist`, honouring `tiling` (spatial tiles, framewise tiles,
  ///        slicing). `video` is `[B, in_channels, F, H, W]` with F = k·temporal_compression + 1 and H, W
  ///        multiples of spatial_compression; it may live anywhere (it is moved and cast).
  VaePosterior encode(const at::Tensor& video) const;

  /// @brief diffusers' `decode(z, temb).sample`, honouring `tiling`. `latents` is
  ///        `[B, latent_channels, F', H', W']`; `temb` (the decode timestep, [B] or one value for all) is
  ///        required with timestep conditioning and ignored otherwise. Returns
  ///        `[B, out_channels, (F'-1)·temporal_compression + 1, H'·spatial, W'·spatial]` in `runtime.dtype`.
  ///
  /// Noise injection (0.9.1) draws one (H, W) map per resnet conv, as diffusers does with the global
  /// torch RNG. With `noise_generator` the maps come from that CPU generator (drawn in `runtime.dtype`
  /// on the CPU, then moved): on the CPU this is the stream of `torch.manual_seed(s)` + diffusers'
  /// decode for `make_cpu_generator(s)`. Without it, LibTorch's default generator of the device is used.
  at::Tensor decode(const at::Tensor& latents, const std::optional<at::Tensor>& temb = std::nullopt,
                    at::Generator* noise_generator = nullptr) const;

  /// @brief `LTXVideoEncoder3d.forward`: `[B, 2·latent_channels, ...]` (the mean, then the log-variance
  ///        channel repeated), no tiling, no shape policy beyond what the layers need.
  at::Tensor encoder_forward(const at::Tensor& video) const;
  /// @brief `LTXVideoDecoder3d.forward`, no tiling; `temb` as in decode().
  at::Tensor decoder_forward(const at::Tensor& latents, const at::Tensor& temb, at::Generator* noise_generator) const;

  /// @brief `(z - mean) · scaling_factor / std` per channel (pipelines' `_normalize_latents`).
  at::Tensor normalize_latents(const at::Tensor& latents, std::optional<double> scaling_factor = std::nullopt) const;
  /// @brief `z · std / scaling_factor + mean` per channel (pipelines' `_denormalize_latents`).
  at::Tensor denormalize_latents(const at::Tensor& latents, std::optional<double> scaling_factor = std::nullopt) const;
};

/// @brief The pipelines' decode noise: `(1 - s)·latents + s·noise` with s = `decode_noise_scale` per
///        sample ([B] or one value) broadcast over `[B, C, F, H, W]`; `noise` must have the latents' shape.
at::Tensor mix_decode_noise(const at::Tensor& latents, const at::Tensor& noise, const at::Tensor& decode_noise_scale);

/// @brief Loads a diffusers `vae/` folder: `config.json` plus `diffusion_pytorch_model[.variant].safetensors`.
///        Strict: missing, unexpected and mis-shaped tensors are errors naming the file and tensor.
VaeModel load_vae(const std::filesystem::path& model_dir, const VaeRuntime& runtime,
                  std::optional<std::string> variant = std::nullopt, std::optional<VaeConfig> config = std::nullopt);

/// @brief Loads the VAE of an original Lightricks single file (the "vae.*" keys beside the transformer's), as
///        diffusers' `AutoencoderKLLTXVideo.from_single_file(file, config=...)`: keys renamed with the table
///        the file's keys select (Note [Lightricks single-file VAE] in checkpoint.hpp), the per-channel
///        statistics diffusers drops left out, strict binding. `config` is the VAE config of the release (the
///        `vae/config.json` of its diffusers folder; diffusers fetches it from the release's repository); it is
///        checked against the layout the keys imply before any weight is read.
VaeModel load_lightricks_vae(const std::filesystem::path& file, const VaeRuntime& runtime, const VaeConfig& config);

}  // namespace ltxmps::pipeline
