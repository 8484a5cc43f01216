#pragma once
/// @file pipeline.hpp
/// @brief The LTX-Video generation pipelines (diffusers' LTXPipeline, LTXImageToVideoPipeline and
///        LTXConditionPipeline), each in its own file and built from the stages of stages.hpp, and generate(),
///        which validates a request and runs the pipeline it names. With a CPU generator, the same seed gives
///        the same video as diffusers (docs/pipelines.md).

#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/progress.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/stages.hpp"

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief Which diffusers pipeline a request follows.
enum class PipelineKind {
  text_to_video,   ///< LTXPipeline
  image_to_video,  ///< LTXImageToVideoPipeline
  condition,       ///< LTXConditionPipeline (0.9.5+): images or videos at frame indices, video-to-video
};

/// @brief The name of a pipeline kind with its diffusers class, for messages.
const char* pipeline_name(PipelineKind kind);

/// @brief One conditioning item of LTXConditionPipeline (`LTXVideoCondition`).
struct VideoCondition {
  /// Pixels [F, 3, H, W] float: an image is F = 1. Values in [0, 1] are mapped to [-1, 1] (2x - 1) as
  /// diffusers' VaeImageProcessor does for inputs with min >= 0; tensors with negatives are used as they are.
  at::Tensor frames;
  int64_t frame_index = 0;  ///< the pixel frame the condition starts at
  double strength = 1.0;    ///< 1 = hard condition; lower blends it with noise
};

/// @brief What every generation pipeline takes; defaults are diffusers'.
struct GenerationSettings {
  std::vector<std::string> prompts{""};          ///< batch of prompts (ignored with `prompt_embeddings`)
  std::vector<std::string> negative_prompts;     ///< empty: "" for each prompt
  std::optional<PromptEmbeddings> prompt_embeddings;  ///< a prompt cache instead of the text encoder
  int64_t height = 512;                          ///< pixels, a multiple of the model's spatial unit (32)
  int64_t width = 704;                           ///< pixels, a multiple of the model's spatial unit (32)
  int64_t num_frames = 161;                      ///< 8k+1 for the released VAEs
  double frame_rate = 25.0;                      ///< scales RoPE's time coordinate
  int64_t num_inference_steps = 50;              ///< denoising steps
  double guidance_scale = 3.0;                   ///< classifier-free guidance, on above 1
  double guidance_rescale = 0.0;                 ///< rescale_noise_cfg's phi
  double decode_timestep = 0.0;                  ///< timestep of a timestep-conditioned VAE decode
  std::optional<double> decode_noise_scale;      ///< decode noise mix; empty: decode_timestep
  std::optional<int64_t> max_sequence_length;    ///< empty: 128 (T2V, I2V) or 256 (condition)
  uint64_t seed = 0;                             ///< one CPU generator, like torch.Generator().manual_seed

  /// @brief Throws ltxmps::Error for values no pipeline accepts (sizes are checked against the model).
  void validate(const LtxModel& model, const std::string& what = "generate") const;
  /// @brief The latent grid of the requested size for `model` (checked).
  LatentGrid grid(const LtxModel& model, const std::string& what = "generate") const;
  /// @brief Prompts to encode (or their cache) for a pipeline with this default max_sequence_length.
  PromptRequest prompt_request(int64_t default_max_sequence_length, bool encoder_attention_mask) const;
};

/// @brief LTXPipeline: text to video.
struct TextToVideoRequest : GenerationSettings {};

/// @brief LTXImageToVideoPipeline: the first frame given.
struct ImageToVideoRequest : GenerationSettings {
  at::Tensor image;  ///< [3, H, W] or one per prompt [B, 3, H, W] (value convention of VideoCondition::frames)
};

