#pragma once
/// @file effects_pass.hpp
/// @brief OmnimatteZero's effects ("total") mask: the object's mask grown by what the object's latent tokens
///        draw attention from (its shadows, reflections) in one transformer forward, computed with O(N) memory
///        (effects_mask.hpp has the reduction). docs/object-removal.md explains the pass and its options.

#include "ltxmps_pipeline/effects_mask.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/progress.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/stages.hpp"

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

namespace ltxmps::pipeline {

/// @brief What the effects pass takes; the defaults are the official `self_attention_map.py`'s.
struct EffectsMaskRequest {
  at::Tensor video;        ///< [T, 3, H, W] float in [0, 1], T = 8k+1, H and W multiples of 32
  /// The object's mask [T, 1 or 3, H, W] float in [0, 1]; a pixel is object when its channel mean, mapped to
  /// [-1, 1], is above 0 (the official rule for this pass).
  at::Tensor object_mask;
  std::string prompt;                                 ///< "" (one EOS token and padding)
  std::optional<PromptEmbeddings> prompt_embeddings;  ///< the prompt's embeddings instead of the text encoder
  double extraction_sigma = 0.5;                      ///< noise level of the forward (timestep = 1000·σ)
  int64_t max_sequence_length = 256;  ///< tokens of the prompt
  uint64_t seed = 0;  ///< the video's posterior sample, then the noise, from one CPU generator
  EffectsMaskOptions options;         ///< layers, threshold, dilation, chunking of the mask

  /// @brief Throws ltxmps::Error naming the input when the request cannot run on `model`.
  void validate(const LtxModel& model) const;
  /// @brief The prompt to encode: one prompt, no guidance batch, the token mask passed to T5.
  PromptRequest prompt_request() const;
};

/// @brief What the effects pass returns (CPU tensors).
struct EffectsMaskResult {
  at::Tensor total_mask;     ///< uint8 [T, H, W], 1 = object or effect
  at::Tensor effects_mask;   ///< uint8 [T, H, W], the dilated thresholded scores alone
  at::Tensor object_mask;    ///< uint8 [T, H, W], the binarized object mask
  at::Tensor scores;         ///< float32 [F', H', W'] per latent token, before upsampling
  at::Tensor object_tokens;  ///< float32 [F', H', W'], the latent-grid object mask the reduction used
  at::Tensor upsampled;      ///< float32 [T, H, W]
  double threshold = 0.0;    ///< the threshold used (the adaptive one when none was given)
};

/// @brief The object mask of the effects pass: [T, C, H, W] in [0, 1] -> bool [T, H, W] (channel mean of
///        2x - 1 above 0).
at::Tensor effects_object_mask(const at::Tensor& mask);

/// @brief Runs the pass: VAE encode (posterior sample), the flow-matching mix at σ, one transformer forward
///        with the prompt and the attention capture of effects_mask.hpp, then upsampling, threshold, dilation
///        and the union with the object mask. Progress: "effects" per transformer layer.
EffectsMaskResult compute_effects_mask(LtxModel& model, const EffectsMaskRequest& request,
                                       const ltxmps::ExecutionPlan& plan,
                                       const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(),
                                       const ProgressCallback& progress = {});

}  // namespace ltxmps::pipeline
