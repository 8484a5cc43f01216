// LTXConditionPipeline (diffusers pipelines/ltx/pipeline_ltx_condition.py): image and video conditions at
// frame indices, and video-to-video (latents denoised from denoise_strength).
// Random draws (Note [One generator, diffusers' order of draws]): the initial noise, then per condition its
// posterior sample and (frame_index > 0) the noise of its prefix tokens, then per step the conditioning
// re-noise (when image_cond_noise_scale > 0 and there is conditioning), then the decode noise.

#include "ltxmps_pipeline/pipeline.hpp"

#include "ltxmps/error.hpp"

#include <algorithm>

namespace ltxmps::pipeline {

namespace {

/// A conditioning input checked and preprocessed before any model runs: [1, 3, F, H, W] in [-1, 1].
struct ConditionInput {
  at::Tensor data;
  double strength = 1.0;
  int64_t frame_index = 0;
};

std::vector<ConditionInput> condition_inputs(const ConditionRequest& r, const LtxModel& model, const LatentGrid& g) {
  std::vector<ConditionInput> out;
  auto add = [&](const at::Tensor& frames, int64_t frame_index, double strength, size_t index) {
    LTXMPS_CHECK(frames.defined() && frames.dim() == 4 && frames.size(0) >= 1 &&
                     frames.size(1) == model.vae.config.in_channels && frames.size(2) == r.height &&
                     frames.size(3) == r.width,
                 "generate: condition ", index, " must be frames [F, 3, ", r.height, ", ", r.width, "], got ",
                 frames.defined() ? frames.sizes() : at::IntArrayRef{}, "; resize it to the requested size first");
    LTXMPS_CHECK(frame_index >= 0 && frame_index < r.num_frames, "generate: condition ", index, " has frame_index ",
                 frame_index, ", expected 0..", r.num_frames - 1);
    LTXMPS_CHECK(strength >= 0 && strength <= 1, "generate: condition ", index, " has strength ", strength,
                 ", expected [0, 1]");
    auto data = to_model_range(frames).permute({1, 0, 2, 3}).unsqueeze(0);  // [1, 3, F, H, W]
    if (frames.size(0) > 1) {  // trim_conditioning_sequence
      int64_t n = std::min(frames.size(0), r.num_frames - frame_index);
      n = (n - 1) / g.temporal * g.temporal + 1;
      data = data.slice(2, 0, n);
    }
    LTXMPS_CHECK(data.size(2) % g.temporal == 1 % g.temporal, "generate: condition ", index, " has ", data.size(2),
                 " frames, expected ", g.temporal, "k+1");
    out.push_back({data, strength, frame_index});
  };
  if (r.image) add(r.image->dim() == 3 ? r.image->unsqueeze(0) : *r.image, 0, 1.0, 0);
  for (size_t i = 0; i < r.conditions.size(); ++i)
    add(r.conditions[i].frames, r.conditions[i].frame_index, r.conditions[i].strength, i + (r.image ? 1 : 0));
  return out;
}

/// The packed latents, positions and conditioning of prepare_latents.
struct PreparedLatents {
  at::Tensor latents;       ///< [B, extra + tokens, C]
  at::Tensor ids;           ///< [B, 3, extra + tokens] pixel-space positions
  at::Tensor mask;          ///< [B, extra + tokens] conditioning strength, undefined without conditions
  int64_t extra_tokens = 0; ///< prefix tokens of conditions at frame_index > 0
};

PreparedLatents prepare_condition_latents(StageContext& ctx, const ConditionRequest& r, const LatentGrid& g,
                                          at::Tensor lat, const std::vector<ConditionInput>& inputs,
                                          const std::vector<VaePosterior>& posteriors, int64_t batch) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(ctx.device);
  std::vector<at::Tensor> extra_latents, extra_ids, extra_masks;
  PreparedLatents out;
  at::Tensor frame_mask;
  if (!inputs.empty()) frame_mask = at::zeros({batch, g.latent_frames()}, f32);
  for (size_t index = 0; index < inputs.size(); ++index) {
    const auto& item = inputs[index];
    auto cond = sample_normalized(ctx, posteriors[index]);
    const int64_t data_frames = item.data.size(2), cond_frames = cond.size(2);
    if (item.frame_index == 0) {
      auto head = lat.slice(2, 0, cond_frames);
      head.copy_(at::lerp(head, cond, item.strength));
      frame_mask.slice(1, 0, cond_frames).fill_(item.strength);
      continue;
    }
    constexpr int64_t prefix = 2;  // num_prefix_latent_frames
    if (data_frames > 1) {
      LTXMPS_CHECK(cond_frames >= prefix, "generate: a video condition at frame ", item.frame_index, " needs at least ",
                   prefix, " latent frames, got ", cond_frames);
      if (cond_frames > prefix) {
        const int64_t start = item.frame_index / g.temporal + prefix;
        const int64_t end = start + cond_frames - prefix;
        LTXMPS_CHECK(end <= g.latent_frames(), "generate: the video condition at frame ", item.frame_index,
                     " does not fit the ", r.num_frames, " frames");
        auto part = lat.slice(2, start, end);
        part.copy_(at::lerp(part, cond.slice(2, prefix), item.strength));
        frame_mask.slice(1, start, end).fill_(item.strength);
        cond = cond.slice(2, 0, prefix);
      }
    }
    cond = at::lerp(ctx.noise(cond.sizes()), cond, item.strength);
    auto ids = scale_video_ids(g.video_ids(batch, ctx.device, cond.size(2)), g.spatial, g.temporal, item.frame_index);
    auto packed = g.pack(cond).expand({batch, -1, -1});
    extra_masks.push_back(at::full({batch, packed.size(1)}, item.strength, f32));
    out.extra_tokens += packed.size(1);
    extra_latents.push_back(packed);
    extra_ids.push_back(ids);
  }
  auto ids = g.video_ids(batch, ctx.device);
  if (!inputs.empty()) out.mask = frame_mask.gather(1, ids.select(1, 0));
  out.ids = scale_video_ids(ids, g.spatial, g.temporal, 0);
  out.latents = g.pack(lat);
  if (!extra_latents.empty()) {
    extra_latents.push_back(out.latents);
    extra_ids.push_back(out.ids);
    extra_masks.push_back(out.mask);
    out.latents = at::cat(extra_latents, 1);
    out.ids = at::cat(extra_ids, 2);
    out.mask = at::cat(extra_masks, 1);
  }
  return out;
}

void validate_condition(const ConditionRequest& r, const LtxModel& model) {
  LTXMPS_CHECK(r.num_inference_steps >= 1 || (r.timesteps && !r.timesteps->empty()),
               "generate: num_inference_steps must be >= 1, got ", r.num_inference_steps);
  r.validate(model);
  LTXMPS_CHECK(r.denoise_strength > 0 && r.denoise_strength <= 1, "generate: denoise_strength must be in (0, 1], got ",
               r.denoise_strength);
  LTXMPS_CHECK(r.image_cond_noise_scale >= 0, "generate: image_cond_noise_scale must be >= 0");
  LTXMPS_CHECK(!model.scheduler.use_dynamic_shifting,
               "generate: the condition pipeline passes custom timesteps, which a scheduler with use_dynamic_shifting "
               "cannot take (diffusers raises too); use a scheduler_config.json without dynamic shifting");
  LTXMPS_CHECK(!(r.latents && r.video), "generate: give the video-to-video input as latents or as a video, not both");
  check_custom_timesteps(r.timesteps);
}

}  // namespace

