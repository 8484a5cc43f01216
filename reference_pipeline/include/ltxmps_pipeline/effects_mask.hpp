#pragma once
/// @file effects_mask.hpp
/// @brief The "total" mask of OmnimatteZero object removal: the object plus the effects it causes
///        (shadows, reflections), found from LTX-Video's self-attention.
///
/// The pipeline runs one transformer forward on the noised clip (σ = 0.5, empty prompt) with the
/// capture of an `EffectsScoreAccumulator`. For every query token the score is the attention mass it
/// gives to the object's tokens, averaged over heads and over the captured `attn1` layers. The scores
/// are upsampled to the video (`upsample_scores`), thresholded (`threshold_scores`), dilated
/// (`dilate_mask`) and joined with the object mask (`union_masks`); `effects_mask_from_scores` chains
/// the four. Each step reproduces the official OmnimatteZero code, except that the maps are reduced
/// chunk by chunk (O(N) memory, see Note [O(N) effects reduction] in effects_mask.cpp) and always in
/// float32.

#include "ltxmps_pipeline/transformer.hpp"

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace ltxmps::pipeline {

/// @brief Options of the effects mask. Error messages name them as the `effects-mask` command's
///        flags (`--threshold`, `--dilation`, `--layers`, `--query-chunk`).
struct EffectsMaskOptions {
  /// Scores strictly above this value are effects; empty: adaptive, mean + 0.5·std (unbiased) of
  /// the upsampled scores. OmnimatteZero's script defaults to adaptive; its README suggests 0.07.
  std::optional<double> threshold;
  /// Side of the square dilation kernel (odd, >= 1; 1 leaves the thresholded mask as it is).
  int64_t dilation = 3;
  /// Transformer blocks whose `attn1` is captured; empty: all of them (the official choice).
  std::vector<int64_t> layers;
  /// false: q/k after RMSNorm and before RoPE, as the official maps; true: the model's true attention.
  bool apply_rope = false;
  /// Query rows per fused attention call of the reduction (Note [O(N) effects reduction]); bounds the score
  /// buffer of the written-out (upcast) kernel to heads·query_chunk·N float32 values.
  int64_t query_chunk = 512;

  /// @brief Throws ltxmps::Error naming the option when a value is unusable for a transformer with
  ///        `num_layers` blocks (layer out of range or listed twice, even or non-positive dilation,
  ///        non-finite threshold, query_chunk < 1).
  void validate(int64_t num_layers) const;
  /// @brief The layers to capture: `layers`, or 0 .. num_layers - 1 when it is empty. Validates first.
  std::vector<int64_t> resolved_layers(int64_t num_layers) const;
};

/// @brief The object's latent tokens: float32 `[latent_frames, latent_height, latent_width]` of 0/1.
///
/// Latent frame t reads pixel frame `min(temporal_compression·t, T - 1)`, resized with
/// `F.interpolate(size=(h, w), mode="nearest")` (torch's own kernel): the token is the pixel at
/// `(floor(i·H/h), floor(j·W/w))`, the top-left corner of its block, so a thin object may have no
/// token in some latent frame.
/// @param object_mask `[T, H, W]`, bool or 0/1 of any real dtype.
/// @param latent_frames, latent_height, latent_width the latent grid (the output's shape).
/// @param temporal_compression pixel frames per latent frame (the VAE's temporal compression).
at::Tensor object_token_mask(const at::Tensor& object_mask, int64_t latent_frames, int64_t latent_height,
                             int64_t latent_width, int64_t temporal_compression);

/// @brief Reduces captured self-attention to per-token effects scores without keeping any map.
///
/// `capture()` returns an `AttentionCapture` whose visitor turns each chunk of probabilities
/// `[1, heads, rows, N]` into `rows` scores (head mean of the attention mass on object tokens) and
/// adds them to a float32 accumulator `[N]` kept on the probabilities' device. After one forward,
/// `scores()` divides by the number of requested layers. The capture shares the accumulator's
/// state, so copies of either stay valid. Batch 1 only, as the official extraction.
class EffectsScoreAccumulator {
 public:
  /// @param object_tokens `[F', h, w]` 0/1 (`object_token_mask`), flattened in token order (f, y, x).
  /// @param layers the requested layers: non-empty, non-negative, no repeats.
  EffectsScoreAccumulator(const at::Tensor& object_tokens, std::vector<int64_t> layers);

  /// @brief A capture of the requested layers for `TransformerModel::forward`.
  /// @param query_chunk query rows per attention call of the reduction.
  /// @param apply_rope see `AttentionCapture::apply_rope` (false for the official maps).
  AttentionCapture capture(int64_t query_chunk, bool apply_rope) const;

  /// @brief float32 `[F', h, w]` on the accumulator's device: the per-layer sums divided by
  ///        `L + 1e-8`, L the number of requested layers. Throws unless every requested layer was
  ///        captured exactly once for all N query tokens.
  at::Tensor scores() const;

  /// @brief The requested layers, in the given order.
  const std::vector<int64_t>& layers() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

/// @brief Scores `[F', h, w]` to float32 `[frames, height, width]`: bilinear per latent frame to
///        (height, width), then trilinear over `[1, 1, F', height, width]` to `[1, 1, frames,
///        height, width]`, both with align_corners=false (torch's kernels, on the scores' device).
///
/// The trilinear pass is spatially the identity; in time it spreads the F' frames uniformly over
/// `frames` (source index `(t + 0.5)·F'/frames - 0.5`, clamped at 0), as the official code does,
/// which is not the k ↔ 8k alignment `object_token_mask` uses.
at::Tensor upsample_scores(const at::Tensor& scores, int64_t frames, int64_t height, int64_t width);

/// @brief A thresholded score volume.
struct ThresholdedScores {
  at::Tensor mask;   ///< bool, the shape of the scores: `scores > threshold`
  double threshold;  ///< the value used (the adaptive one when none was given)
};

/// @brief `scores > threshold` (strict). Without `threshold`, the threshold is
///        `mean + 0.5·std` over the whole volume with the unbiased std, computed as a 0-dim tensor
///        in the scores' dtype, as the official code does.
ThresholdedScores threshold_scores(const at::Tensor& scores, std::optional<double> threshold);

/// @brief Per-frame dilation of `mask [T, H, W]` (bool or 0/1) by a `kernel_size`² square:
///        `conv2d(frame, ones(k, k), padding=k/2) > 0` with zero padding. Returns bool `[T, H, W]`.
///        `kernel_size` must be odd (an even one would make every frame one pixel larger); 1 copies.
at::Tensor dilate_mask(const at::Tensor& mask, int64_t kernel_size);

/// @brief Bool `object_mask ∪ effects_mask`; both `[T, H, W]`, bool or 0/1, of one shape.
at::Tensor union_masks(const at::Tensor& object_mask, const at::Tensor& effects_mask);

/// @brief The masks of `effects_mask_from_scores`.
struct EffectsMask {
  at::Tensor total;    ///< bool `[T, H, W]`: object ∪ effects
  at::Tensor effects;  ///< bool `[T, H, W]`: the dilated thresholded scores alone
  double threshold;    ///< the threshold used
};

/// @brief Upsamples `scores [F', h, w]` to the object mask's `[T, H, W]`, thresholds with
///        `options.threshold`, dilates by `options.dilation` and joins the object mask.
EffectsMask effects_mask_from_scores(const at::Tensor& scores, const at::Tensor& object_mask,
                                     const EffectsMaskOptions& options);

}  // namespace ltxmps::pipeline
