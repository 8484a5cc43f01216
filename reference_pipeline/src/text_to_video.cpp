// LTXPipeline (diffusers pipelines/ltx/pipeline_ltx.py): text to video.
// Random draws (Note [One generator, diffusers' order of draws]): the initial noise, then the decode noise
// (timestep-conditioned VAEs only).

#include "ltxmps_pipeline/pipeline.hpp"

#include "ltxmps/error.hpp"

#include <array>

namespace ltxmps::pipeline {

/// The sigma schedule of LTXPipeline / LTXImageToVideoPipeline: linspace(1, 1/N, N), shifted by mu of the
/// token count when the scheduler shifts dynamically.
void set_ltx_timesteps(FlowMatchEulerScheduler& scheduler, const FlowMatchSchedulerConfig& sc, const LatentGrid& g,
                       int64_t steps) {
  const double mu = calculate_shift(g.latent_frames() * g.latent_height() * g.latent_width(), sc.base_image_seq_len,
                                    sc.max_image_seq_len, sc.base_shift, sc.max_shift);
  scheduler.set_timesteps(steps, numpy_linspace(1.0, 1.0 / static_cast<double>(steps), steps), mu);
}

/// RoPE inputs of LTXPipeline / LTXImageToVideoPipeline: the token grid and (temporal/fps, spatial, spatial).
TransformerInputs ltx_rope_grid(const LatentGrid& g, double frame_rate) {
  TransformerInputs in;
  in.num_frames = g.token_frames();
  in.height = g.token_height();
  in.width = g.token_width();
  in.rope_interpolation_scale = std::array<double, 3>{static_cast<double>(g.temporal) / frame_rate,
                                                      static_cast<double>(g.spatial), static_cast<double>(g.spatial)};
  return in;
}

GenerateResult text_to_video(LtxModel& model, const TextToVideoRequest& r, const ltxmps::ExecutionPlan& plan,
                             const ltxmps::DiagnosticSink& sink, const ProgressCallback& progress) {
  LTXMPS_CHECK(r.num_inference_steps >= 1, "generate: num_inference_steps must be >= 1, got ", r.num_inference_steps);
  r.validate(model);
  const auto g = r.grid(model);
  StageContext ctx(model, plan, sink, progress, r.seed);
  const auto prompts = encode_prompts(ctx, r.prompt_request(128, false));

  FlowMatchEulerScheduler scheduler(model.scheduler);
  set_ltx_timesteps(scheduler, model.scheduler, g, r.num_inference_steps);
  const auto timesteps = scheduler.timesteps().to(ctx.device);
  const int64_t C = model.transformer.config.in_channels;
  auto latents = g.pack(ctx.noise({prompts.batch, C, g.latent_frames(), g.latent_height(), g.latent_width()}));

  DenoiseHooks hooks;
  const int64_t rows = prompts.rows();
  hooks.timestep = [rows](const DenoiseStep& s) { return s.t.expand({rows}); };
  hooks.step = [&scheduler](const DenoiseStep& s, const at::Tensor& v, const at::Tensor&, const at::Tensor& x) {
    return scheduler.step(v, static_cast<float>(s.t_value), x);
  };
  DenoiseSettings settings{r.guidance_scale, r.guidance_rescale, /*float32_velocity=*/true};
  latents = denoise(ctx, prompts, ltx_rope_grid(g, r.frame_rate), latents, timesteps, settings, hooks);
  return decode_latents(ctx, g.unpack(latents), DecodeSettings{r.decode_timestep, r.decode_noise_scale, prompts.dtype()});
}

}  // namespace ltxmps::pipeline
