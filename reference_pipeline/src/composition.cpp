// OmnimatteZero's foreground layer and composition (the official foreground_composition script and its
// `MyAutoencoderKLLTXVideo.forward`), built from the pipeline stages: encode_videos for the encodes,
// sample_normalized for the refinement's latents, and the condition pipeline for the refinement.
//
// Note [Composition in raw latents]
// The latent arithmetic works on the posterior modes as the encoder returns them, not normalized: the official
// subclass calls `encode(...).latent_dist.mode()` and decodes the sums directly. Only the refinement normalizes
// (latents_mean / latents_std, scaling factor 1, as the removal does), because the transformer expects it.
//
// Note [Composition decode timestep]
// The official script decodes the four latents with temb = 0; the tpc2233 port decodes with no timestep, which
// a timestep-conditioned VAE (0.9.5 and later) cannot take. Here the decode always passes `compose_timestep` to
// such a VAE (0 by default, the official value); a VAE without timestep conditioning ignores it. No decode
// noise is mixed in: the official arithmetic calls the VAE's decode, not a pipeline's.
//
// Note [Composition random draws]
// The official script draws nothing before the refinement (every encode takes the posterior mode) and then two
// streams from torch's generators: the refinement re-encode's posterior sample (the unseeded global RNG: here a
// CPU generator seeded `seed`) and LTXConditionPipeline's draws (a CPU generator seeded `seed`, created afresh).
// 0.9.1's decoder noise injection in the four decodes comes from one more CPU generator seeded `seed`.

#include "ltxmps_pipeline/composition.hpp"

#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/stages.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/offload.hpp"
#include "ltxmps/random.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

namespace {

void check_frames(const at::Tensor& t, const std::string& what, bool mask) {
  LTXMPS_CHECK(t.defined() && t.dim() == 4 && (t.size(1) == 3 || (mask && t.size(1) == 1)) &&
                   at::isFloatingType(t.scalar_type()) && t.numel() > 0,
               "compose: the ", what, " must be float frames [F, ", mask ? "1 or 3" : "3", ", H, W] in [0, 1], got ",
               t.defined() ? c10::str(t.scalar_type(), " ", t.sizes()) : std::string("nothing"));
  const auto lo = t.min().item<double>(), hi = t.max().item<double>();
  LTXMPS_CHECK(lo >= 0 && hi <= 1, "compose: the ", what, " must be in [0, 1], got values in [", lo, ", ", hi,
               "] (NaN counts as outside)");
}

void check_same_size(const at::Tensor& t, const std::string& what, const at::Tensor& original) {
  LTXMPS_CHECK(t.size(0) == original.size(0) && t.size(2) == original.size(2) && t.size(3) == original.size(3),
               "compose: the ", what, " has ", t.size(0), " frames of ", t.size(3), "x", t.size(2), ", the original ",
               original.size(0), " frames of ", original.size(3), "x", original.size(2), " (they must match)");
}

/// [F, 1 or 3, H, W] in [0, 1] -> [1, 3, F, H, W] in [-1, 1] (the official VideoProcessor: 2x - 1).
at::Tensor model_range(const at::Tensor& frames) {
  auto x = frames.to(at::kFloat) * 2.0 - 1.0;
  if (x.size(1) == 1) x = x.expand({x.size(0), 3, x.size(2), x.size(3)});
  return x.permute({1, 0, 2, 3}).unsqueeze(0);
}

/// [1, C, F, H, W] on the device -> [F, C, H, W] float32 on the CPU.
at::Tensor frames_of(const at::Tensor& video) {
  return to_host_frames(video[0].permute({1, 0, 2, 3}));
}

/// The official `vae.decode(z, temb).sample` of each latent (Note [Composition decode timestep]).
std::vector<at::Tensor> decode_raw(StageContext& ctx, const std::vector<at::Tensor>& latents, double timestep) {
  auto& vae = ctx.model.vae;
  const auto temb = at::full({1}, timestep, at::TensorOptions().dtype(vae.runtime.dtype).device(ctx.device));
  at::Generator injection = ltxmps::make_cpu_generator(ctx.seed);  // Note [Composition random draws]
  std::vector<at::Tensor> out;
  ltxmps::ReleaseMemoryScope release(ctx.device, "vae decode", ctx.sink);
  ltxmps::OffloadScope offload(ctx.plan.offload, [&](const c10::Device& d) { move_model(vae, d); }, "vae", ctx.sink);
  const auto n = static_cast<int64_t>(latents.size());
  for (int64_t i = 0; i < n; ++i) {
    report(ctx.progress, "vae decode", i, n);
    out.push_back(vae.decode(latents[static_cast<size_t>(i)].to(ctx.device, vae.runtime.dtype), temb, &injection));
  }
  report(ctx.progress, "vae decode", n, n);
  return out;
}

ConditionRequest refinement_request(const RefinementSettings& s, int64_t frames, int64_t height, int64_t width) {
  ConditionRequest c;
  c.prompts = {s.prompt};
  c.negative_prompts = {s.negative_prompt};
  c.prompt_embeddings = s.prompt_embeddings;
  c.height = height;
  c.width = width;
  c.num_frames = frames;
  c.frame_rate = s.frame_rate;
  c.num_inference_steps = s.steps;
  c.guidance_scale = s.guidance_scale;
  c.decode_timestep = s.decode_timestep;
  c.max_sequence_length = s.max_sequence_length;
  c.seed = s.seed;
  c.denoise_strength = s.strength;
  c.image_cond_noise_scale = s.image_cond_noise_scale;
  return c;
}

void warn_if_empty(const StageContext& ctx, const at::Tensor& binary, const std::string& what,
                   const std::string& consequence) {
  if (binary.any().item<bool>()) return;
  ctx.sink(ltxmps::Diagnostic{ltxmps::Severity::warning, "compose", "compose.empty_decoded_mask",
                              "the decoded " + what + " has no pixel above 0 (the mask is too thin or too faint for "
                              "the VAE): " + consequence});
}

}  // namespace

