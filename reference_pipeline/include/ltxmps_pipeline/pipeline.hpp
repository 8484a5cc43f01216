#pragma once
// The LTX-Video pipelines (text-to-video, image-to-video, conditioned generation) composed from the
// ltxmps policies, and the folder loader. Mirrors diffusers' LTXPipeline, LTXImageToVideoPipeline and
// LTXConditionPipeline (spec §3); the same seed with a CPU generator gives the same video as diffusers.
//
// API contract shared by the pipeline implementation (src/pipeline.cpp, src/scheduler.cpp) and the CLI
// (cli/generate_commands.cpp): the declarations below may gain members, never lose or rename them.

#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/scheduler.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/tokenizer.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
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

/// @brief One conditioning item of LTXConditionPipeline (`LTXVideoCondition`).
struct VideoCondition {
  /// Pixels [F, 3, H, W] float: an image is F = 1. Values in [0, 1] are mapped to [-1, 1] (2x - 1) as
  /// diffusers' VaeImageProcessor does for inputs with min >= 0; tensors with negatives are used as they are.
  at::Tensor frames;
  int64_t frame_index = 0;
  double strength = 1.0;
};

/// @brief Everything a generation needs besides the model; defaults are diffusers' (spec §3.2–3.4).
struct GenerateRequest {
  PipelineKind kind = PipelineKind::text_to_video;
  std::vector<std::string> prompts{""};          ///< batch of prompts (ignored with `prompt_embeddings`)
  std::vector<std::string> negative_prompts;     ///< empty: "" for each prompt
  std::optional<PromptEmbeddings> prompt_embeddings;  ///< a prompt cache instead of the text encoder
  int64_t height = 512;
  int64_t width = 704;
  int64_t num_frames = 161;
  double frame_rate = 25.0;
  int64_t num_inference_steps = 50;
  std::optional<std::vector<double>> timesteps;  ///< custom timesteps (condition pipeline)
  double guidance_scale = 3.0;
  double guidance_rescale = 0.0;
  double decode_timestep = 0.0;
  std::optional<double> decode_noise_scale;
  std::optional<int64_t> max_sequence_length;    ///< empty: 128 (T2V, I2V) or 256 (condition)
  uint64_t seed = 0;                             ///< one CPU generator, like torch.Generator().manual_seed
  /// Image-to-video: the first frame [3, H, W] (same value convention as VideoCondition::frames).
  std::optional<at::Tensor> image;
  /// Condition pipeline.
  std::vector<VideoCondition> conditions;
  double denoise_strength = 1.0;
  double image_cond_noise_scale = 0.15;
  /// Condition pipeline with denoise_strength < 1: the video's normalized latents [B, C, F', H', W'].
  std::optional<at::Tensor> latents;
};

/// @brief What a generation returns.
struct GenerateResult {
  at::Tensor latents;  ///< final denoised latents, unpacked and denormalized [B, C, F', H', W'] float32 (CPU)
  at::Tensor frames;   ///< decoded video [B, F, 3, H, W] float32 in [0, 1] (CPU), diffusers' output_type="pt"
};

/// @brief Called after each denoising step (1-based) with the total; for progress bars and logs.
using StepCallback = std::function<void(int64_t step, int64_t total)>;

/// @brief A loaded LTX-Video model: diffusers folder (`model_index.json` + subfolders) or the embedded
///        random default. The text encoder may be absent (prompt cache) and is released after encoding.
struct LtxModel {
  std::filesystem::path root;                    ///< empty for the embedded default
  std::optional<T5Tokenizer> tokenizer;
  std::optional<T5EncoderModel> text_encoder;
  TransformerModel transformer;
  VaeModel vae;
  FlowMatchSchedulerConfig scheduler;
  bool random_weights = false;                   ///< true for the embedded default
};

/// @brief Options of load_ltx_model().
struct LoadOptions {
  bool load_text_encoder = true;                 ///< false when a prompt cache replaces it
  std::optional<std::string> variant;            ///< e.g. "bf16" weight files
};

/// @brief Loads a diffusers LTX-Video folder on the plan's device and dtypes. Errors name the missing
///        file or subfolder and what was expected.
LtxModel load_ltx_model(const std::filesystem::path& root, const ltxmps::ExecutionPlan& plan,
                        const LoadOptions& options = {}, const ltxmps::DiagnosticSink& sink = ltxmps::null_sink());

/// @brief A small deterministic random-weight LTX-Video model built in memory (no files); its tokenizer
///        stand-in and sizes are documented in pipeline.cpp. For the CLI's embedded default.
LtxModel make_embedded_default_model(const ltxmps::ExecutionPlan& plan);

/// @brief Runs the pipeline `request.kind` with every ltxmps policy of `plan` in use (device, dtypes,
///        CPU-generator noise, attention kernel, offload scopes, memory release after encoding and decoding,
///        text encoder released before the denoising loop). Throws ltxmps::Error on bad input or on NaN.
GenerateResult generate(LtxModel& model, const GenerateRequest& request, const ltxmps::ExecutionPlan& plan,
                        const ltxmps::DiagnosticSink& sink = ltxmps::null_sink(), const StepCallback& on_step = {});

}  // namespace ltxmps::pipeline
