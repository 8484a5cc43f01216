// Video object removal: OmnimatteZero's `my_prepare_latents` + `my_call` (docs/object-removal.md), built from
// the stages of stages.hpp and the per-token conditioning hooks that LTXConditionPipeline uses.
//
// Note [Removal normalization]
// The video's latents are normalized with latents_mean / latents_std and scaling factor 1 (the official code
// calls `_normalize_latents` without the config's scaling_factor) and denormalized for decoding with the
// config's scaling_factor; every released LTX VAE has scaling_factor 1, where the two agree.

#include "ltxmps_pipeline/removal.hpp"

#include "ltxmps_pipeline/latent_grid.hpp"

#include "ltxmps/error.hpp"

#include <cmath>

namespace ltxmps::pipeline {

namespace {

void check_frames(const at::Tensor& t, const char* what, int64_t channels_a, int64_t channels_b) {
  LTXMPS_CHECK(t.defined() && t.dim() == 4 && (t.size(1) == channels_a || t.size(1) == channels_b) &&
                   at::isFloatingType(t.scalar_type()),
               "remove: the ", what, " must be float frames [F, ", channels_a,
               channels_a != channels_b ? " or " + std::to_string(channels_b) : std::string(), ", H, W] in [0, 1], got ",
               t.defined() ? c10::str(t.scalar_type(), " ", t.sizes()) : std::string("nothing"));
}

}  // namespace

void RemovalRequest::validate(const LtxModel& model) const {
  check_frames(video, "video", 3, 3);
  check_frames(mask, "mask", 1, 3);
  LTXMPS_CHECK(mask.size(0) == video.size(0) && mask.size(2) == video.size(2) && mask.size(3) == video.size(3),
               "remove: the mask has ", mask.size(0), " frames of ", mask.size(3), "x", mask.size(2), ", the video ",
               video.size(0), " frames of ", video.size(3), "x", video.size(2), " (they must match; --fit adapts them)");
  (void)LatentGrid::make(model.vae.config, model.transformer.config, video.size(0), video.size(2), video.size(3),
                         "remove");
  LTXMPS_CHECK(model.transformer.config.patch_size == 1 && model.transformer.config.patch_size_t == 1,
               "remove: the transformer's patch size is ", model.transformer.config.patch_size_t, "x",
               model.transformer.config.patch_size, "x", model.transformer.config.patch_size,
               "; object removal maps one latent to one token (patch size 1, as every released LTX-Video model)");
  LTXMPS_CHECK(model.vae.config.timestep_conditioning || decode_timestep == 0.0,
               "remove: decode_timestep needs a timestep-conditioned VAE (0.9.5 and later)");
  LTXMPS_CHECK(num_inference_steps >= 1, "remove: num_inference_steps must be >= 1, got ", num_inference_steps);
  LTXMPS_CHECK(std::isfinite(guidance_scale) && guidance_scale >= 0, "remove: guidance_scale must be >= 0, got ",
               guidance_scale);
  LTXMPS_CHECK(std::isfinite(frame_rate) && frame_rate > 0, "remove: frame_rate must be > 0, got ", frame_rate);
  LTXMPS_CHECK(std::isfinite(image_cond_noise_scale) && image_cond_noise_scale >= 0,
               "remove: image_cond_noise_scale must be >= 0, got ", image_cond_noise_scale);
  LTXMPS_CHECK(std::isfinite(decode_timestep) && decode_timestep >= 0, "remove: decode_timestep must be >= 0");
  LTXMPS_CHECK(max_sequence_length >= 1, "remove: max_sequence_length must be >= 1");
  LTXMPS_CHECK(prompt_embeddings || !prompts.empty(), "remove: no prompt given");
  // 2m - 1 > 0 exactly where m > 0.5 (2m is exact), one pass instead of three.
  LTXMPS_CHECK((mask.to(at::kFloat) > 0.5).any().item<bool>(),
               "remove: the mask is empty (no pixel above mid-grey in any channel): nothing to remove");
}

PromptRequest RemovalRequest::prompt_request() const {
  PromptRequest pr;
  pr.prompts = prompts;
  pr.negative_prompts = negative_prompts;
  pr.embeddings = prompt_embeddings;
  pr.max_sequence_length = max_sequence_length;
  pr.encoder_attention_mask = true;
  pr.guidance = guidance_scale > 1.0;
  return pr;
}

at::Tensor removal_mask_pixels(const at::Tensor& mask, at::ScalarType dtype) {
  auto m = mask.to(at::kFloat) * 2.0 - 1.0;  // [F, C, H, W]
  m = at::where(m < 0, at::zeros_like(m), m);
  m = at::where(m > 0, at::full_like(m, 100.0), m).to(dtype);  // 0, 100 (or NaN): exact in any float dtype
  // A 1-channel mask is thresholded once and repeated to 3 channels by the layout copy.
  if (m.size(1) == 1) m = m.expand({m.size(0), 3, m.size(2), m.size(3)});
  return m.permute({1, 0, 2, 3}).unsqueeze(0).contiguous();
}

at::Tensor removal_token_mask(const at::Tensor& mask_latents) {
  const auto mean = mask_latents[0].mean(0);
  return ((mean > 0.01) | (mean < -0.01)).to(at::kFloat).unsqueeze(0).unsqueeze(0);
}

RemovalResult remove_object(LtxModel& model, const RemovalRequest& r, const ltxmps::ExecutionPlan& plan,
                            const ltxmps::DiagnosticSink& sink, const ProgressCallback& progress) {
  r.validate(model);
  const auto g = LatentGrid::make(model.vae.config, model.transformer.config, r.video.size(0), r.video.size(2),
                                  r.video.size(3), "remove");
  StageContext ctx(model, plan, sink, progress, r.seed);
  const auto prompts = encode_prompts(ctx, r.prompt_request());
  // Each crosses to the device as given and is mapped there when its encode comes (Note [Frames mapped on the
  // device]).
  const auto dtype = ctx.model.vae.runtime.dtype;
  const auto posteriors = encode_videos(ctx, {[&] { return frames_to_vae_input(ctx, r.video); },
                                              [&] { return removal_mask_pixels(r.mask.to(ctx.device), dtype); }});

  // my_prepare_latents, in the official order of draws.
  const int64_t C = model.transformer.config.in_channels;
  const auto noise = ctx.noise({1, C, g.latent_frames(), g.latent_height(), g.latent_width()});
  const auto video_latents = sample_normalized(ctx, posteriors[0]);
  const auto mask_latents = posteriors[1].sample(ctx.generator).to(ctx.device, at::kFloat);
  const auto m = removal_token_mask(mask_latents);
  LTXMPS_CHECK(m.sum().item<double>() > 0, "remove: the mask covers no latent token after VAE encoding (every ",
               g.spatial, "x", g.spatial, "-pixel block is too thin): nothing to remove; dilate the mask");
  auto latents = noise.clone();
  auto head = latents.slice(2, 0, video_latents.size(2));
  head.copy_(at::lerp(head, video_latents, 1.0));
  latents = latents * (1 - m) + noise * m;
  const auto packed = g.pack(latents);
  const auto kept = 1 - m.reshape({1, -1});  // conditioning mask: 1 = kept token

  FlowMatchEulerScheduler scheduler(model.scheduler);
  scheduler.set_timesteps(0, std::nullopt, std::nullopt, condition_timesteps(r.num_inference_steps, std::nullopt));
  const auto timesteps = scheduler.timesteps().to(ctx.device);
  const auto coords = g.rope_coords(1, ctx.device, r.frame_rate);
  TransformerInputs grid;
  grid.video_coords = coords;  // one row for the CFG pair (Note [RoPE once per batch] in transformer.cpp)
  const auto hooks =
      condition_hooks(ctx, scheduler, prompts, TokenConditioning{kept, packed.clone(), r.image_cond_noise_scale});
  DenoiseSettings settings{r.guidance_scale, 0.0, /*float32_velocity=*/false};
  const auto final_latents = denoise(ctx, prompts, grid, packed, timesteps, settings, hooks);
  auto decoded =
      decode_latents(ctx, g.unpack(final_latents), DecodeSettings{r.decode_timestep, r.decode_noise_scale, prompts.dtype()});
  return RemovalResult{decoded.frames[0], decoded.latents, m.to(at::kCPU)};
}

RemovalWithEffects remove_object_with_effects(LtxModel& model, EffectsMaskRequest effects, RemovalRequest removal,
                                              const ltxmps::ExecutionPlan& plan, const ltxmps::DiagnosticSink& sink,
                                              const ProgressCallback& progress) {
  effects.validate(model);
  removal.mask = effects.object_mask;  // stands in for the total mask until the pass has run
  removal.validate(model);
  if (!effects.prompt_embeddings || !removal.prompt_embeddings) {
    StageContext ctx(model, plan, sink, progress, removal.seed);
    auto e = effects.prompt_request();
    e.release_encoder = false;
    effects.prompt_embeddings = text_embeddings(ctx, e);
    removal.prompt_embeddings = text_embeddings(ctx, removal.prompt_request());
  }
  RemovalWithEffects out;
  out.effects = compute_effects_mask(model, effects, plan, sink, progress);
  removal.mask = out.effects.total_mask.to(at::kFloat).unsqueeze(1);
  out.removal = remove_object(model, removal, plan, sink, progress);
  return out;
}

}  // namespace ltxmps::pipeline
