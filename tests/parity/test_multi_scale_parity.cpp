// The two-pass flow (multi_scale.hpp) against diffusers' documented LTX-Video 0.9.7/0.9.8 example on small random
// components (tests/parity/multi_scale_oracle.py writes the cases): first pass, upsampled latents, final latents
// and decoded frames, in CPU float32.

#include "catch_compat.hpp"
#include "parity_support.hpp"

#include "ltxmps_pipeline/json_file.hpp"
#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/multi_scale.hpp"
#include "ltxmps_pipeline/runtime.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace {

fs::path data_dir() { return ltxmps_test::parity_data_dir("multi_scale"); }

nlohmann::json find_case(const std::string& name) {
  for (const auto& c : read_json_file(data_dir() / "cases.json"))
    if (c.at("name") == name) return c;
  FAIL("no oracle case " << name);
  return {};
}

/// The request the documented example's arguments describe.
MultiScaleRequest request_of(const nlohmann::json& c) {
  MultiScaleRequest r;
  r.prompts = {c.at("prompt").get<std::string>()};
  r.negative_prompts = {c.at("negative_prompt").get<std::string>()};
  r.height = c.at("height");
  r.width = c.at("width");
  r.num_frames = c.at("num_frames");
  r.max_sequence_length = c.at("max_sequence_length").get<int64_t>();
  r.seed = c.at("seed");
  const auto& shared = c.at("shared");
  r.guidance_scale = shared.at("guidance_scale");
  r.guidance_rescale = shared.at("guidance_rescale");
  r.decode_timestep = shared.at("decode_timestep");
  r.decode_noise_scale = shared.at("decode_noise_scale").get<double>();
  r.image_cond_noise_scale = shared.at("image_cond_noise_scale");
  const auto& first = c.at("first");
  if (first.contains("timesteps")) r.first_pass_timesteps = first.at("timesteps").get<std::vector<double>>();
  if (first.contains("num_inference_steps")) r.num_inference_steps = first.at("num_inference_steps");
  const auto& up = c.at("upsample");
  r.upsample.adain_factor = up.value("adain_factor", 0.0);
  r.upsample.tone_map_compression_ratio = up.value("tone_map_compression_ratio", 0.0);
  const auto& second = c.at("second");
  if (second.contains("timesteps")) r.second_pass_timesteps = second.at("timesteps").get<std::vector<double>>();
  if (second.contains("num_inference_steps")) r.second_pass_steps = second.at("num_inference_steps");
  r.second_pass_strength = second.at("denoise_strength");
  return r;
}

/// Largest difference of two [0, 1] videos in 8-bit levels.
double level_error(const at::Tensor& out, const at::Tensor& ref) {
  REQUIRE(out.sizes() == ref.sizes());
  return ((out.to(at::kFloat) - ref.to(at::kFloat)).abs().max().item<double>()) * 255.0;
}

void check_case(const std::string& name, const MultiScaleRequest* given = nullptr) {
  const auto c = find_case(name);
  INFO("case " << name);
  const auto plan = ltxmps_test::cpu_fp32_plan();
  auto model = load_ltx_model(data_dir() / "cond", plan);
  auto upsampler = load_latent_upsampler(data_dir() / "upsampler", latent_upsampler_runtime(plan));
  const auto request = given ? *given : request_of(c);
  const auto result = multi_scale(model, upsampler, request, plan);

  CHECK(result.sizes.first_height == c.at("first_height").get<int64_t>());
  CHECK(result.sizes.first_width == c.at("first_width").get<int64_t>());
  CHECK(result.sizes.second_height == c.at("second_height").get<int64_t>());
  CHECK(result.sizes.second_width == c.at("second_width").get<int64_t>());

  const auto ref = ltxmps_test::read_tensors(data_dir() / "cases" / name / "reference.safetensors");
  const double bound = c.at("latent_bound");
  const double levels = c.at("frame_levels");
  CHECK(bound == 1e-4);
  CHECK(levels == 2);
  CHECK(ltxmps_test::scaled_error(result.first_pass_latents, ref.at("first")) <= bound);
  CHECK(ltxmps_test::scaled_error(result.upsampled_latents, ref.at("upsampled")) <= bound);
  CHECK(ltxmps_test::scaled_error(result.latents, ref.at("latents")) <= bound);
  CHECK(level_error(result.frames, ref.at("frames")) <= levels);
  // The requested size differs from the second pass's: the output is resized to it.
  if (result.sizes.second_height != request.height || result.sizes.second_width != request.width) {
    REQUIRE(result.resized_frames.defined());
    CHECK(result.resized_frames.size(3) == request.height);
    CHECK(result.resized_frames.size(4) == request.width);
  }
}

}  // namespace

