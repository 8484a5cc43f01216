// LTXImageToVideoPipeline (diffusers pipelines/ltx/pipeline_ltx_image2video.py): the first frame given.
// Random draws (Note [One generator, diffusers' order of draws]): one posterior sample per image, the initial
// noise, then the decode noise (timestep-conditioned VAEs only).

#include "ltxmps_pipeline/pipeline.hpp"

#include "ltxmps/error.hpp"

namespace ltxmps::pipeline {

void set_ltx_timesteps(FlowMatchEulerScheduler& scheduler, const FlowMatchSchedulerConfig& sc, const LatentGrid& g,
                       int64_t steps);  // text_to_video.cpp
TransformerInputs ltx_rope_grid(const LatentGrid& g, double frame_rate);  // text_to_video.cpp

namespace {

/// The image as [1, 3, 1, H, W] pixels in [-1, 1], one per batch row given.
std::vector<at::Tensor> image_inputs(const ImageToVideoRequest& r, const LtxModel& model, int64_t batch) {
  LTXMPS_CHECK(r.image.defined(), "generate: image-to-video needs an image");
  at::Tensor image = r.image.dim() == 3 ? r.image.unsqueeze(0) : r.image;
  LTXMPS_CHECK(image.dim() == 4 && image.size(1) == model.vae.config.in_channels && image.size(2) == r.height &&
                   image.size(3) == r.width && (image.size(0) == 1 || image.size(0) == batch),
               "generate: the image must be [3, ", r.height, ", ", r.width, "] (or one per prompt), got ", r.image.sizes(),
               "; resize it to the requested size first");
  const auto pixels = to_model_range(image);
  std::vector<at::Tensor> out;
  for (int64_t b = 0; b < pixels.size(0); ++b) out.push_back(pixels[b].unsqueeze(0).unsqueeze(2));
  return out;
}

}  // namespace

GenerateResult image_to_video(LtxModel& model, const ImageToVideoRequest& r, const ltxmps::ExecutionPlan& plan,
                              const ltxmps::DiagnosticSink& sink, const ProgressCallback& progress) {
  LTXMPS_CHECK(r.num_inference_steps >= 1, "generate: num_inference_steps must be >= 1, got ", r.num_inference_steps);
  r.validate(model);
  const auto g = r.grid(model);
  const int64_t requested = r.prompt_embeddings && r.prompt_embeddings->prompt_embeds.defined()
                                ? r.prompt_embeddings->prompt_embeds.size(0)
                                : static_cast<int64_t>(r.prompts.size());
  auto images = image_inputs(r, model, requested);
  StageContext ctx(model, plan, sink, progress, r.seed);
  const auto prompts = encode_prompts(ctx, r.prompt_request(128, false));
  // diffusers casts the image to the embeddings' dtype before the VAE.
  for (auto& image : images) image = image.to(ctx.device).to(prompts.dtype());
  const auto posteriors = encode_videos(ctx, images);

  FlowMatchEulerScheduler scheduler(model.scheduler);
  set_ltx_timesteps(scheduler, model.scheduler, g, r.num_inference_steps);
  const auto timesteps = scheduler.timesteps().to(ctx.device);
  const int64_t C = model.transformer.config.in_channels, B = prompts.batch;
  const int64_t lf = g.latent_frames(), lh = g.latent_height(), lw = g.latent_width();
  // prepare_latents: the image's latent repeated over the frames, noise elsewhere.
  std::vector<at::Tensor> init;
  for (const auto& posterior : posteriors) init.push_back(sample_normalized(ctx, posterior));
  const auto init_latents = at::cat(init, 0).repeat({1, 1, lf, 1, 1});
  auto cond = at::zeros({B, 1, lf, lh, lw}, at::TensorOptions().dtype(at::kFloat).device(ctx.device));
  cond.select(2, 0).fill_(1.0);
  const auto n = ctx.noise({B, C, lf, lh, lw});
  auto latents = g.pack(init_latents * cond + n * (1 - cond));
  auto mask = g.pack(cond).squeeze(-1);
  if (prompts.guidance) mask = at::cat({mask, mask}, 0);

  DenoiseHooks hooks;
  const int64_t rows = prompts.rows();
  set_conditioned_timesteps(hooks, rows, mask,
                            [](const at::Tensor& t, const at::Tensor& m) { return t * (1 - m); });
  hooks.step = [&scheduler, g](const DenoiseStep& s, const at::Tensor& v, const at::Tensor&, const at::Tensor& latents) {
    // Only frames 1.. are stepped; frame 0 keeps the image's latent.
    const auto vu = g.unpack(v);
    const auto x = g.unpack(latents);
    const auto stepped = scheduler.step(vu.slice(2, 1), static_cast<float>(s.t_value), x.slice(2, 1));
    return g.pack(at::cat({x.slice(2, 0, 1), stepped}, 2));
  };
  DenoiseSettings settings{r.guidance_scale, r.guidance_rescale, /*float32_velocity=*/true};
  latents = denoise(ctx, prompts, ltx_rope_grid(g, r.frame_rate), latents, timesteps, settings, hooks);
  return decode_latents(ctx, g.unpack(latents), DecodeSettings{r.decode_timestep, r.decode_noise_scale, prompts.dtype()});
}

}  // namespace ltxmps::pipeline
