// The two-pass flow of LTX-Video 0.9.7 / 0.9.8 (diffusers' documented LTXConditionPipeline ->
// LTXLatentUpsamplePipeline -> LTXConditionPipeline example), composed from condition() and upsample_latents().
// Random draws (Note [One generator, diffusers' order of draws]): those of the first condition pass from a
// generator seeded with `seed`, none while upsampling, then those of the second pass from a fresh generator seeded
// with `seed` again (the example passes torch.Generator().manual_seed(0) to each call).
//
// Note [Multi-scale sizes]
// The example computes the first pass size as int(size * downscale_factor) and then
// round_to_nearest_resolution_acceptable_by_vae, which rounds *down* to a multiple of the VAE's spatial
// compression (x - x % 32); the second pass runs at twice that (the upsampler doubles H and W) and the frames are
// finally resized to the requested size. The same double arithmetic is used here, so 480x832 at 2/3 gives the
// example's 320x544 first pass and 640x1088 second pass. (The 0.9.7-dev example rounds with the temporal ratio,
// 8, which is a slip in the documentation: for its own 768x1152 both give 512x768.)

#include "ltxmps_pipeline/multi_scale.hpp"

#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/stages.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/offload.hpp"

#include <cmath>

namespace ltxmps::pipeline {

MultiScaleRequest::MultiScaleRequest() {
  num_inference_steps = 30;
  guidance_scale = 5.0;
  guidance_rescale = 0.7;
  decode_timestep = 0.05;
  decode_noise_scale = 0.025;
}

void MultiScaleRequest::use_distilled_defaults() {
  guidance_scale = 1.0;
  first_pass_timesteps = DistilledSchedule::first_pass();
  second_pass_timesteps = DistilledSchedule::second_pass();
  second_pass_strength = 0.999;
  upsample.adain_factor = 1.0;
}

std::string MultiScaleSizes::describe(double scale) const {
  const auto scaled_h = static_cast<int64_t>(static_cast<double>(height) * scale);
  const auto scaled_w = static_cast<int64_t>(static_cast<double>(width) * scale);
  std::string out = c10::str("first pass ", first_width, "x", first_height, " (", width, "x", height, " x ", scale);
  if (rounded) out += c10::str(" = ", scaled_w, "x", scaled_h, ", rounded down to the VAE's unit");
  out += c10::str("), second pass ", second_width, "x", second_height, " (upsampled latents)");
  if (second_height != height || second_width != width)
    out += c10::str(", frames resized to ", width, "x", height, " at the end");
  return out;
}

MultiScaleSizes MultiScaleRequest::check(const VaeConfig& vae, const TransformerConfig& transformer,
                                         const LatentUpsamplerConfig& upsampler) const {
  const std::string what = "multi-scale";
  LTXMPS_CHECK(std::isfinite(first_pass_scale) && first_pass_scale > 0 && first_pass_scale <= 1, what,
               ": first_pass_scale must be in (0, 1], got ", first_pass_scale);
  LTXMPS_CHECK(num_inference_steps >= 1 || first_pass_timesteps, what,
               ": the first pass needs >= 1 step or custom timesteps, got ", num_inference_steps);
  LTXMPS_CHECK(second_pass_steps >= 1 || second_pass_timesteps, what,
               ": the second pass needs >= 1 step or custom timesteps, got ", second_pass_steps);
  LTXMPS_CHECK(second_pass_strength > 0 && second_pass_strength <= 1, what,
               ": second_pass_strength must be in (0, 1], got ", second_pass_strength);
  LTXMPS_CHECK(std::isfinite(image_cond_noise_scale) && image_cond_noise_scale >= 0, what,
               ": image_cond_noise_scale must be >= 0, got ", image_cond_noise_scale);
  check_custom_timesteps(first_pass_timesteps, "first-pass timesteps");
  check_custom_timesteps(second_pass_timesteps, "second-pass timesteps");
  upsample.validate(what);
  LTXMPS_CHECK(upsampler.in_channels == vae.latent_channels, what, ": the latent upsampler takes ",
               upsampler.in_channels, " latent channels, the model's VAE has ", vae.latent_channels,
               ": use the upsampler released with this model");
  LTXMPS_CHECK(!upsampler.temporal_upsample, what, ": the latent upsampler upsamples time (frames F -> 2F - 1); "
               "the two-pass flow keeps the frame count and takes a spatial upsampler");
  MultiScaleSizes s;
  s.height = height;
  s.width = width;
  const int64_t unit = vae.spatial_compression();
  const auto scaled_h = static_cast<int64_t>(static_cast<double>(height) * first_pass_scale);
  const auto scaled_w = static_cast<int64_t>(static_cast<double>(width) * first_pass_scale);
  s.first_height = scaled_h - scaled_h % unit;  // Note [Multi-scale sizes]
  s.first_width = scaled_w - scaled_w % unit;
  s.rounded = s.first_height != scaled_h || s.first_width != scaled_w;
  LTXMPS_CHECK(s.first_height > 0 && s.first_width > 0, what, ": ", width, "x", height, " x ", first_pass_scale, " = ",
               scaled_w, "x", scaled_h, " leaves no first pass once rounded down to multiples of ", unit,
               " (the VAE's spatial compression); ask for a larger size or a larger first-pass scale");
  s.second_height = s.first_height * upsampler.spatial_factor();
  s.second_width = s.first_width * upsampler.spatial_factor();
  (void)LatentGrid::make(vae, transformer, num_frames, s.first_height, s.first_width, what + " (first pass)");
  (void)LatentGrid::make(vae, transformer, num_frames, s.second_height, s.second_width, what + " (second pass)");
  return s;
}

namespace {

/// Pixels [F, 3, H, W] resized to height x width (bilinear, antialiased), unchanged at that size.
at::Tensor resize_frames(const at::Tensor& frames, int64_t height, int64_t width) {
  if (frames.size(-2) == height && frames.size(-1) == width) return frames;
  return at::_upsample_bilinear2d_aa(frames.to(at::kFloat), {height, width}, /*align_corners=*/false);
}

/// One condition pass of the flow at height x width: the shared settings, the conditions resized to it.
ConditionRequest pass_request(const MultiScaleRequest& r, int64_t height, int64_t width) {
  ConditionRequest c;
  static_cast<GenerationSettings&>(c) = r;
  c.height = height;
  c.width = width;
  c.image_cond_noise_scale = r.image_cond_noise_scale;
  if (r.image) {
    LTXMPS_CHECK(r.image->dim() == 3, "multi-scale: the image must be [3, H, W], got ", r.image->sizes());
    c.image = resize_frames(r.image->unsqueeze(0), height, width)[0];
  }
  for (const auto& condition : r.conditions) {
    LTXMPS_CHECK(condition.frames.defined() && condition.frames.dim() == 4, "multi-scale: a condition must be frames ",
                 "[F, 3, H, W], got ", condition.frames.defined() ? condition.frames.sizes() : at::IntArrayRef{});
    c.conditions.push_back({resize_frames(condition.frames, height, width), condition.frame_index, condition.strength});
  }
  return c;
}

at::Tensor upsample_between_passes(LatentUpsamplerModel& upsampler, const LtxModel& model, const at::Tensor& latents,
                                   const MultiScaleRequest& r, const ltxmps::ExecutionPlan& plan,
                                   const ltxmps::DiagnosticSink& sink, const ProgressCallback& progress) {
  report(progress, "upsample", 0, 1);
  at::Tensor out;
  {
    ltxmps::OffloadScope offload(plan.offload, [&](const c10::Device& d) { move_model(upsampler, d); },
                                 "latent upsampler", sink);
    out = upsample_latents(upsampler, model.vae, latents, r.upsample);
  }
  report(progress, "upsample", 1, 1);
  return out;
}

}  // namespace

MultiScaleResult multi_scale(LtxModel& model, LatentUpsamplerModel& upsampler, const MultiScaleRequest& r,
                             const ltxmps::ExecutionPlan& plan, const ltxmps::DiagnosticSink& sink,
                             const ProgressCallback& progress) {
  MultiScaleResult out;
  out.sizes = r.check(model.vae.config, model.transformer.config, upsampler.config);
  sink(ltxmps::Diagnostic{ltxmps::Severity::info, "pipeline", "pipeline.multi_scale_sizes",
                          out.sizes.describe(r.first_pass_scale)});
  ConditionRequest first = pass_request(r, out.sizes.first_height, out.sizes.first_width);
  ConditionRequest second = pass_request(r, out.sizes.second_height, out.sizes.second_width);
  first.validate(model, "multi-scale (first pass)");
  second.validate(model, "multi-scale (second pass)");
  if (!r.prompt_embeddings) {
    // Both passes take the same prompts: encode them once (T5 is released afterwards).
    StageContext ctx(model, plan, sink, progress, r.seed);
    first.prompt_embeddings = second.prompt_embeddings = text_embeddings(ctx, r.prompt_request(256, true));
  }
  first.timesteps = r.first_pass_timesteps;
  first.output_latents = true;
  const auto first_result = condition(model, first, plan, sink, progress);
  out.first_pass_latents = first_result.normalized_latents.to(at::kCPU).contiguous();

  const auto upsampled = upsample_between_passes(upsampler, model, first_result.normalized_latents, r, plan, sink,
                                                 progress);
  out.upsampled_latents = upsampled.to(at::kCPU, at::kFloat).contiguous();

  second.num_inference_steps = r.second_pass_steps;
  second.timesteps = r.second_pass_timesteps;
  second.denoise_strength = r.second_pass_strength;
  second.latents = upsampled;
  auto result = condition(model, second, plan, sink, progress);
  out.latents = result.latents;
  out.frames = result.frames;
  if (out.sizes.second_height != r.height || out.sizes.second_width != r.width) {
    const auto f = out.frames.sizes();
    const auto flat = out.frames.reshape({f[0] * f[1], f[2], f[3], f[4]});
    out.resized_frames = at::_upsample_bicubic2d_aa(flat, {r.height, r.width}, /*align_corners=*/false)
                             .clamp(0, 1)
                             .reshape({f[0], f[1], f[2], r.height, r.width})
                             .contiguous();
  }
  return out;
}

}  // namespace ltxmps::pipeline