void RefinementSettings::validate(const LtxModel& model, int64_t frames, int64_t height, int64_t width) const {
  const std::string what = "compose refinement";
  LTXMPS_CHECK(steps >= 1, what, ": steps must be >= 1, got ", steps);
  LTXMPS_CHECK(std::isfinite(strength) && strength > 0 && strength <= 1, what, ": strength must be in (0, 1], got ",
               strength);
  const auto n = static_cast<int64_t>(condition_timesteps(steps, std::nullopt).size());
  LTXMPS_CHECK(static_cast<int64_t>(static_cast<double>(n) * strength) >= 1, what, ": strength ", strength, " of ",
               steps, " steps runs no step (the pipeline runs int(steps x strength)); raise either");
  LTXMPS_CHECK(std::isfinite(image_cond_noise_scale) && image_cond_noise_scale >= 0, what,
               ": image_cond_noise_scale must be >= 0, got ", image_cond_noise_scale);
  LTXMPS_CHECK(!model.scheduler.use_dynamic_shifting, what, ": the condition pipeline passes custom timesteps, "
               "which a scheduler with use_dynamic_shifting cannot take");
  LTXMPS_CHECK(prompt_embeddings || (model.text_encoder && model.text_encoder->loaded()), what,
               ": the model has no text encoder (not loaded, or released): pass prompt_embeddings (a prompt cache)");
  refinement_request(*this, frames, height, width).validate(model, what);
}

void ForegroundRequest::validate(const LtxModel& model) const {
  check_frames(original, "original", false);
  check_frames(background, "background", false);
  check_frames(object_mask, "object mask", true);
  check_frames(total_mask, "total mask", true);
  if (new_background) check_frames(*new_background, "new background", false);
  check_same_size(background, "background", original);
  check_same_size(object_mask, "object mask", original);
  check_same_size(total_mask, "total mask", original);
  if (new_background) check_same_size(*new_background, "new background", original);
  (void)LatentGrid::make(model.vae.config, model.transformer.config, original.size(0), original.size(2),
                         original.size(3), "compose");
  // The masks reach the encoder as 2x - 1: a pixel counts as the object from above mid-grey on.
  LTXMPS_CHECK((object_mask > 0.5).any().item<bool>(),
               "compose: the object mask is empty (no pixel above mid-grey): there is no object to lift");
  LTXMPS_CHECK((total_mask > 0.5).any().item<bool>(),
               "compose: the total mask is empty (no pixel above mid-grey): the foreground layer would be empty");
  LTXMPS_CHECK(std::isfinite(compose_timestep) && compose_timestep >= 0, "compose: compose_timestep must be >= 0, got ",
               compose_timestep);
  if (new_background && refine) refinement.validate(model, original.size(0), original.size(2), original.size(3));
}

