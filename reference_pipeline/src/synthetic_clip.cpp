// The synthetic removal clip (synthetic_clip.hpp).

#include "ltxmps_pipeline/synthetic_clip.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/random.hpp"

namespace ltxmps::pipeline {

SyntheticClip make_synthetic_clip(int64_t frames, int64_t height, int64_t width, uint64_t seed) {
  LTXMPS_CHECK(frames >= 1 && height >= 8 && width >= 8, "synthetic clip: expected at least 1 frame of 8x8, got ",
               frames, " frames of ", width, "x", height);
  auto generator = ltxmps::make_cpu_generator(seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const auto y = at::arange(height, f32).view({1, height, 1});
  const auto x = at::arange(width, f32).view({1, 1, width});
  // Background: two crossed sinusoids per channel plus fixed noise (the same in every frame).
  const auto phase = at::tensor({0.0f, 1.3f, 2.6f}, f32).view({3, 1, 1});
  auto background = 0.5 + 0.2 * at::sin(x * 0.31 + phase) * at::cos(y * 0.23 - phase);
  background = (background + 0.05 * ltxmps::randn({3, height, width}, generator, f32)).clamp(0, 1);
  std::vector<at::Tensor> video, object, total;
  const double radius = 0.18 * static_cast<double>(std::min(height, width));
  for (int64_t f = 0; f < frames; ++f) {
    const double t = frames > 1 ? static_cast<double>(f) / static_cast<double>(frames - 1) : 0.5;
    const double cx = (0.25 + 0.5 * t) * static_cast<double>(width), cy = 0.4 * static_cast<double>(height);
    const auto disc = ((x - cx).pow(2) + (y - cy).pow(2) <= radius * radius).to(at::kFloat);            // [1, H, W]
    const double sx = cx + 0.6 * radius, sy = cy + 1.5 * radius;
    const auto ellipse = ((x - sx).pow(2) / (1.4 * radius * radius) + (y - sy).pow(2) / (0.3 * radius * radius) <= 1)
                             .to(at::kFloat);
    const auto shadow = ellipse * (1 - disc);
    const auto colour = at::tensor({0.85f, 0.2f, 0.15f}, f32).view({3, 1, 1});
    auto frame = background * (1 - 0.55 * shadow);
    frame = frame * (1 - disc) + colour * disc;
    video.push_back(frame);
    object.push_back(disc);
    total.push_back(at::maximum(disc, shadow));
  }
  return {at::stack(video, 0).contiguous(), at::stack(object, 0).contiguous(), at::stack(total, 0).contiguous()};
}

}  // namespace ltxmps::pipeline
