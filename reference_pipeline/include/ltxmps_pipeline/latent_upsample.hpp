#pragma once
/// @file latent_upsample.hpp
/// @brief diffusers' `LTXLatentUpsamplePipeline` (0.42.1): upsample LTX-Video latents with an
///        `LTXLatentUpsamplerModel`, with optional AdaIN filtering and tone mapping, from latents or from a video
///        (VAE-encoded first), to latents or to frames (VAE-decoded). docs/pipelines.md shows where it sits in the
///        two-pass flow; docs/models/latent_upsampler.md says where normalization happens.

#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/progress.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

namespace ltxmps::pipeline {

/// @brief The latent filters of `LTXLatentUpsamplePipeline.__call__` (diffusers' defaults: both off).
struct LatentUpsampleOptions {
  /// AdaIN strength: the upsampled latents' per-(sample, channel) mean and std are moved towards those of the
  /// input latents by this factor (`lerp(upsampled, matched, factor)`); applied only when > 0, as in diffusers.
  double adain_factor = 0.0;
  /// Sigmoid tone-mapping strength in [0, 1]; 0 leaves the latents unchanged.
  double tone_map_compression_ratio = 0.0;

  /// @brief Throws ltxmps::Error naming `what` and the option for a non-finite adain_factor or a
  ///        tone_map_compression_ratio outside [0, 1] (diffusers' check_inputs).
  void validate(const std::string& what = "upsample") const;
};

/// @brief The pipeline's core on **normalized** latents, as the denoising loop produces them and as diffusers'
///        `LTXLatentUpsamplePipeline(latents=..., output_type="latent")` takes and returns them:
///        denormalize with the VAE's latents_mean / latents_std / scaling_factor, upsample, AdaIN against the
///        denormalized input (when adain_factor > 0), tone-map (when the ratio > 0), normalize again.
///
/// `latents` is `[B, C, F, H, W]` with C the VAE's latent channels (any device and floating dtype); the result
/// is float32 on the upsampler's device, `[B, C, output_frames(F), 2H, 2W]`. The upsampler runs in its
/// runtime dtype. Throws before any work for a rank or channel mismatch (upsampler vs VAE, latents vs both).
at::Tensor upsample_latents(const LatentUpsamplerModel& upsampler, const VaeModel& vae, const at::Tensor& latents,
                            const LatentUpsampleOptions& options);

/// @brief As upsample_latents(), on un-normalized latents in and out (no (de)normalization); the step the frame
///        output decodes from.
at::Tensor upsample_denormalized_latents(const LatentUpsamplerModel& upsampler, const at::Tensor& latents,
                                         const LatentUpsampleOptions& options);

/// @brief diffusers' `adain_filter_latent`: for each sample and channel, `(x - mean(x)) / std(x) · std(r) + mean(r)`
///        (unbiased std over F, H, W) and then `lerp(latents, that, factor)`. `reference` must have the batch and
///        channels of `latents`.
at::Tensor adain_filter_latent(const at::Tensor& latents, const at::Tensor& reference, double factor = 1.0);

/// @brief diffusers' `tone_map_latents`: `x · (1 - 0.8·s·sigmoid(4·s·(|x| - 1)))` with s = 0.75·compression.
at::Tensor tone_map_latents(const at::Tensor& latents, double compression);

/// @brief One `LTXLatentUpsamplePipeline` call; defaults are diffusers'.
///
/// Exactly one of `latents` and `video`. Deviation: diffusers resizes the video to height × width
/// (`preprocess_video`); here the frames must already have a size that is a multiple of the VAE's spatial
/// compression (the CLI fits them), and a frame count that is not k·temporal_compression + 1 is truncated to
/// the largest such count, with a warning, as diffusers does.
struct LatentUpsampleRequest {
  std::optional<at::Tensor> latents;  ///< normalized latents [B, C, F', H', W'] (diffusers' `latents`)
  /// Pixels [F, 3, H, W]: [0, 1] values map to [-1, 1] (VaeImageProcessor's rule), others are used as they are.
  /// VAE-encoded, a posterior sample drawn from the run's generator, normalized (scaling factor 1, as diffusers).
  std::optional<at::Tensor> video;
  LatentUpsampleOptions options;      ///< AdaIN and tone mapping
  bool output_latents = false;        ///< diffusers' output_type="latent": return normalized latents, no decode
  double decode_timestep = 0.0;       ///< timestep of a timestep-conditioned VAE decode
  std::optional<double> decode_noise_scale;  ///< decode noise mix; empty: decode_timestep
  uint64_t seed = 0;                  ///< one CPU generator (the posterior sample, then the decode noise)

  /// @brief Checks everything that can be known before a model runs: one input, its rank, size and channels
  ///        against the VAE and the upsampler, the options.
  void validate(const LtxModel& model, const LatentUpsamplerModel& upsampler) const;
};

/// @brief What the pipeline returns.
struct LatentUpsampleResult {
  /// Normalized upsampled latents [B, C, F', 2H', 2W'] float32 (CPU): diffusers' output_type="latent" result.
  at::Tensor latents;
  at::Tensor frames;   ///< decoded video [B, F, 3, H, W] float32 in [0, 1] (CPU); undefined with output_latents
};

/// @brief `LTXLatentUpsamplePipeline.__call__`: validates `request`, VAE-encodes a video input, runs
///        upsample_latents() (the upsampler inside its offload scope), and decodes unless `output_latents`
///        (denormalized latents, decode noise of timestep-conditioned VAEs, VAE decode, [0, 1] frames).
LatentUpsampleResult latent_upsample(LtxModel& model, LatentUpsamplerModel& upsampler,
                                     const LatentUpsampleRequest& request, const ltxmps::ExecutionPlan& plan,
                                     const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(),
                                     const ProgressCallback& progress = {});

}  // namespace ltxmps::pipeline