at::Tensor CompositionResult::foreground_rgba() const {
  LTXMPS_CHECK(foreground.defined() && alpha.defined(), "compose: the result has no foreground");
  return at::cat({foreground, alpha.to(foreground.scalar_type())}, 1);
}

RefinementResult refine_composite(LtxModel& model, const at::Tensor& latent_addition,
                                  const RefinementSettings& settings,
                                  const ltxmps::ExecutionPlan& plan, const ltxmps::DiagnosticSink& sink,
                                  const ProgressCallback& progress) {
  const auto& t = latent_addition;
  LTXMPS_CHECK(t.defined() && t.dim() == 5 && t.size(0) == 1 && t.size(1) == model.vae.config.in_channels &&
                   at::isFloatingType(t.scalar_type()),
               "compose refinement: the latent addition must be a float video [1, ", model.vae.config.in_channels,
               ", F, H, W] in model range, got ", t.defined() ? c10::str(t.scalar_type(), " ", t.sizes()) : "nothing");
  LTXMPS_CHECK(at::isfinite(t).all().item<bool>(), "compose refinement: the latent addition holds NaN or Inf");
  const int64_t frames = t.size(2), height = t.size(3), width = t.size(4);
  settings.validate(model, frames, height, width);
  at::Tensor latents;
  {
    StageContext ctx(model, plan, sink, progress, settings.seed);  // Note [Composition random draws]
    const auto posteriors = encode_videos(ctx, {t});
    latents = sample_normalized(ctx, posteriors[0]);
  }
  auto request = refinement_request(settings, frames, height, width);
  request.latents = latents;
  auto refined = condition(model, request, plan, sink, progress);
  return RefinementResult{refined.frames[0], latents.to(at::kCPU, at::kFloat).contiguous()};
}

CompositionResult compose(LtxModel& model, const ForegroundRequest& r, const ltxmps::ExecutionPlan& plan,
                          const ltxmps::DiagnosticSink& sink, const ProgressCallback& progress) {
  r.validate(model);
  const bool with_background = r.new_background.has_value();
  CompositionResult out;
  {
    StageContext ctx(model, plan, sink, progress, r.refinement.seed);
    std::vector<at::Tensor> videos{model_range(r.original), model_range(r.background), model_range(r.object_mask),
                                   model_range(r.total_mask)};
    if (with_background) videos.push_back(model_range(*r.new_background));
    std::vector<at::Tensor> latents;
    {
      const auto posteriors = encode_videos(ctx, videos);  // Note [Composition in raw latents]
      const auto foreground = posteriors[0].mode() - posteriors[1].mode();
      latents = {foreground, posteriors[2].mode(), posteriors[3].mode()};
      if (with_background) latents.push_back(posteriors[4].mode() + foreground);
    }
    const auto decoded = decode_raw(ctx, latents, r.compose_timestep);
    latents.clear();
    const auto original = videos[0].to(ctx.device, decoded[0].scalar_type());
    // The official binarization: each channel of the decoded mask, > 0.
    const auto object = (decoded[1].to(at::kFloat) > 0).to(original.scalar_type());
    const auto total = (decoded[2].to(at::kFloat) > 0).to(original.scalar_type());
    warn_if_empty(ctx, object, "object mask", "no pixel takes the original's values");
    warn_if_empty(ctx, total, "total mask", "the foreground layer is empty");
    // Pixel injection: the original inside the object mask, the decoded latents elsewhere.
    out.foreground = postprocess_video((decoded[0] * (1 - object) + original * object) * total)[0];
    out.alpha = frames_of(total.amax(1, /*keepdim=*/true));
    out.decoded_object_mask = frames_of(decoded[1]);
    out.decoded_total_mask = frames_of(decoded[2]);
    if (with_background) {
      const auto raw = decoded[3] * (1 - object) + original * object;
      out.latent_addition = postprocess_video(raw)[0];
      out.latent_addition_raw = raw.to(at::kCPU, at::kFloat).contiguous();
    }
  }
  if (with_background && r.refine) {
    // A float32 copy on the CPU holds the VAE-dtype values exactly; encode_videos casts them back.
    auto refined = refine_composite(model, *out.latent_addition_raw, r.refinement, plan, sink, progress);
    out.refinement = std::move(refined.frames);
    out.refinement_latents = std::move(refined.latents);
  }
  return out;
}

}  // namespace ltxmps::pipeline
