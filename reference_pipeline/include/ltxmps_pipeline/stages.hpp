#pragma once
/// @file stages.hpp
/// @brief The stages every LTX-Video pipeline is built from: prompt encoding with guidance batching, VAE
///        encode / decode inside the plan's offload and memory scopes, and the denoising loop with per-step
///        hooks. docs/architecture.md shows how the pipelines compose them.

#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/progress.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/scheduler.hpp"

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ltxmps::pipeline {

/// @brief What one pipeline run shares between its stages: the model, the plan, where to report, and the
///        one CPU generator every random draw comes from (Note [One generator, diffusers' order of draws]).
struct StageContext {
  /// @brief Seeds the run's CPU generator with `seed` and resolves the execution device from `plan`.
  StageContext(LtxModel& model, const ltxmps::ExecutionPlan& plan, const ltxmps::DiagnosticSink& sink,
               const ProgressCallback& progress, uint64_t seed);

  LtxModel& model;                      ///< the loaded components
  const ltxmps::ExecutionPlan& plan;    ///< devices, dtypes, offload and memory policies (must outlive the context)
  ltxmps::DiagnosticSink sink;          ///< where the stages report (a copy: a temporary such as null_sink() is fine)
  ProgressCallback progress;            ///< where the long stages report progress (a copy, likewise)
  c10::Device device;      ///< where the components run (execution_device(plan))
  at::Generator generator; ///< CPU generator seeded with the request's seed
  uint64_t seed;           ///< the request's seed (also seeds 0.9.1's decoder noise injection)

  /// @brief Standard normal noise of `shape` in float32 on `device`, drawn from `generator`.
  at::Tensor noise(at::IntArrayRef shape);
};

/// @brief The prompts of a run, or their cached embeddings.
struct PromptRequest {
  std::vector<std::string> prompts{""};               ///< the batch of prompts (ignored with `embeddings`)
  std::vector<std::string> negative_prompts;          ///< empty: "" for each prompt
  std::optional<PromptEmbeddings> embeddings;         ///< a prompt cache instead of the text encoder
  int64_t max_sequence_length = 128;                 ///< tokens per prompt (128 T2V / I2V, 256 condition)
  bool encoder_attention_mask = false;                ///< pass the token mask to T5 (condition pipeline)
  bool guidance = false;                              ///< classifier-free guidance: batch [negative; positive]
  /// Free the text encoder afterwards (it is not needed again by one pipeline); false when a second pipeline
  /// of the same run still has prompts to encode.
  bool release_encoder = true;
};

/// @brief Encoded prompts on the execution device, batched for guidance.
struct PromptBatch {
  at::Tensor embeds;    ///< [B] or [2B] (negative first) x L x caption_channels
  at::Tensor mask;      ///< bool, same batch
  at::Tensor positive;  ///< the conditional embeddings [B, L, caption_channels]; its dtype is diffusers' prompt_embeds.dtype
  int64_t batch = 1;    ///< B (prompts)
  bool guidance = false;  ///< whether `embeds` / `mask` hold the negative half too
  at::ScalarType dtype() const { return positive.scalar_type(); }  ///< the dtype the transformer input is cast to
  int64_t rows() const { return guidance ? 2 * batch : batch; }    ///< the transformer's batch
};

/// @brief The prompts' T5 embeddings (or the cache): runs the text encoder inside its offload and memory scopes
///        and then releases it unless `request.release_encoder` is false.
PromptEmbeddings text_embeddings(StageContext& ctx, const PromptRequest& request);

/// @brief Runs T5 (or takes the cache), checks the embeddings against the transformer, releases the text
///        encoder before the denoising loop, batches for guidance, and drops the trailing text columns that no
///        prompt attends to (Note [Text past the longest prompt] in stages.cpp).
PromptBatch encode_prompts(StageContext& ctx, const PromptRequest& request);

/// @brief Frames [F, C, H, W] in [0, 1] (any floating dtype, on any device) as a VAE input [1, C, F, H, W] in
///        [-1, 1], in the VAE's dtype on the execution device: the frames cross to the device as they are, in one
///        copy, and are mapped there (Note [Frames mapped on the device] in stages.cpp). The input is not modified.
at::Tensor frames_to_vae_input(const StageContext& ctx, const at::Tensor& frames);

/// @brief VAE-encodes each of `videos` ([B, 3, F, H, W] in [-1, 1], cast to the VAE's dtype here) inside the
///        VAE's offload scope, in order; sampling is left to the caller so that draws keep diffusers' order.
std::vector<VaePosterior> encode_videos(StageContext& ctx, const std::vector<at::Tensor>& videos);

/// @brief Makes a VAE input when its encode comes (see encode_videos()).
using VideoSource = std::function<at::Tensor()>;

/// @brief encode_videos() for inputs made on demand: off the CPU each is made just before its encode and released
///        after it, so that a removal's video and mask do not take device memory together.
std::vector<VaePosterior> encode_videos(StageContext& ctx, const std::vector<VideoSource>& sources);

/// @brief A posterior sample drawn from the run's generator, float32 on the execution device, normalized with
///        the VAE's latents_mean / latents_std and scaling factor 1 (as the LTX pipelines do).
at::Tensor sample_normalized(StageContext& ctx, const VaePosterior& posterior);

/// @brief How the final latents are decoded.
struct DecodeSettings {
  double decode_timestep = 0.0;              ///< the VAE decoder's timestep (timestep-conditioned VAEs only)
  std::optional<double> decode_noise_scale;  ///< empty: decode_timestep
  at::ScalarType latents_dtype = at::kFloat; ///< diffusers casts to prompt_embeds.dtype before mixing the noise
};

/// @brief What a generation returns.
struct GenerateResult {
  at::Tensor latents;  ///< final denoised latents, unpacked and denormalized [B, C, F', H', W'] float32 (CPU)
  at::Tensor frames;   ///< decoded video [B, F, 3, H, W] float32 in [0, 1] (CPU), diffusers' output_type="pt";
                       ///< undefined when the request asked for latents only
  /// The final latents before denormalization [B, C, F', H', W'] float32 on the execution device: what
  /// LTXConditionPipeline returns with output_type="latent" (the input of the latent upsampler).
  at::Tensor normalized_latents;
};

/// @brief Denormalizes (with the VAE's scaling factor), mixes the decode noise of timestep-conditioned VAEs,
///        decodes inside the VAE's offload and memory scopes and post-processes to [0, 1].
GenerateResult decode_latents(StageContext& ctx, const at::Tensor& normalized, const DecodeSettings& settings);

/// @brief One denoising step as the hooks see it.
struct DenoiseStep {
  int64_t index = 0;  ///< 0-based
  int64_t total = 0;  ///< number of steps of the loop
  at::Tensor t;       ///< 0-dim float32 timestep on the execution device
  double t_value = 0;  ///< the same timestep as a host number (reading `t` would wait for the device)
};

/// @brief The per-step behaviour of a pipeline around the shared loop (transformer + guidance).
struct DenoiseHooks {
  /// Before the transformer (e.g. re-noising kept tokens); may replace `latents`. Optional.
  std::function<void(const DenoiseStep&, at::Tensor& latents)> before_model;
  /// The transformer's timestep for the step: [rows] or [rows, tokens]. Required.
  std::function<at::Tensor(const DenoiseStep&)> timestep;
  /// Optional, where the per-token timesteps of `timestep` take a few values only: those values [rows, K] and each
  /// token's index into them [rows, tokens] (int32), which the transformer gets instead (TransformerInputs::
  /// timestep_index, Note [Timestep rows]); the step function still gets `timestep`.
  std::function<std::pair<at::Tensor, at::Tensor>(const DenoiseStep&)> timestep_rows;
  /// The scheduler step (and any blend): returns the new latents from the guided velocity. Required.
  std::function<at::Tensor(const DenoiseStep&, const at::Tensor& velocity, const at::Tensor& timestep,
                           const at::Tensor& latents)>
      step;
};

/// @brief Guidance and numerics of the loop.
struct DenoiseSettings {
  double guidance_scale = 1.0;    ///< classifier-free guidance scale (used when the prompts are batched for it)
  double guidance_rescale = 0.0;  ///< `rescale_noise_cfg` factor; 0 leaves the guided velocity as it is
  bool float32_velocity = false;  ///< cast the velocity to float32 before guidance (LTXPipeline, I2V)
};

/// @brief The denoising loop: for each timestep, the hooks' preparation, the transformer on [latents; latents]
///        under guidance, classifier-free guidance (and rescale), a NaN/Inf check naming the step, the hooks'
///        step, and progress ("denoise", i + 1, total). Runs inside the transformer's offload scope and releases
///        device memory afterwards when the plan says so. `grid` carries the RoPE inputs.
at::Tensor denoise(StageContext& ctx, const PromptBatch& prompts, const TransformerInputs& grid, at::Tensor latents,
                   const at::Tensor& timesteps, const DenoiseSettings& settings, const DenoiseHooks& hooks);

/// @brief The per-token ("hard") conditioning of LTXConditionPipeline, shared with object removal: tokens whose
///        `mask` is 1 are re-noised towards `init` every step (`noise_scale`·ε·(t/1000)², fresh ε of the packed
///        shape), get timestep 0, and keep their value through the step; the others are denoised.
struct TokenConditioning {
  at::Tensor mask;   ///< [B, tokens] float32 conditioning strength (1 = kept)
  at::Tensor init;   ///< [B, tokens, C] packed latents at the start
  double noise_scale = 0.0;  ///< image_cond_noise_scale; 0 disables the re-noise (and its random draws)
};

/// @brief A per-token conditioning mask as its distinct values and each token's index into them (Note [Few
///        timesteps per step] in denoise.cpp).
struct MaskLevels {
  at::Tensor values;  ///< [K] float32, ascending, on the mask's device
  at::Tensor index;   ///< [rows, tokens] int32: token s of row b has the mask value values[index[b, s]]
};

/// The most distinct mask values for which the loop passes the transformer timestep rows instead of per-token
/// timesteps (DenoiseHooks::timestep_rows).
inline constexpr int64_t kMaxTimestepRows = 16;

/// @brief The levels of a float32 [rows, tokens] mask, or nothing where it has more than kMaxTimestepRows
///        distinct values. Reads the mask to the host once (call it before the loop, not per step).
std::optional<MaskLevels> mask_levels(const at::Tensor& mask);

/// @brief A pipeline's per-token timestep: a function of the step's timestep `t` [rows, 1] and a conditioning mask
///        `m` (per token, [rows, tokens], or per distinct value, [1, K]).
using TimestepOfMask = std::function<at::Tensor(const at::Tensor& t, const at::Tensor& m)>;

/// @brief Sets `hooks.timestep` to `per_token(t, mask)` and, where the mask has few distinct values
///        (mask_levels()), `hooks.timestep_rows` to `per_token(t, values)` with each token's index: one formula gives
///        both, so each token's row holds its per-token value (Note [Few timesteps per step] in denoise.cpp).
void set_conditioned_timesteps(DenoiseHooks& hooks, int64_t rows, const at::Tensor& mask,
                               const TimestepOfMask& per_token);

/// @brief The hooks of LTXConditionPipeline's loop: with `conditioning` the re-noise / per-token timestep /
///        keep-where steps above, without it plain per-token Euler steps. `scheduler` must outlive the hooks.
DenoiseHooks condition_hooks(StageContext& ctx, FlowMatchEulerScheduler& scheduler, const PromptBatch& prompts,
                             std::optional<TokenConditioning> conditioning);

/// @brief `rescale_noise_cfg` (guidance rescale, diffusers).
at::Tensor rescale_noise_cfg(const at::Tensor& noise_cfg, const at::Tensor& noise_pred_text, double guidance_rescale);

/// @brief diffusers' VaeImageProcessor range rule: [0, 1] inputs (min >= 0) become [-1, 1] (2x - 1), others stay.
at::Tensor to_model_range(const at::Tensor& pixels);

/// @brief Decoded frames (a permuted view of the VAE's output) as the caller gets them: contiguous float32 on the
///        CPU. The permutation is laid out where the frames are, so a GPU's video crosses to the host in one copy
///        and the CPU does not reorder hundreds of MB after it.
at::Tensor to_host_frames(const at::Tensor& frames);

/// @brief VideoProcessor.postprocess_video(output_type="pt"): decoded `[B, C, F, H, W]` in [-1, 1] -> `[B, F, C, H,
///        W]` in [0, 1], float32 on the CPU (to_host_frames()).
at::Tensor postprocess_video(const at::Tensor& video);

/// @brief LTX's custom timesteps: linear_quadratic_schedule(steps) · 1000 in float32 (or `custom` as given).
std::vector<double> condition_timesteps(int64_t steps, const std::optional<std::vector<double>>& custom);

/// @brief Throws ltxmps::Error for a custom timestep list that is empty or holds a NaN/Inf (diffusers would run
///        NaN latents from it); `what` names the option in the message.
void check_custom_timesteps(const std::optional<std::vector<double>>& timesteps, const std::string& what = "timesteps");

}  // namespace ltxmps::pipeline
