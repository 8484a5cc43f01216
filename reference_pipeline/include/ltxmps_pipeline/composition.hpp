#pragma once
/// @file composition.hpp
/// @brief OmnimatteZero's foreground layer and composition: the object and its effects (shadows, reflections)
///        lifted off a video as the latent difference between the video and its clean background, decoded into
///        a layer that can be put onto another background, by latent addition and a short refinement through
///        the condition pipeline. docs/object-removal.md describes the method and where ltxmps deviates from
///        the official script.

#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/progress.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/removal.hpp"  // kRemovalNegativePrompt

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

namespace ltxmps::pipeline {

/// @brief The refinement of a latent-addition video: LTXConditionPipeline video-to-video from its re-encoded
///        latents. The defaults are the official composition script's.
struct RefinementSettings {
  double strength = 0.3;                 ///< denoise_strength: the last part of the schedule that runs
  int64_t steps = 10;                    ///< num_inference_steps of the whole schedule (0.3 x 10: 3 run)
  uint64_t seed = 0;                     ///< seeds the re-encode's posterior sample, then the pipeline afresh
  double decode_timestep = 0.05;         ///< the pipeline's decode timestep (and decode noise scale)
  /// The pipeline's re-noise of conditioning tokens; the refinement has no conditioning item, so, as in
  /// diffusers, it changes nothing (passed for fidelity to the official call).
  double image_cond_noise_scale = 0.025;
  double guidance_scale = 3.0;           ///< classifier-free guidance (the pipeline's default)
  double frame_rate = 25.0;              ///< RoPE's time scale (the pipeline's default)
  int64_t max_sequence_length = 256;     ///< tokens per prompt (the condition pipeline's default)
  std::string prompt;                    ///< official: empty
  std::string negative_prompt = kRemovalNegativePrompt;  ///< the official negative prompt
  std::optional<PromptEmbeddings> prompt_embeddings;     ///< a prompt cache instead of the text encoder

  /// @brief Throws ltxmps::Error naming the setting when a refinement of a `frames` x `height` x `width` video
  ///        cannot run on `model` (checked before any model runs).
  void validate(const LtxModel& model, int64_t frames, int64_t height, int64_t width) const;
};

/// @brief What the composition takes. Videos are float frames [F, 3, H, W] in [0, 1], masks [F, 1 or 3, H, W]
///        in [0, 1] (white = object); all of one frame count (8k+1) and size (multiples of 32, the model's units).
struct ForegroundRequest {
  at::Tensor original;    ///< the video with the object
  at::Tensor background;  ///< the same video without it (the output of object removal)
  at::Tensor object_mask; ///< the object alone: inside it the foreground takes the original's pixels
  at::Tensor total_mask;  ///< the object and its effects: the extent (and the alpha) of the foreground layer
  /// A background to put the foreground onto; without it only the foreground layer is made.
  std::optional<at::Tensor> new_background;
  /// The VAE decoder's timestep for the latent arithmetic (the official script passes 0); ignored by a VAE
  /// without timestep conditioning.
  double compose_timestep = 0.0;
  bool refine = true;              ///< run the refinement when there is a new background
  RefinementSettings refinement;   ///< the refinement's settings

  /// @brief Throws ltxmps::Error naming the input or setting when the request cannot run on `model`: shapes,
  ///        frame counts and sizes against the original's, values outside [0, 1], an empty mask, the
  ///        refinement's settings. Checked before any model runs.
  void validate(const LtxModel& model) const;
};

/// @brief What the composition returns (float32 on the CPU).
struct CompositionResult {
  /// The foreground layer [F, 3, H, W] in [0, 1]: the decoded latent difference outside the object mask, the
  /// original's pixels inside it, times the total mask (so mid-grey, 0 in model range, outside it).
  at::Tensor foreground;
  /// [F, 1, H, W] 0/1: where the decoded total mask is above 0 in any channel (the layer's opaque part).
  at::Tensor alpha;
  ///@{
  /// The decoded object and total masks [F, 3, H, W] in model range, before the > 0 test that binarizes them.
  at::Tensor decoded_object_mask, decoded_total_mask;
  ///@}
  /// With a new background: the decoded latent addition (new background + foreground latents) outside the object
  /// mask, the original's pixels inside it; [F, 3, H, W] in [0, 1].
  std::optional<at::Tensor> latent_addition;
  /// The same before post-processing: [1, 3, F, H, W] in model range, unclamped (what the refinement encodes).
  std::optional<at::Tensor> latent_addition_raw;
  std::optional<at::Tensor> refinement;          ///< the refined composite [F, 3, H, W] in [0, 1]
  std::optional<at::Tensor> refinement_latents;  ///< its input: normalized latents [1, C, F', H', W']

  /// @brief The foreground with its alpha, [F, 4, H, W] in [0, 1] (RGBA, straight alpha).
  at::Tensor foreground_rgba() const;
};

/// @brief What refine_composite() returns.
struct RefinementResult {
  at::Tensor frames;   ///< [F, 3, H, W] float32 in [0, 1] (CPU)
  at::Tensor latents;  ///< the pipeline's input latents [1, C, F', H', W']: the normalized posterior sample (CPU)
};

/// @brief The official refinement: `latent_addition` ([1, 3, F, H, W] in model range, unclamped) is VAE-encoded,
///        its posterior sampled from a CPU generator seeded `settings.seed` and normalized (latents_mean /
///        latents_std, scaling factor 1), and LTXConditionPipeline denoises it from `settings.strength` with a
///        fresh generator of the same seed.
RefinementResult refine_composite(LtxModel& model, const at::Tensor& latent_addition,
                                  const RefinementSettings& settings,
                                  const ltxmps::ExecutionPlan& plan,
                                  const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(),
                                  const ProgressCallback& progress = {});

/// @brief The official foreground extraction and composition: each input VAE-encoded (posterior mode,
///        un-normalized), z_fg = z_original - z_background and, with a new background, z = z_new + z_fg; z,
///        z_fg and the two masks decoded with `compose_timestep`; the decoded masks binarized per channel (> 0);
///        the foreground layer and the latent addition with the original's pixels inside the object mask; then
///        refine_composite() on the latent addition. No random draw before the refinement. Throws
///        ltxmps::Error on bad input or NaN; a decoded mask with no pixel above 0 is reported to `sink`.
CompositionResult compose(LtxModel& model, const ForegroundRequest& request, const ltxmps::ExecutionPlan& plan,
                          const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(),
                          const ProgressCallback& progress = {});

}  // namespace ltxmps::pipeline
