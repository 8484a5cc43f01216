#pragma once
/// @file latent_grid.hpp
/// @brief Pixels <-> latent frames/height/width <-> transformer tokens for one model, the size rules inputs are
///        fitted to (fit_rules()), and diffusers' static latent helpers (`_pack_latents`, `_unpack_latents`,
///        `_prepare_video_ids`, `_scale_video_ids`).

#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"
#include "ltxmps_pipeline/video_io.hpp"  // FitRules

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace ltxmps::pipeline {

/// @brief The latent grid of a video of `frames` x `height` x `width` pixels for one VAE + transformer.
///
/// The VAE compresses `temporal` frames (causally: F' = (F - 1) / temporal + 1) and `spatial` x `spatial`
/// pixels into one latent; the transformer groups `patch_t` x `patch` x `patch` latents into one token.
struct LatentGrid {
  ///@{
  /// The video's size in pixels: frames, height, width.
  int64_t frames = 1, height = 32, width = 32;
  ///@}
  ///@{
  /// The VAE's compression: pixels per latent in height and width (`spatial`) and in time (`temporal`).
  int64_t spatial = 32, temporal = 8;
  ///@}
  ///@{
  /// The transformer's patch sizes: latents per token in height and width (`patch`) and in time (`patch_t`).
  int64_t patch = 1, patch_t = 1;
  ///@}

  /// @brief The grid of a pixel size for a model; throws ltxmps::Error naming `what` when the size does not
  ///        fit (height/width not multiples of spatial·patch, frames not temporal·k+1, latent frames not a
  ///        multiple of patch_t), with a size that would.
  static LatentGrid make(const VaeConfig& vae, const TransformerConfig& transformer, int64_t frames, int64_t height,
                         int64_t width, const std::string& what = "generate");

  int64_t latent_frames() const { return (frames - 1) / temporal + 1; }  ///< F' (the first frame alone, then groups)
  int64_t latent_height() const { return height / spatial; }            ///< H'
  int64_t latent_width() const { return width / spatial; }              ///< W'
  int64_t token_frames() const { return latent_frames() / patch_t; }    ///< frames of the token grid
  int64_t token_height() const { return latent_height() / patch; }      ///< rows of the token grid
  int64_t token_width() const { return latent_width() / patch; }        ///< columns of the token grid
  /// @brief Transformer tokens of one sample.
  int64_t tokens() const { return token_frames() * token_height() * token_width(); }

  /// @brief [B, C, F', H', W'] -> [B, tokens, C·patch_t·patch²].
  at::Tensor pack(const at::Tensor& latents) const;
  /// @brief [B, tokens, C·patch_t·patch²] -> [B, C, F', H', W'].
  at::Tensor unpack(const at::Tensor& tokens) const;
  /// @brief Integer (f, h, w) of each token in latent units, [B, 3, tokens] int64 (`latent_frames` overrides
  ///        the grid's frame count, for conditioning latents of another length).
  at::Tensor video_ids(int64_t batch, const c10::Device& device, int64_t latent_frames = -1) const;
  /// @brief Pixel-space token coordinates: video_ids() scaled by (temporal, spatial, spatial), the frame
  ///        coordinate causal-shifted (max(f·temporal + 1 - temporal, 0)) and offset by `frame_index`.
  at::Tensor pixel_ids(int64_t batch, const c10::Device& device, int64_t frame_index = 0) const;
  /// @brief RoPE coordinates of the condition pipeline: pixel_ids() as float32 with the frame coordinate
  ///        multiplied by 1/frame_rate; `frame_rate` <= 0 leaves it in frames (the effects pass does that).
  at::Tensor rope_coords(int64_t batch, const c10::Device& device, double frame_rate) const;
};

/// @brief The rules of a model (what fit_video() fits inputs to): the VAE's compression ratios times the
///        transformer's patch sizes. Throws ltxmps::Error when a product is not a positive int64.
FitRules fit_rules(const VaeConfig& vae, const TransformerConfig& transformer);

/// @brief diffusers `_pack_latents`: [B, C, F, H, W] -> [B, F/pt · H/p · W/p, C·pt·p·p].
at::Tensor pack_latents(const at::Tensor& latents, int64_t patch, int64_t patch_t);
/// @brief diffusers `_unpack_latents`; F, H, W are the token grid (after patchify).
at::Tensor unpack_latents(const at::Tensor& tokens, int64_t frames, int64_t height, int64_t width, int64_t patch,
                          int64_t patch_t);
/// @brief diffusers `_prepare_video_ids`: integer (f, h, w) of each token, [B, 3, S] int64.
at::Tensor prepare_video_ids(int64_t batch, int64_t frames, int64_t height, int64_t width, int64_t patch,
                             int64_t patch_t, const c10::Device& device);
/// @brief diffusers `_scale_video_ids`: pixel-space coordinates; the frame coordinate is causal-shifted and
///        offset by `frame_index`.
at::Tensor scale_video_ids(const at::Tensor& ids, int64_t spatial, int64_t temporal, int64_t frame_index);

}  // namespace ltxmps::pipeline
