#pragma once
/// @file synthetic_clip.hpp
/// @brief A short synthetic clip for trying object removal without data: a textured background, a moving
///        object and its moving shadow, with the object's mask (shadow excluded) and the total mask.

#include <ATen/ATen.h>

#include <cstdint>

namespace ltxmps::pipeline {

/// @brief The clip and its masks (CPU, float32).
struct SyntheticClip {
  at::Tensor video;        ///< [F, 3, H, W] in [0, 1]
  at::Tensor object_mask;  ///< [F, 1, H, W], 1 on the object (its shadow excluded)
  at::Tensor total_mask;   ///< [F, 1, H, W], 1 on the object or its shadow
};

/// @brief Draws the clip: a sinusoidal texture with seeded noise, a disc moving left to right and a darker
///        ellipse (its shadow) below and behind it. Deterministic for a seed; sizes must be positive.
SyntheticClip make_synthetic_clip(int64_t frames, int64_t height, int64_t width, uint64_t seed = 0);

}  // namespace ltxmps::pipeline