/// @brief LTXConditionPipeline: image/video conditions at frame indices, video-to-video.
struct ConditionRequest : GenerationSettings {
  std::optional<at::Tensor> image;               ///< a frame-0 image condition [3, H, W] (diffusers' `image`)
  std::vector<VideoCondition> conditions;        ///< images or videos at frame indices
  /// Custom timesteps (else linear-quadratic), e.g. the distilled checkpoints' lists. diffusers' LTXPipeline and
  /// LTXImageToVideoPipeline list `timesteps` too but raise for it (they always pass their own sigmas), and no
  /// LTX pipeline takes `sigmas`: this is the only pipeline with a custom schedule.
  std::optional<std::vector<double>> timesteps;
  double denoise_strength = 1.0;                 ///< video-to-video: the part of the schedule that runs
  double image_cond_noise_scale = 0.15;          ///< re-noise of conditioning tokens per step
  /// Video-to-video with denoise_strength < 1: the video's normalized latents [B, C, F', H', W'] ...
  std::optional<at::Tensor> latents;
  /// ... or the video itself [F, 3, H, W] in [0, 1]: VAE-encoded (posterior mode) and normalized by the pipeline.
  std::optional<at::Tensor> video;
  /// diffusers' output_type="latent": stop after the loop (no decode, no decode noise drawn); the result has
  /// `latents` and `normalized_latents`, no frames.
  bool output_latents = false;
};

/// @brief Everything a generation needs besides the model, for whichever pipeline `kind` names.
struct GenerateRequest : GenerationSettings {
  PipelineKind kind = PipelineKind::text_to_video;  ///< which pipeline runs
  std::optional<std::vector<double>> timesteps;  ///< custom timesteps (condition pipeline)
  std::optional<at::Tensor> image;               ///< image-to-video: the first frame; condition: a frame-0 condition
  std::vector<VideoCondition> conditions;        ///< condition pipeline
  double denoise_strength = 1.0;                 ///< condition pipeline
  double image_cond_noise_scale = 0.15;          ///< condition pipeline
  std::optional<at::Tensor> latents;             ///< condition pipeline: video-to-video latents
  std::optional<at::Tensor> video;               ///< condition pipeline: video-to-video pixels [F, 3, H, W] in [0, 1]

  /// @brief Checks everything that can be known before a model runs (sizes, values, which inputs the kind
  ///        takes); generate() calls it first.
  void validate(const LtxModel& model) const;
};

/// @brief The pipeline a model folder runs for these inputs, as DiffusionPipeline.from_pretrained picks it from
///        model_index.json: an LTXConditionPipeline folder runs the condition pipeline (an image becomes a
///        frame-0 condition), a video is always video-to-video (condition pipeline), an image otherwise is
///        image-to-video, and text alone is text-to-video.
PipelineKind choose_pipeline(const LtxModel& model, bool has_image, bool has_video);

/// @brief Called after each denoising step (1-based) with the total; for progress bars and logs.
using StepCallback = std::function<void(int64_t step, int64_t total)>;

/// @brief LTXPipeline.
GenerateResult text_to_video(LtxModel& model, const TextToVideoRequest& request, const ltxmps::ExecutionPlan& plan,
                             const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(),
                             const ProgressCallback& progress = {});
/// @brief LTXImageToVideoPipeline.
GenerateResult image_to_video(LtxModel& model, const ImageToVideoRequest& request, const ltxmps::ExecutionPlan& plan,
                              const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(),
                              const ProgressCallback& progress = {});
/// @brief LTXConditionPipeline.
GenerateResult condition(LtxModel& model, const ConditionRequest& request, const ltxmps::ExecutionPlan& plan,
                         const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(), const ProgressCallback& progress = {});

/// @brief Validates `request` and runs the pipeline `request.kind` with every ltxmps policy of `plan` in use
///        (device, dtypes, CPU-generator noise, attention kernel, offload scopes, memory release, text encoder
///        released before the denoising loop). Throws ltxmps::Error on bad input or on NaN.
GenerateResult generate(LtxModel& model, const GenerateRequest& request, const ltxmps::ExecutionPlan& plan,
                        const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(), const ProgressCallback& progress = {});

/// @brief A ProgressCallback that calls `on_step` for the denoising steps only.
ProgressCallback step_progress(StepCallback on_step);

}  // namespace ltxmps::pipeline
