// LTXLatentUpsamplePipeline (diffusers 0.42.1 pipelines/ltx/pipeline_ltx_latent_upsample.py).
// Random draws (Note [One generator, diffusers' order of draws]): with a video input, one posterior sample;
// with frame output and a timestep-conditioned VAE, the decode noise.
//
// Note [Upsampler normalization]
// The denoising loops carry latents normalized per channel ((z - mean) · scaling_factor / std); the VAE and the
// upsampler work on un-normalized ones. diffusers' pipeline denormalizes its `latents` input with the VAE's
// scaling_factor, upsamples, filters, and for output_type="latent" normalizes again with the same factor, so
// that its output goes straight back into LTXConditionPipeline(latents=...) (which, with output_type="latent",
// also returned normalized latents): normalized in, normalized out. A video input is encoded and normalized
// with scaling factor 1 (prepare_latents calls _normalize_latents without the factor) and then denormalized
// with the VAE's factor; every released VAE has factor 1, and this port keeps diffusers' order either way.
// AdaIN matches the upsampled latents to the statistics of the *un-normalized* input.

#include "ltxmps_pipeline/latent_upsample.hpp"

#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/stages.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/offload.hpp"

#include <cmath>

namespace ltxmps::pipeline {

void LatentUpsampleOptions::validate(const std::string& what) const {
  LTXMPS_CHECK(std::isfinite(adain_factor), what, ": adain_factor must be finite, got ", adain_factor);
  LTXMPS_CHECK(tone_map_compression_ratio >= 0.0 && tone_map_compression_ratio <= 1.0, what,
               ": tone_map_compression_ratio must be in [0, 1], got ", tone_map_compression_ratio);
}

at::Tensor adain_filter_latent(const at::Tensor& latents, const at::Tensor& reference, double factor) {
  LTXMPS_CHECK(latents.dim() >= 2 && reference.dim() == latents.dim() && reference.size(0) == latents.size(0) &&
                   reference.size(1) == latents.size(1),
               "adain_filter_latent: the reference ", reference.sizes(), " must have the batch and channels of the "
               "latents ", latents.sizes());
  // torch.std_mean(x[i, c], dim=None) per sample and channel: the unbiased std over all other axes.
  std::vector<int64_t> axes;
  for (int64_t d = 2; d < latents.dim(); ++d) axes.push_back(d);
  const auto ref = reference.to(latents.device(), latents.scalar_type());
  const auto [r_sd, r_mean] = at::std_mean(ref, axes, /*unbiased=*/true, /*keepdim=*/true);
  const auto [i_sd, i_mean] = at::std_mean(latents, axes, /*unbiased=*/true, /*keepdim=*/true);
  const auto matched = ((latents - i_mean) / i_sd) * r_sd + r_mean;
  return at::lerp(latents, matched, factor);
}

at::Tensor tone_map_latents(const at::Tensor& latents, double compression) {
  const double scale_factor = compression * 0.75;
  const auto sigmoid_term = at::sigmoid((at::abs(latents) - 1.0) * (4.0 * scale_factor));
  const auto scales = 1.0 - sigmoid_term * (0.8 * scale_factor);
  return latents * scales;
}

at::Tensor upsample_denormalized_latents(const LatentUpsamplerModel& upsampler, const at::Tensor& latents,
                                         const LatentUpsampleOptions& options) {
  options.validate();
  const auto input = latents.to(upsampler.runtime.device, upsampler.runtime.dtype);
  auto out = upsampler.forward(input);
  if (options.adain_factor > 0.0) out = adain_filter_latent(out, input, options.adain_factor);
  if (options.tone_map_compression_ratio > 0.0) out = tone_map_latents(out, options.tone_map_compression_ratio);
  return out;
}

namespace {

void check_upsampler_matches_vae(const LatentUpsamplerModel& upsampler, const VaeModel& vae, const std::string& what) {
  LTXMPS_CHECK(upsampler.config.in_channels == vae.config.latent_channels, what, ": the latent upsampler takes ",
               upsampler.config.in_channels, " channels but the VAE's latents have ", vae.config.latent_channels,
               " (latent_channels): the upsampler belongs to another model");
}

void check_latents(const at::Tensor& latents, int64_t channels, const std::string& what) {
  LTXMPS_CHECK(latents.defined() && latents.dim() == 5, what, ": expected latents [B, C, F, H, W], got ",
               latents.defined() ? latents.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(at::isFloatingType(latents.scalar_type()), what, ": latents must be floating point, got ",
               latents.scalar_type());
  LTXMPS_CHECK(latents.size(1) == channels, what, ": latents ", latents.sizes(), " have ", latents.size(1),
               " channels, the VAE and upsampler expect ", channels);
  LTXMPS_CHECK(latents.numel() > 0, what, ": latents ", latents.sizes(), " are empty");
}

}  // namespace

at::Tensor upsample_latents(const LatentUpsamplerModel& upsampler, const VaeModel& vae, const at::Tensor& latents,
                            const LatentUpsampleOptions& options) {
  const std::string what = "upsample_latents";
  check_upsampler_matches_vae(upsampler, vae, what);
  check_latents(latents, vae.config.latent_channels, what);
  options.validate(what);
  // Note [Upsampler normalization]
  const auto scaling = vae.config.scaling_factor;
  const auto denormalized = vae.denormalize_latents(latents.to(upsampler.runtime.device, at::kFloat), scaling);
  const auto upsampled = upsample_denormalized_latents(upsampler, denormalized, options);
  return vae.normalize_latents(upsampled, scaling).to(at::kFloat);
}

// ---------------------------------------------------------------------------------------------------
// The pipeline

void LatentUpsampleRequest::validate(const LtxModel& model, const LatentUpsamplerModel& upsampler) const {
  const std::string what = "upsample";
  const auto& vae = model.vae.config;
  LTXMPS_CHECK(latents.has_value() != video.has_value(), what, ": give exactly one of latents and video (got ",
               latents && video ? "both" : "neither", ")");
  check_upsampler_matches_vae(upsampler, model.vae, what);
  options.validate(what);
  LTXMPS_CHECK(std::isfinite(decode_timestep) && (!decode_noise_scale || std::isfinite(*decode_noise_scale)), what,
               ": decode_timestep and decode_noise_scale must be finite");
  if (latents) {
    check_latents(*latents, vae.latent_channels, what);
    return;
  }
  const auto& v = *video;
  const int64_t unit = vae.spatial_compression();
  LTXMPS_CHECK(v.defined() && v.dim() == 4 && v.size(1) == vae.in_channels && v.size(0) >= 1, what,
               ": expected the video as frames [F, ", vae.in_channels, ", H, W], got ",
               v.defined() ? v.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(at::isFloatingType(v.scalar_type()), what, ": video frames must be floating point, got ",
               v.scalar_type());
  LTXMPS_CHECK(v.size(2) > 0 && v.size(3) > 0 && v.size(2) % unit == 0 && v.size(3) % unit == 0, what,
               ": the video's frames are ", v.size(2), "x", v.size(3), "; height and width must be multiples of ", unit,
               " (the VAE's spatial compression): resize or crop them first");
}

namespace {

// diffusers keeps the first k · temporal_compression + 1 frames. (For a count that is a multiple of the
// compression diffusers' formula gives one frame more than there are, and the slice keeps them all, which its
// VAE then cannot encode as a k·c + 1 clip; here the largest valid count is kept in every case.)
at::Tensor truncate_frames(StageContext& ctx, const at::Tensor& frames) {
  const int64_t tc = ctx.model.vae.config.temporal_compression();
  const int64_t count = frames.size(0);
  if (count % tc == 1 || tc == 1) return frames;
  const int64_t keep = (count - 1) / tc * tc + 1;
  ctx.sink(ltxmps::Diagnostic{ltxmps::Severity::warning, "upsample", "upsample.truncate_frames",
                              c10::str("video length expected to be of the form k * ", tc, " + 1 but is ", count,
                                       "; truncating to ", keep, " frames")});
  return frames.slice(0, 0, keep);
}

// prepare_latents for a video: [F, 3, H, W] -> [1, 3, F, H, W] in [-1, 1], encoded, sampled, normalized.
at::Tensor encode_video(StageContext& ctx, const at::Tensor& frames) {
  const auto pixels = to_model_range(truncate_frames(ctx, frames).to(at::kFloat)).permute({1, 0, 2, 3}).unsqueeze(0);
  const auto posteriors = encode_videos(ctx, {pixels});
  return sample_normalized(ctx, posteriors.at(0));
}

}  // namespace

LatentUpsampleResult latent_upsample(LtxModel& model, LatentUpsamplerModel& upsampler, const LatentUpsampleRequest& r,
                                     const ltxmps::ExecutionPlan& plan, const ltxmps::DiagnosticSink& sink,
                                     const ProgressCallback& progress) {
  r.validate(model, upsampler);
  StageContext ctx(model, plan, sink, progress, r.seed);
  const auto& vae = model.vae;
  const auto normalized = r.latents ? r.latents->to(ctx.device, at::kFloat) : encode_video(ctx, *r.video);
  at::Tensor upsampled;  // un-normalized, in the upsampler's dtype
  throw_if_cancelled();
  report(progress, "upsample", 0, 1);
  {
    ltxmps::ReleaseMemoryScope release(ctx.device, "latent upsample", ctx.sink);
    ltxmps::OffloadScope offload(ctx.plan.offload, [&](const c10::Device& d) { move_model(upsampler, d); },
                                 "latent_upsampler", ctx.sink);
    // Note [Upsampler normalization]
    const auto denormalized = vae.denormalize_latents(normalized, vae.config.scaling_factor);
    upsampled = upsample_denormalized_latents(upsampler, denormalized, r.options).to(ctx.device);
  }
  report(progress, "upsample", 1, 1);
  LatentUpsampleResult result;
  result.latents = vae.normalize_latents(upsampled, vae.config.scaling_factor).to(at::kCPU, at::kFloat).contiguous();
  if (r.output_latents) return result;
  // decode_latents() denormalizes what it is given; normalizing in float32 first keeps the round trip exact to
  // float32 rounding, so the decoder sees diffusers' un-normalized latents.
  DecodeSettings decode;
  decode.decode_timestep = r.decode_timestep;
  decode.decode_noise_scale = r.decode_noise_scale;
  decode.latents_dtype = upsampler.runtime.dtype;  // diffusers mixes the decode noise in the upsampler's dtype
  const auto renormalized = vae.normalize_latents(upsampled.to(at::kFloat), vae.config.scaling_factor);
  result.frames = decode_latents(ctx, renormalized, decode).frames;
  return result;
}

}  // namespace ltxmps::pipeline
