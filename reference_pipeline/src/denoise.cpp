// The denoising loop shared by every pipeline, and the per-token conditioning hooks of LTXConditionPipeline
// (also used by object removal).

#include "ltxmps_pipeline/stages.hpp"

#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/runtime.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/offload.hpp"

namespace ltxmps::pipeline {

namespace {

at::Tensor velocity(const TransformerModel& transformer, const PromptBatch& prompts, const TransformerInputs& grid,
                    const at::Tensor& latents, const at::Tensor& timestep) {
  TransformerInputs in = grid;
  in.hidden_states = (prompts.guidance ? at::cat({latents, latents}, 0) : latents).to(prompts.dtype());
  in.encoder_hidden_states = prompts.embeds;
  in.encoder_attention_mask = prompts.mask;
  in.timestep = timestep;
  return transformer.forward(in);
}

at::Tensor guide(const at::Tensor& noise_pred, const PromptBatch& prompts, const DenoiseSettings& s) {
  if (!prompts.guidance) return noise_pred;
  const auto chunks = noise_pred.chunk(2, 0);
  const auto& uncond = chunks[0];
  const auto& text = chunks[1];
  auto guided = uncond + s.guidance_scale * (text - uncond);
  if (s.guidance_rescale > 0) guided = rescale_noise_cfg(guided, text, s.guidance_rescale);
  return guided;
}

void check_step(const at::Tensor& t, const char* what, int64_t i, int64_t total) {
  LTXMPS_CHECK(at::isfinite(t).all().item<bool>(), "generate: the ", what, " contain", what[0] == 't' ? "s" : "",
               " NaN or Inf ", what[0] == 't' ? "at" : "after", " denoising step ", i + 1, " of ", total,
               " (broken weights, or a precision too low for this model; try fp32 or bf16)");
}

}  // namespace

at::Tensor denoise(StageContext& ctx, const PromptBatch& prompts, const TransformerInputs& grid, at::Tensor latents,
                   const at::Tensor& timesteps, const DenoiseSettings& settings, const DenoiseHooks& hooks) {
  LTXMPS_CHECK(static_cast<bool>(hooks.timestep) && static_cast<bool>(hooks.step),
               "denoise: the hooks need a timestep and a step function");
  auto& transformer = ctx.model.transformer;
  transformer.runtime.attention.kernel = ctx.plan.attention.kernel;
  const int64_t total = timesteps.size(0);
  {
    ltxmps::OffloadScope offload(ctx.plan.offload, [&](const c10::Device& d) { move_model(transformer, d); },
                                 "transformer", ctx.sink);
    for (int64_t i = 0; i < total; ++i) {
      throw_if_cancelled();  // SIGINT/SIGTERM: stop between steps
      const DenoiseStep step{i, total, timesteps[i]};
      if (hooks.before_model) hooks.before_model(step, latents);
      const auto timestep = hooks.timestep(step);
      auto v = velocity(transformer, prompts, grid, latents, timestep);
      if (settings.float32_velocity) v = v.to(at::kFloat);
      const auto noise_pred = guide(v, prompts, settings);
      check_step(noise_pred, "transformer output", i, total);
      latents = hooks.step(step, noise_pred, timestep, latents);
      check_step(latents, "latents", i, total);
      report(ctx.progress, "denoise", i + 1, total);
    }
  }
  if (ctx.plan.memory.release_after_heavy_ops) ltxmps::release_memory(ctx.device);
  return latents;
}

DenoiseHooks condition_hooks(StageContext& ctx, FlowMatchEulerScheduler& scheduler, const PromptBatch& prompts,
                             std::optional<TokenConditioning> conditioning) {
  DenoiseHooks hooks;
  const int64_t rows = prompts.rows();
  at::Tensor mask, mask_in;
  if (conditioning) {
    mask = conditioning->mask;
    mask_in = prompts.guidance ? at::cat({mask, mask}, 0) : mask;
  }
  if (conditioning && conditioning->noise_scale > 0) {
    // add_noise_to_image_conditioning_latents: fresh noise of the packed shape for all tokens, every step.
    const auto init = conditioning->init;
    const double scale = conditioning->noise_scale;
    hooks.before_model = [&ctx, mask, init, scale](const DenoiseStep& s, at::Tensor& latents) {
      const auto n = ctx.noise(latents.sizes());
      const auto need = (mask > 1.0 - 1e-6).unsqueeze(-1);
      const auto noised = init + scale * n * at::pow(s.t / 1000.0, 2);
      latents = at::where(need, noised, latents);
    };
  }
  hooks.timestep = [rows, mask_in](const DenoiseStep& s) {
    auto timestep = s.t.expand({rows}).unsqueeze(-1).to(at::kFloat);
    if (mask_in.defined()) timestep = at::minimum(timestep, (1 - mask_in) * 1000.0);
    return timestep;
  };
  const bool guidance = prompts.guidance;
  hooks.step = [&scheduler, mask, guidance](const DenoiseStep& s, const at::Tensor& v, const at::Tensor& timestep,
                                            const at::Tensor& latents) {
    const auto per_token = guidance ? timestep.chunk(2, 0)[0] : timestep;
    auto denoised = scheduler.step_per_token(-v, per_token, latents);
    if (!mask.defined()) return denoised;
    const auto to_denoise = (s.t / 1000 - 1e-6 < (1.0 - mask)).unsqueeze(-1);
    return at::where(to_denoise, denoised, latents);
  };
  return hooks;
}

}  // namespace ltxmps::pipeline
