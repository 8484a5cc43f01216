// LatentGrid, fit_rules and diffusers' static latent helpers (pipeline_ltx.py / pipeline_ltx_condition.py).

#include "ltxmps_pipeline/latent_grid.hpp"

#include "ltxmps/error.hpp"

#include <c10/util/safe_numerics.h>

#include <algorithm>

namespace ltxmps::pipeline {

LatentGrid LatentGrid::make(const VaeConfig& vae, const TransformerConfig& transformer, int64_t frames, int64_t height,
                            int64_t width, const std::string& what) {
  LatentGrid g;
  g.spatial = vae.spatial_compression();
  g.temporal = vae.temporal_compression();
  g.patch = transformer.patch_size;
  g.patch_t = transformer.patch_size_t;
  const int64_t unit = g.spatial * g.patch;
  LTXMPS_CHECK(height > 0 && width > 0 && height % unit == 0 && width % unit == 0, what, ": height and width (", height,
               "x", width, ") must be positive multiples of ", unit, " (the VAE's spatial compression",
               g.patch > 1 ? " times the transformer patch size" : "", "; 32 for the released models): use for example ",
               std::max<int64_t>(unit, height / unit * unit), "x", std::max<int64_t>(unit, width / unit * unit));
  LTXMPS_CHECK(frames >= 1 && (frames - 1) % g.temporal == 0, what, ": num_frames (", frames, ") must be ", g.temporal,
               "k+1 (the VAE's temporal compression is ", g.temporal, "): use for example ",
               (std::max<int64_t>(frames - 1, 0) / g.temporal) * g.temporal + 1);
  g.frames = frames;
  g.height = height;
  g.width = width;
  LTXMPS_CHECK(g.latent_frames() % g.patch_t == 0, what, ": ", g.latent_frames(),
               " latent frames are not a multiple of the transformer's patch_size_t ", g.patch_t);
  return g;
}

FitRules fit_rules(const VaeConfig& vae, const TransformerConfig& transformer) {
  // Validated configs keep both factors far below 2^31; the check guards configs built in code.
  const auto product = [](int64_t a, int64_t b, const char* what) {
    int64_t out = 0;
    LTXMPS_CHECK(a > 0 && b > 0 && !c10::mul_overflows(a, b, &out), "the VAE's ", what, " compression ", a,
                 " times the transformer's patch size ", b, " is not a positive size (overflow or non-positive)");
    return out;
  };
  return {product(vae.spatial_compression(), transformer.patch_size, "spatial"),
          product(vae.temporal_compression(), transformer.patch_size_t, "temporal")};
}

at::Tensor LatentGrid::pack(const at::Tensor& latents) const { return pack_latents(latents, patch, patch_t); }

at::Tensor LatentGrid::unpack(const at::Tensor& tokens) const {
  return unpack_latents(tokens, token_frames(), token_height(), token_width(), patch, patch_t);
}

at::Tensor LatentGrid::video_ids(int64_t batch, const c10::Device& device, int64_t frames_override) const {
  const int64_t f = frames_override >= 0 ? frames_override : latent_frames();
  return prepare_video_ids(batch, f, latent_height(), latent_width(), patch, patch_t, device);
}

at::Tensor LatentGrid::pixel_ids(int64_t batch, const c10::Device& device, int64_t frame_index) const {
  return scale_video_ids(video_ids(batch, device), spatial, temporal, frame_index);
}

at::Tensor LatentGrid::rope_coords(int64_t batch, const c10::Device& device, double frame_rate) const {
  auto coords = pixel_ids(batch, device).to(at::kFloat);
  if (frame_rate > 0) coords.select(1, 0).copy_(coords.select(1, 0) * (1.0 / frame_rate));
  return coords;
}

at::Tensor pack_latents(const at::Tensor& x, int64_t p, int64_t pt) {
  const auto B = x.size(0), F = x.size(2), H = x.size(3), W = x.size(4);
  return x.reshape({B, -1, F / pt, pt, H / p, p, W / p, p})
      .permute({0, 2, 4, 6, 1, 3, 5, 7})
      .flatten(4, 7)
      .flatten(1, 3);
}

at::Tensor unpack_latents(const at::Tensor& x, int64_t F, int64_t H, int64_t W, int64_t p, int64_t pt) {
  return x.reshape({x.size(0), F, H, W, -1, pt, p, p})
      .permute({0, 4, 1, 5, 2, 6, 3, 7})
      .flatten(6, 7)
      .flatten(4, 5)
      .flatten(2, 3);
}

at::Tensor prepare_video_ids(int64_t B, int64_t F, int64_t H, int64_t W, int64_t p, int64_t pt, const c10::Device& d) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(d);
  auto grid = at::meshgrid({at::arange(0, F, pt, opts), at::arange(0, H, p, opts), at::arange(0, W, p, opts)}, "ij");
  return at::stack(grid, 0).unsqueeze(0).repeat({B, 1, 1, 1, 1}).reshape({B, -1, F * H * W});
}

at::Tensor scale_video_ids(const at::Tensor& ids, int64_t spatial, int64_t temporal, int64_t frame_index) {
  auto scaled = ids * at::tensor({temporal, spatial, spatial}, ids.options()).view({1, 3, 1});
  auto frames = scaled.select(1, 0);
  frames.copy_((frames + 1 - temporal).clamp_min(0) + frame_index);
  return scaled;
}

}  // namespace ltxmps::pipeline