TEST_CASE("multi-scale: 0.9.7-dev example (guidance 5, rescale 0.7, rounded first pass)", "[parity][multi_scale]") {
  check_case("dev");
}

TEST_CASE("multi-scale: distilled example (guidance 1, custom timesteps, AdaIN, tone map)", "[parity][multi_scale]") {
  check_case("distilled");
}

TEST_CASE("multi-scale: use_distilled_defaults() is the documented distilled setting", "[parity][multi_scale]") {
  const auto c = find_case("distilled");
  MultiScaleRequest r = request_of(c);
  MultiScaleRequest preset;
  preset.use_distilled_defaults();
  CHECK(preset.guidance_scale == 1.0);
  CHECK(preset.first_pass_timesteps == r.first_pass_timesteps);
  CHECK(preset.second_pass_timesteps == r.second_pass_timesteps);
  CHECK(preset.second_pass_strength == r.second_pass_strength);
  CHECK(preset.upsample.adain_factor == r.upsample.adain_factor);
  // The example's shared settings are the request's defaults (guidance aside).
  MultiScaleRequest defaults;
  CHECK(defaults.guidance_scale == 5.0);
  CHECK(defaults.guidance_rescale == r.guidance_rescale);
  CHECK(defaults.decode_timestep == r.decode_timestep);
  CHECK(defaults.decode_noise_scale == r.decode_noise_scale);
  CHECK(defaults.image_cond_noise_scale == r.image_cond_noise_scale);
  CHECK(defaults.first_pass_scale == 2.0 / 3.0);
}

TEST_CASE("multi-scale: sizes follow the documented rounding; bad inputs fail from the configs", "[multi_scale]") {
  VaeConfig vae;  // 0.9.0 defaults: spatial compression 32, 128 latent channels
  TransformerConfig transformer;
  LatentUpsamplerConfig up;
  MultiScaleRequest r;
  r.height = 480, r.width = 832, r.num_frames = 161;
  const auto s = r.check(vae, transformer, up);
  CHECK(s.first_height == 320);  // int(480 * 2/3) = 320
  CHECK(s.first_width == 544);   // int(832 * 2/3) = 554 -> 544
  CHECK(s.rounded);
  CHECK(s.second_height == 640);
  CHECK(s.second_width == 1088);
  r.height = 768, r.width = 1152;
  const auto t = r.check(vae, transformer, up);
  CHECK(t.first_height == 512);
  CHECK(t.first_width == 768);
  CHECK_FALSE(t.rounded);

  LatentUpsamplerConfig wrong = up;
  wrong.in_channels = 64;
  REQUIRE_THROWS_WITH(r.check(vae, transformer, wrong), ltxmps_test::ContainsAll({"64 latent channels", "128"}));
  LatentUpsamplerConfig temporal = up;
  temporal.temporal_upsample = true;
  REQUIRE_THROWS_WITH(r.check(vae, transformer, temporal), ltxmps_test::Contains("upsamples time"));
  MultiScaleRequest tiny = r;
  tiny.height = 40;
  REQUIRE_THROWS_WITH(tiny.check(vae, transformer, up), ltxmps_test::Contains("leaves no first pass"));
  MultiScaleRequest bad_steps = r;
  bad_steps.second_pass_timesteps = std::vector<double>{1000, std::nan("")};
  REQUIRE_THROWS_WITH(bad_steps.check(vae, transformer, up), ltxmps_test::Contains("second-pass timesteps[1]"));
  MultiScaleRequest bad_strength = r;
  bad_strength.second_pass_strength = 0;
  REQUIRE_THROWS_WITH(bad_strength.check(vae, transformer, up), ltxmps_test::Contains("second_pass_strength"));
}