GenerateResult condition(LtxModel& model, const ConditionRequest& r, const ltxmps::ExecutionPlan& plan,
                         const ltxmps::DiagnosticSink& sink, const ProgressCallback& progress) {
  validate_condition(r, model);
  const auto g = r.grid(model);
  const auto inputs = condition_inputs(r, model, g);
  StageContext ctx(model, plan, sink, progress, r.seed);
  const auto prompts = encode_prompts(ctx, r.prompt_request(256, true));
  std::vector<at::Tensor> videos;
  for (const auto& input : inputs) videos.push_back(input.data);
  if (r.video) videos.push_back(to_model_range(*r.video).permute({1, 0, 2, 3}).unsqueeze(0));
  auto posteriors = encode_videos(ctx, videos);
  std::optional<at::Tensor> user_latents = r.latents;
  if (r.video) {
    user_latents = model.vae.normalize_latents(posteriors.back().mode().to(at::kFloat));
    posteriors.pop_back();
  }

  FlowMatchEulerScheduler scheduler(model.scheduler);
  scheduler.set_timesteps(0, std::nullopt, std::nullopt, condition_timesteps(r.num_inference_steps, r.timesteps));
  auto timesteps = scheduler.timesteps();
  std::optional<at::Tensor> latent_sigma;
  if (r.denoise_strength < 1) {
    const int64_t n = timesteps.size(0);
    const int64_t steps = std::min(static_cast<int64_t>(static_cast<double>(n) * r.denoise_strength), n);
    const int64_t start = std::max<int64_t>(n - steps, 0);
    LTXMPS_CHECK(start < n, "generate: denoise_strength ", r.denoise_strength, " leaves no step of ", n,
                 " (raise it or the number of steps)");
    timesteps = timesteps.slice(0, start);
    latent_sigma = scheduler.sigmas().slice(0, start, start + 1).to(ctx.device);
  }
  timesteps = timesteps.to(ctx.device);

  const int64_t B = prompts.batch, C = model.transformer.config.in_channels;
  const std::vector<int64_t> shape{B, C, g.latent_frames(), g.latent_height(), g.latent_width()};
  auto lat = ctx.noise(shape);
  if (user_latents && latent_sigma) {
    LTXMPS_CHECK(user_latents->sizes() == at::IntArrayRef(shape), "generate: latents have shape ", user_latents->sizes(),
                 ", expected ", at::IntArrayRef(shape), " (normalized VAE latents of the video)");
    lat = *latent_sigma * lat + (1 - *latent_sigma) * user_latents->to(ctx.device, at::kFloat);
  } else if (user_latents) {
    sink(ltxmps::Diagnostic{ltxmps::Severity::warning, "pipeline", "pipeline.latents_ignored",
                            "latents are ignored with denoise_strength = 1 (as in diffusers): pass a "
                            "denoise_strength below 1 for video-to-video"});
  }
  const auto prepared = prepare_condition_latents(ctx, r, g, lat, inputs, posteriors, B);
  auto coords = prepared.ids.to(at::kFloat);
  coords.select(1, 0).copy_(coords.select(1, 0) * (1.0 / r.frame_rate));
  TransformerInputs grid;
  grid.video_coords = coords;  // one row for the CFG pair (Note [RoPE once per batch] in transformer.cpp)
  std::optional<TokenConditioning> conditioning;
  if (!inputs.empty())
    conditioning = TokenConditioning{prepared.mask, prepared.latents.clone(), r.image_cond_noise_scale};
  const auto hooks = condition_hooks(ctx, scheduler, prompts, conditioning);
  DenoiseSettings settings{r.guidance_scale, r.guidance_rescale, /*float32_velocity=*/false};
  auto latents = denoise(ctx, prompts, grid, prepared.latents, timesteps, settings, hooks);
  if (prepared.extra_tokens > 0) latents = latents.slice(1, prepared.extra_tokens);
  if (r.output_latents) {
    GenerateResult result;
    result.normalized_latents = g.unpack(latents);
    result.latents = model.vae.denormalize_latents(result.normalized_latents, model.vae.config.scaling_factor)
                         .to(at::kCPU, at::kFloat)
                         .contiguous();
    return result;
  }
  return decode_latents(ctx, g.unpack(latents), DecodeSettings{r.decode_timestep, r.decode_noise_scale, prompts.dtype()});
}

}  // namespace ltxmps::pipeline
