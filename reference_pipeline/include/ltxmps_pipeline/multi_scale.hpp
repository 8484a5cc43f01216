#pragma once
/// @file multi_scale.hpp
/// @brief The two-pass ("multi-scale") flow of LTX-Video 0.9.7 / 0.9.8 as diffusers documents it: an
///        LTXConditionPipeline pass at a reduced size, the latents upsampled by an LTXLatentUpsamplerModel
///        (LTXLatentUpsamplePipeline), and a second LTXConditionPipeline pass at the upsampled size that denoises
///        those latents from `second_pass_strength`, then one decode. docs/pipelines.md lists the defaults and
///        where they come from.

#include "ltxmps_pipeline/latent_upsample.hpp"
#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/progress.hpp"

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The timesteps diffusers documents for the distilled 0.9.7 / 0.9.8 checkpoints (guidance 1): the first
///        pass, and the second pass after upsampling (run from denoise_strength 0.999, i.e. its last four).
struct DistilledSchedule {
  static std::vector<double> first_pass() { return {1000, 993, 987, 981, 975, 909, 725, 0.03}; }  ///< 8 steps
  static std::vector<double> second_pass() { return {1000, 909, 725, 421, 0}; }                   ///< 5 timesteps
};

/// @brief The sizes of the two passes (pixels).
struct MultiScaleSizes {
  ///@{
  /// Requested (the output's).
  int64_t height = 0, width = 0;
  ///@}
  ///@{
  /// First pass: ⌊requested · scale⌋, rounded down to the VAE's unit.
  int64_t first_height = 0, first_width = 0;
  ///@}
  ///@{
  /// Second pass: first pass · the upsampler's spatial factor.
  int64_t second_height = 0, second_width = 0;
  ///@}
  bool rounded = false;  ///< ⌊requested · scale⌋ was not a multiple of the VAE's spatial compression
  /// @brief One line for logs: both passes and how the first pass size came about.
  std::string describe(double scale) const;
};

/// @brief The two-pass request; the GenerationSettings are shared by both passes, with the defaults of
///        diffusers' documented 0.9.7 example (constructor): guidance 5 with rescale 0.7, decode timestep 0.05
///        with noise 0.025. `height` / `width` are the requested (final) size; `num_inference_steps` is the first
///        pass's step count (30). The prompts are encoded once for both passes.
struct MultiScaleRequest : GenerationSettings {
  MultiScaleRequest();

  double first_pass_scale = 2.0 / 3.0;                      ///< first pass size / requested size
  std::optional<std::vector<double>> first_pass_timesteps;   ///< custom first-pass timesteps (distilled)
  int64_t second_pass_steps = 10;                           ///< steps of the second pass's full schedule
  std::optional<std::vector<double>> second_pass_timesteps;  ///< custom second-pass timesteps (distilled)
  double second_pass_strength = 0.4;                        ///< denoise_strength of the second pass, (0, 1]
  double image_cond_noise_scale = 0.0;                      ///< both passes (the example's 0)
  LatentUpsampleOptions upsample;                           ///< AdaIN and tone mapping between the passes
  /// Frame-0 image [3, H, W] and conditions as in ConditionRequest, at the requested size: each pass gets them
  /// resized to its own size (bilinear, antialiased).
  std::optional<at::Tensor> image;
  std::vector<VideoCondition> conditions;  ///< see `image`

  /// @brief diffusers' documented values for the distilled checkpoints: guidance 1, the DistilledSchedule
  ///        timesteps, second-pass strength 0.999 and AdaIN 1 (0.9.8 adds tone mapping 0.6, left to the caller).
  void use_distilled_defaults();

  /// @brief Checks everything knowable from the configs alone (before any weight is loaded): options, both
  ///        passes' sizes against the VAE and transformer, the upsampler's channels against the VAE's latents and
  ///        its kind (spatial, not temporal). Returns the sizes.
  MultiScaleSizes check(const VaeConfig& vae, const TransformerConfig& transformer,
                        const LatentUpsamplerConfig& upsampler) const;
};

/// @brief What the two passes return.
struct MultiScaleResult {
  at::Tensor latents;             ///< final latents, denormalized [B, C, F', H2', W2'] float32 (CPU)
  at::Tensor frames;              ///< decoded second pass [B, F, 3, H2, W2] float32 in [0, 1] (CPU)
  /// `frames` resized to the requested size (antialiased bicubic; the documented example resizes with PIL);
  /// undefined when the second pass already has that size.
  at::Tensor resized_frames;
  at::Tensor first_pass_latents;  ///< normalized first-pass latents (CPU)
  at::Tensor upsampled_latents;   ///< normalized upsampled latents, the second pass's input (CPU)
  MultiScaleSizes sizes;          ///< the passes' sizes
};

/// @brief Runs the two passes: prompts encoded once, LTXConditionPipeline at the first-pass size with
///        output_type="latent", upsample_latents() inside the upsampler's offload scope, LTXConditionPipeline at
///        the second-pass size on the upsampled latents with denoise_strength, then the decode. Each pass seeds
///        its own CPU generator with `seed`, as the documented example does.
MultiScaleResult multi_scale(LtxModel& model, LatentUpsamplerModel& upsampler, const MultiScaleRequest& request,
                             const ltxmps::ExecutionPlan& plan, const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(),
                             const ProgressCallback& progress = {});

}  // namespace ltxmps::pipeline
