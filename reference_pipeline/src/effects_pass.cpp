// OmnimatteZero's effects pass (`generate_total_mask` of self_attention_map.py), built from the pipeline
// stages and the O(N) reduction of effects_mask.cpp.
//
// Note [Effects pass positions]
// The official pass scales the token positions like the removal (32 px, 8 frames, causal shift) but does not
// divide the frame coordinate by the frame rate (the removal does): RoPE sees frames 0, 1, 9, 17, ... here.
// The forward's timestep is one value for all tokens (1000·σ), and there is no guidance batch.

#include "ltxmps_pipeline/effects_pass.hpp"

#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/stages.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/offload.hpp"

#include <cmath>

namespace ltxmps::pipeline {

at::Tensor effects_object_mask(const at::Tensor& mask) {
  return (mask.to(at::kFloat) * 2.0 - 1.0).mean(1) > 0;
}

void EffectsMaskRequest::validate(const LtxModel& model) const {
  LTXMPS_CHECK(video.defined() && video.dim() == 4 && video.size(1) == 3 && at::isFloatingType(video.scalar_type()),
               "effects-mask: the video must be float frames [T, 3, H, W] in [0, 1], got ",
               video.defined() ? c10::str(video.sizes()) : std::string("nothing"));
  LTXMPS_CHECK(object_mask.defined() && object_mask.dim() == 4 && (object_mask.size(1) == 1 || object_mask.size(1) == 3),
               "effects-mask: the object mask must be float frames [T, 1 or 3, H, W] in [0, 1], got ",
               object_mask.defined() ? c10::str(object_mask.sizes()) : std::string("nothing"));
  LTXMPS_CHECK(object_mask.size(0) == video.size(0) && object_mask.size(2) == video.size(2) &&
                   object_mask.size(3) == video.size(3),
               "effects-mask: the object mask has ", object_mask.size(0), " frames of ", object_mask.size(3), "x",
               object_mask.size(2), ", the video ", video.size(0), " frames of ", video.size(3), "x", video.size(2),
               " (they must match; --fit adapts them)");
  (void)LatentGrid::make(model.vae.config, model.transformer.config, video.size(0), video.size(2), video.size(3),
                         "effects-mask");
  LTXMPS_CHECK(model.transformer.config.patch_size == 1 && model.transformer.config.patch_size_t == 1,
               "effects-mask: the transformer's patch size must be 1 (one latent per token)");
  LTXMPS_CHECK(std::isfinite(extraction_sigma) && extraction_sigma >= 0 && extraction_sigma <= 1,
               "effects-mask: --extraction-sigma must be in [0, 1], got ", extraction_sigma);
  LTXMPS_CHECK(max_sequence_length >= 1, "effects-mask: max_sequence_length must be >= 1");
  options.validate(model.transformer.config.num_layers);
  LTXMPS_CHECK(effects_object_mask(object_mask).any().item<bool>(),
               "effects-mask: the object mask is empty (no pixel whose channel mean is above mid-grey): nothing to "
               "find effects of");
}

PromptRequest EffectsMaskRequest::prompt_request() const {
  PromptRequest pr;
  pr.prompts = {prompt};
  pr.negative_prompts = {""};
  pr.embeddings = prompt_embeddings;
  pr.max_sequence_length = max_sequence_length;
  pr.encoder_attention_mask = true;
  pr.guidance = false;
  return pr;
}

namespace {

/// The per-token scores of one forward over the noisy latents, with the capture of the requested layers.
at::Tensor forward_scores(StageContext& ctx, const EffectsMaskRequest& r, const LatentGrid& g, const at::Tensor& noisy,
                          const PromptBatch& prompts, const at::Tensor& object_tokens) {
  auto& transformer = ctx.model.transformer;
  const auto layers = r.options.resolved_layers(transformer.config.num_layers);
  EffectsScoreAccumulator accumulator(object_tokens.to(ctx.device), layers);
  auto capture = accumulator.capture(r.options.query_chunk, r.options.apply_rope);
  const auto visit = capture.visit;
  const int64_t total = static_cast<int64_t>(layers.size());
  int64_t done = 0, last_layer = -1;
  capture.visit = [&](int64_t layer, int64_t begin, const at::Tensor& probs) {
    visit(layer, begin, probs);
    if (layer != last_layer) report(ctx.progress, "effects", ++done, total), last_layer = layer;
  };
  TransformerInputs in;
  in.hidden_states = g.pack(noisy).to(prompts.dtype());
  in.encoder_hidden_states = prompts.embeds;
  in.encoder_attention_mask = prompts.mask;
  in.timestep = at::full({1, 1}, r.extraction_sigma * 1000.0, at::TensorOptions().dtype(at::kFloat).device(ctx.device));
  in.video_coords = g.rope_coords(1, ctx.device, /*frame_rate=*/0.0);  // Note [Effects pass positions]
  transformer.runtime.attention.kernel = ctx.plan.attention.kernel;
  {
    ltxmps::OffloadScope offload(ctx.plan.offload, [&](const c10::Device& d) { move_model(transformer, d); },
                                 "transformer", ctx.sink);
    (void)transformer.forward(in, &capture);
  }
  if (ctx.plan.memory.release_after_heavy_ops) ltxmps::release_memory(ctx.device);
  const auto scores = accumulator.scores();
  LTXMPS_CHECK(at::isfinite(scores).all().item<bool>(),
               "effects-mask: the attention scores contain NaN or Inf (broken transformer weights, or a precision too "
               "low for this model)");
  return scores;
}

}  // namespace

EffectsMaskResult compute_effects_mask(LtxModel& model, const EffectsMaskRequest& r, const ltxmps::ExecutionPlan& plan,
                                       const ltxmps::DiagnosticSink& sink, const ProgressCallback& progress) {
  r.validate(model);
  const int64_t T = r.video.size(0), H = r.video.size(2), W = r.video.size(3);
  const auto g = LatentGrid::make(model.vae.config, model.transformer.config, T, H, W, "effects-mask");
  const auto object = effects_object_mask(r.object_mask);
  StageContext ctx(model, plan, sink, progress, r.seed);
  const auto prompts = encode_prompts(ctx, r.prompt_request());
  const auto posterior = encode_videos(ctx, {frames_to_vae_input(ctx, r.video)}).at(0);
  // The two draws of the official pass, in its order, from the run's generator.
  const auto z = sample_normalized(ctx, posterior);
  const auto eps = ctx.noise(z.sizes());
  const auto noisy = (1.0 - r.extraction_sigma) * z + r.extraction_sigma * eps;

  const auto object_tokens =
      object_token_mask(object, g.latent_frames(), g.latent_height(), g.latent_width(), g.temporal);
  const auto scores = forward_scores(ctx, r, g, noisy, prompts, object_tokens);
  const auto mask = effects_mask_from_scores(scores.to(at::kCPU), object, r.options);
  EffectsMaskResult out;
  out.total_mask = mask.total.to(at::kByte);
  out.effects_mask = mask.effects.to(at::kByte);
  out.object_mask = object.to(at::kByte);
  out.scores = scores.to(at::kCPU);
  out.object_tokens = object_tokens.to(at::kCPU);
  out.upsampled = upsample_scores(out.scores, T, H, W);
  out.threshold = mask.threshold;
  return out;
}

}  // namespace ltxmps::pipeline
