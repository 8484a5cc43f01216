// generate(): request validation (everything that can be known before a model runs) and dispatch to the
// pipeline files text_to_video.cpp, image_to_video.cpp and condition.cpp.

#include "ltxmps_pipeline/pipeline.hpp"

#include "ltxmps/error.hpp"

#include <cmath>

namespace ltxmps::pipeline {

const char* pipeline_name(PipelineKind kind) {
  switch (kind) {
    case PipelineKind::text_to_video: return "text-to-video (LTXPipeline)";
    case PipelineKind::image_to_video: return "image-to-video (LTXImageToVideoPipeline)";
    case PipelineKind::condition: return "condition (LTXConditionPipeline)";
  }
  return "?";
}

void GenerationSettings::validate(const LtxModel& model, const std::string& what) const {
  LTXMPS_CHECK(std::isfinite(guidance_scale) && guidance_scale >= 0, what, ": guidance_scale must be >= 0, got ",
               guidance_scale);
  LTXMPS_CHECK(std::isfinite(guidance_rescale) && guidance_rescale >= 0 && guidance_rescale <= 1, what,
               ": guidance_rescale must be in [0, 1], got ", guidance_rescale);
  LTXMPS_CHECK(std::isfinite(frame_rate) && frame_rate > 0, what, ": frame_rate must be > 0, got ", frame_rate);
  LTXMPS_CHECK(std::isfinite(decode_timestep) && decode_timestep >= 0, what, ": decode_timestep must be >= 0, got ",
               decode_timestep);
  (void)grid(model, what);
  const int64_t batch = prompt_embeddings && prompt_embeddings->prompt_embeds.defined()
                            ? prompt_embeddings->prompt_embeds.size(0)
                            : static_cast<int64_t>(prompts.size());
  LTXMPS_CHECK(batch >= 1, what, ": no prompt given");
  LTXMPS_CHECK(decode_noise_scale.value_or(0.0) >= 0, what, ": decode_noise_scale must be >= 0");
  LTXMPS_CHECK(max_sequence_length.value_or(1) >= 1, what, ": max_sequence_length must be >= 1");
}

LatentGrid GenerationSettings::grid(const LtxModel& model, const std::string& what) const {
  return LatentGrid::make(model.vae.config, model.transformer.config, num_frames, height, width, what);
}

PromptRequest GenerationSettings::prompt_request(int64_t default_max_sequence_length, bool encoder_attention_mask) const {
  PromptRequest r;
  r.prompts = prompts;
  r.negative_prompts = negative_prompts;
  r.embeddings = prompt_embeddings;
  r.max_sequence_length = max_sequence_length.value_or(default_max_sequence_length);
  r.encoder_attention_mask = encoder_attention_mask;
  r.guidance = guidance_scale > 1.0;
  return r;
}

void GenerateRequest::validate(const LtxModel& model) const {
  const bool custom = kind == PipelineKind::condition && timesteps && !timesteps->empty();
  LTXMPS_CHECK(num_inference_steps >= 1 || custom, "generate: num_inference_steps must be >= 1, got ",
               num_inference_steps);
  GenerationSettings::validate(model);
  if (kind == PipelineKind::text_to_video)
    LTXMPS_CHECK(!image, "generate: an image is given, but the pipeline is ", pipeline_name(kind),
                 " (use image-to-video or condition)");
  if (kind == PipelineKind::image_to_video) LTXMPS_CHECK(image.has_value(), "generate: image-to-video needs an image");
  if (kind != PipelineKind::condition) {
    LTXMPS_CHECK(conditions.empty(), "generate: conditions are only used by the condition pipeline, not by ",
                 pipeline_name(kind));
    LTXMPS_CHECK(!latents && !video, "generate: latents and videos are only used by the condition pipeline "
                                     "(video-to-video)");
    LTXMPS_CHECK(!timesteps, "generate: custom timesteps are only taken by the condition pipeline (diffusers' ",
                 pipeline_name(kind), " raises for them: it always passes its own sigmas)");
  } else {
    LTXMPS_CHECK(denoise_strength > 0 && denoise_strength <= 1, "generate: denoise_strength must be in (0, 1], got ",
                 denoise_strength);
    LTXMPS_CHECK(image_cond_noise_scale >= 0, "generate: image_cond_noise_scale must be >= 0");
    LTXMPS_CHECK(!(latents && video), "generate: give the video-to-video input as latents or as a video, not both");
    check_custom_timesteps(timesteps);
  }
}

GenerateResult generate(LtxModel& model, const GenerateRequest& r, const ltxmps::ExecutionPlan& plan,
                        const ltxmps::DiagnosticSink& sink, const ProgressCallback& progress) {
  r.validate(model);
  const GenerationSettings& settings = r;
  switch (r.kind) {
    case PipelineKind::text_to_video: {
      TextToVideoRequest t2v;
      static_cast<GenerationSettings&>(t2v) = settings;
      return text_to_video(model, t2v, plan, sink, progress);
    }
    case PipelineKind::image_to_video: {
      ImageToVideoRequest i2v;
      static_cast<GenerationSettings&>(i2v) = settings;
      i2v.image = *r.image;
      return image_to_video(model, i2v, plan, sink, progress);
    }
    case PipelineKind::condition: break;
  }
  ConditionRequest c;
  static_cast<GenerationSettings&>(c) = settings;
  c.image = r.image;
  c.conditions = r.conditions;
  c.timesteps = r.timesteps;
  c.denoise_strength = r.denoise_strength;
  c.image_cond_noise_scale = r.image_cond_noise_scale;
  c.latents = r.latents;
  c.video = r.video;
  return condition(model, c, plan, sink, progress);
}

PipelineKind choose_pipeline(const LtxModel& model, bool has_image, bool has_video) {
  if (has_video || model.pipeline_class == "LTXConditionPipeline") return PipelineKind::condition;
  return has_image ? PipelineKind::image_to_video : PipelineKind::text_to_video;
}

ProgressCallback step_progress(StepCallback on_step) {
  if (!on_step) return {};
  return [on_step](const Progress& p) {
    if (p.stage == "denoise") on_step(p.done, p.total);
  };
}

}  // namespace ltxmps::pipeline
