// The LTX-Video pipelines (diffusers' LTXPipeline, LTXImageToVideoPipeline, LTXConditionPipeline) and the
// diffusers folder loader. Spec §3 describes what is matched; the installed diffusers source is the final word.
//
// Note [One generator, diffusers' order of draws]
// Every random tensor comes from one CPU generator seeded with request.seed, drawn with ltxmps::randn in
// float32 (equal to diffusers' randn_tensor / torch.randn with `torch.Generator().manual_seed(seed)` in
// float32), in diffusers' order (spec §8 item 9):
//   - text-to-video: initial noise, decode noise (timestep-conditioned VAEs only);
//   - image-to-video: one posterior sample per image, initial noise, decode noise;
//   - condition: initial noise, then per condition its posterior sample and (frame_index > 0) the noise of
//     its prefix tokens, then per step the image-conditioning noise (when image_cond_noise_scale > 0 and
//     there is conditioning), then decode noise.
// 0.9.1's decoder noise injection uses diffusers' *global* torch RNG, which no pipeline argument seeds; here
// it comes from a second CPU generator seeded with request.seed (deterministic, but only equal to diffusers
// after `torch.manual_seed(seed)` right before the decode).
//
// Note [Dtypes in the loop]
// As in diffusers: the loop latents are float32; the transformer input is cast to the prompt embeddings'
// dtype (the text encoder's); T2V/I2V cast the velocity to float32 before CFG, the condition pipeline does
// CFG in the transformer's dtype; the Euler step runs in float32. Before decoding, the latents are cast to
// the embeddings' dtype (the decode noise is mixed in that dtype) and then to the VAE's.

#include "ltxmps_pipeline/pipeline.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/offload.hpp"
#include "ltxmps/random.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

namespace ltxmps::pipeline {

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------------
// Moving a component's weights (OffloadScope's move function)

void move_to(at::Tensor& t, const c10::Device& d) {
  if (t.defined()) t = t.to(d);
}
void move_to(LinearWeights& w, const c10::Device& d) {
  move_to(w.weight, d);
  move_to(w.bias, d);
}
void move_to(VaeConv3dWeights& w, const c10::Device& d) {
  move_to(w.weight, d);
  move_to(w.bias, d);
}
void move_to(VaeTimeEmbedderWeights& w, const c10::Device& d) {
  move_to(w.linear_1, d);
  move_to(w.linear_2, d);
}
void move_to(VaeResnetWeights& w, const c10::Device& d) {
  for (auto* c : {&w.conv1, &w.conv2, &w.conv_shortcut}) move_to(*c, d);
  for (auto* t : {&w.norm3_weight, &w.norm3_bias, &w.per_channel_scale1, &w.per_channel_scale2, &w.scale_shift_table})
    move_to(*t, d);
}
void move_to(VaeMidBlockWeights& w, const c10::Device& d) {
  move_to(w.time_embedder, d);
  for (auto& r : w.resnets) move_to(r, d);
}
void move_to(VaeDownsamplerWeights& w, const c10::Device& d) { move_to(w.conv, d); }
void move_to(VaeUpsamplerWeights& w, const c10::Device& d) { move_to(w.conv, d); }
template <typename T>
void move_to(std::optional<T>& w, const c10::Device& d) {
  if (w) move_to(*w, d);
}

void move_transformer(TransformerModel& m, const c10::Device& d) {
  for (auto* l : {&m.proj_in, &m.time_embed_emb_timestep_embedder_linear_1, &m.time_embed_emb_timestep_embedder_linear_2,
                  &m.time_embed_linear, &m.caption_projection_linear_1, &m.caption_projection_linear_2, &m.proj_out})
    move_to(*l, d);
  move_to(m.scale_shift_table, d);
  for (auto& b : m.transformer_blocks) {
    move_to(b.norm1_weight, d);
    move_to(b.norm2_weight, d);
    for (auto* a : {&b.attn1, &b.attn2}) {
      for (auto* l : {&a->to_q, &a->to_k, &a->to_v, &a->to_out_0}) move_to(*l, d);
      move_to(a->norm_q_weight, d);
      move_to(a->norm_k_weight, d);
    }
    move_to(b.ff_net_0_proj, d);
    move_to(b.ff_net_2, d);
    move_to(b.scale_shift_table, d);
  }
  m.runtime.device = d;
}

void move_vae(VaeModel& m, const c10::Device& d) {
  auto& e = m.encoder;
  move_to(e.conv_in, d);
  for (auto& b : e.down_blocks) {
    for (auto& r : b.resnets) move_to(r, d);
    move_to(b.downsampler, d);
    move_to(b.conv_out, d);
  }
  move_to(e.mid_block, d);
  move_to(e.conv_out, d);
  auto& dec = m.decoder;
  move_to(dec.conv_in, d);
  move_to(dec.mid_block, d);
  for (auto& b : dec.up_blocks) {
    move_to(b.conv_in, d);
    move_to(b.time_embedder, d);
    move_to(b.upsampler, d);
    for (auto& r : b.resnets) move_to(r, d);
  }
  move_to(dec.conv_out, d);
  move_to(dec.timestep_scale_multiplier, d);
  move_to(dec.time_embedder, d);
  move_to(dec.scale_shift_table, d);
  move_to(m.latents_mean, d);
  move_to(m.latents_std, d);
  m.runtime.device = d;
}

void move_t5(T5EncoderModel& m, const c10::Device& d) {
  move_to(m.shared, d);
  move_to(m.final_layer_norm, d);
  for (auto& b : m.block)
    for (auto* t : {&b.layer_0_layer_norm_weight, &b.q, &b.k, &b.v, &b.o, &b.relative_attention_bias,
                    &b.layer_1_layer_norm_weight, &b.wi, &b.wi_0, &b.wi_1, &b.wo})
      move_to(*t, d);
  m.runtime.device = d;
}

// ---------------------------------------------------------------------------------------------------
// diffusers' static helpers

/// `_pack_latents`: [B, C, F, H, W] -> [B, F/pt · H/p · W/p, C·pt·p·p].
at::Tensor pack_latents(const at::Tensor& x, int64_t p, int64_t pt) {
  const auto B = x.size(0), F = x.size(2), H = x.size(3), W = x.size(4);
  return x.reshape({B, -1, F / pt, pt, H / p, p, W / p, p})
      .permute({0, 2, 4, 6, 1, 3, 5, 7})
      .flatten(4, 7)
      .flatten(1, 3);
}

/// `_unpack_latents`: [B, S, C·pt·p·p] -> [B, C, F, H, W]; F, H, W are the token grid (after patchify).
at::Tensor unpack_latents(const at::Tensor& x, int64_t F, int64_t H, int64_t W, int64_t p, int64_t pt) {
  return x.reshape({x.size(0), F, H, W, -1, pt, p, p})
      .permute({0, 4, 1, 5, 2, 6, 3, 7})
      .flatten(6, 7)
      .flatten(4, 5)
      .flatten(2, 3);
}

/// `_prepare_video_ids`: integer (f, h, w) of each token, [B, 3, S] int64.
at::Tensor prepare_video_ids(int64_t B, int64_t F, int64_t H, int64_t W, int64_t p, int64_t pt, const c10::Device& d) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(d);
  auto grid = at::meshgrid({at::arange(0, F, pt, opts), at::arange(0, H, p, opts), at::arange(0, W, p, opts)}, "ij");
  return at::stack(grid, 0).unsqueeze(0).repeat({B, 1, 1, 1, 1}).reshape({B, -1, F * H * W});
}

/// `_scale_video_ids`: pixel-space coordinates; the frame coordinate is causal-shifted and offset.
at::Tensor scale_video_ids(const at::Tensor& ids, int64_t spatial, int64_t temporal, int64_t frame_index) {
  auto scaled = ids * at::tensor({temporal, spatial, spatial}, ids.options()).view({1, 3, 1});
  auto frames = scaled.select(1, 0);
  frames.copy_((frames + 1 - temporal).clamp_min(0) + frame_index);
  return scaled;
}

/// `rescale_noise_cfg` (guidance rescale).
at::Tensor rescale_noise_cfg(const at::Tensor& noise_cfg, const at::Tensor& noise_pred_text, double guidance_rescale) {
  std::vector<int64_t> dims;
  for (int64_t i = 1; i < noise_pred_text.dim(); ++i) dims.push_back(i);
  const auto std_text = at::std(noise_pred_text, dims, /*unbiased=*/true, /*keepdim=*/true);
  const auto std_cfg = at::std(noise_cfg, dims, /*unbiased=*/true, /*keepdim=*/true);
  const auto rescaled = noise_cfg * (std_text / std_cfg);
  return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg;
}

/// VaeImageProcessor.preprocess for tensors already at the target size: [-1, 1] from [0, 1] when min >= 0.
at::Tensor to_model_range(const at::Tensor& pixels) {
  auto x = pixels.to(at::kFloat);
  if (x.min().item<float>() >= 0) x = 2.0 * x - 1.0;
  return x;
}

/// VideoProcessor.postprocess_video(output_type="pt"): [B, C, F, H, W] in [-1, 1] -> [B, F, C, H, W] in [0, 1].
at::Tensor postprocess_video(const at::Tensor& video) {
  return (video * 0.5 + 0.5).clamp(0, 1).permute({0, 2, 1, 3, 4}).to(at::kCPU, at::kFloat).contiguous();
}

void check_finite(const at::Tensor& t, const std::string& what) {
  LTXMPS_CHECK(at::isfinite(t).all().item<bool>(), what);
}

const char* kind_name(PipelineKind kind) {
  switch (kind) {
    case PipelineKind::text_to_video: return "text-to-video (LTXPipeline)";
    case PipelineKind::image_to_video: return "image-to-video (LTXImageToVideoPipeline)";
    case PipelineKind::condition: return "condition (LTXConditionPipeline)";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------------
// One generation

class Generation {
 public:
  Generation(LtxModel& model, const GenerateRequest& request, const ltxmps::ExecutionPlan& plan,
             const ltxmps::DiagnosticSink& sink, const StepCallback& on_step)
      : m_(model), r_(request), plan_(plan), sink_(sink), on_step_(on_step),
        device_(plan.offload.enabled ? plan.offload.execution : plan.device),
        gen_(ltxmps::make_cpu_generator(request.seed)) {}

  GenerateResult run();

 private:
  void validate();
  void encode_prompts();
  void prepare_conditioning();  // checks and preprocesses images / condition frames (before any model runs)
  void encode_conditioning();   // VAE-encodes them (after the text encoder, before the transformer)
  at::Tensor sample_latents(size_t i);  // normalized posterior sample of conditioning input i, float32
  at::Tensor noise(at::IntArrayRef shape) { return ltxmps::randn(shape, gen_, f32()); }
  at::TensorOptions f32() const { return at::TensorOptions().dtype(at::kFloat).device(device_); }
  at::Tensor velocity(const at::Tensor& latents, const at::Tensor& timestep, const TransformerInputs& grid);
  at::Tensor guide(const at::Tensor& noise_pred) const;
  void after_step(const at::Tensor& latents, int64_t i, int64_t total);
  GenerateResult decode(const at::Tensor& unpacked_normalized);

  void text_to_video(at::Tensor& latents);
  void image_to_video(at::Tensor& latents);
  void condition(at::Tensor& latents);

  LtxModel& m_;
  const GenerateRequest& r_;
  const ltxmps::ExecutionPlan& plan_;
  const ltxmps::DiagnosticSink& sink_;
  const StepCallback& on_step_;
  c10::Device device_;
  at::Generator gen_;

  int64_t batch_ = 1;
  bool cfg_ = false;
  int64_t p_ = 1, pt_ = 1, spatial_ = 1, temporal_ = 1;
  int64_t lf_ = 0, lh_ = 0, lw_ = 0;  // latent grid (before patchify)
  at::Tensor embeds_, mask_;          // CFG batch [neg; pos] when guidance is on
  at::Tensor pos_embeds_;             // the conditional embeddings (their dtype is the "prompt_embeds.dtype")
  /// Conditioning inputs (I2V images, condition items), VAE-encoded before the transformer runs so that an
  /// offloaded VAE and transformer never share the device; sampled later, in diffusers' order of draws.
  struct Conditioning {
    at::Tensor data;  // [1, 3, F, H, W] in [-1, 1]
    double strength = 1.0;
    int64_t frame_index = 0;
  };
  std::vector<Conditioning> inputs_;
  std::vector<VaePosterior> posteriors_;
};

void Generation::validate() {
  const auto& r = r_;
  LTXMPS_CHECK(r.num_inference_steps >= 1 || (r.kind == PipelineKind::condition && r.timesteps && !r.timesteps->empty()),
               "generate: num_inference_steps must be >= 1, got ", r.num_inference_steps);
  LTXMPS_CHECK(std::isfinite(r.guidance_scale) && r.guidance_scale >= 0, "generate: guidance_scale must be >= 0, got ",
               r.guidance_scale);
  LTXMPS_CHECK(std::isfinite(r.guidance_rescale) && r.guidance_rescale >= 0 && r.guidance_rescale <= 1,
               "generate: guidance_rescale must be in [0, 1], got ", r.guidance_rescale);
  LTXMPS_CHECK(std::isfinite(r.frame_rate) && r.frame_rate > 0, "generate: frame_rate must be > 0, got ", r.frame_rate);
  LTXMPS_CHECK(r.decode_timestep >= 0, "generate: decode_timestep must be >= 0, got ", r.decode_timestep);
  spatial_ = m_.vae.config.spatial_compression();
  temporal_ = m_.vae.config.temporal_compression();
  p_ = m_.transformer.config.patch_size;
  pt_ = m_.transformer.config.patch_size_t;
  const int64_t unit = spatial_ * p_;
  LTXMPS_CHECK(r.height > 0 && r.width > 0 && r.height % unit == 0 && r.width % unit == 0, "generate: height and width (",
               r.height, "x", r.width, ") must be positive multiples of ", unit,
               " (the VAE's spatial compression", p_ > 1 ? " times the transformer patch size" : "",
               "; 32 for the released models): use for example ", std::max<int64_t>(unit, r.height / unit * unit), "x",
               std::max<int64_t>(unit, r.width / unit * unit));
  LTXMPS_CHECK(r.num_frames >= 1 && (r.num_frames - 1) % temporal_ == 0, "generate: num_frames (", r.num_frames,
               ") must be ", temporal_, "k+1 (the VAE's temporal compression is ", temporal_, "): use for example ",
               (std::max<int64_t>(r.num_frames - 1, 0) / temporal_) * temporal_ + 1);
  lf_ = (r.num_frames - 1) / temporal_ + 1;
  lh_ = r.height / spatial_;
  lw_ = r.width / spatial_;
  LTXMPS_CHECK(lf_ % pt_ == 0, "generate: ", lf_, " latent frames are not a multiple of the transformer's patch_size_t ",
               pt_);
  cfg_ = r.guidance_scale > 1.0;
  batch_ = r.prompt_embeddings && r.prompt_embeddings->prompt_embeds.defined() ? r.prompt_embeddings->prompt_embeds.size(0)
                                                                               : static_cast<int64_t>(r.prompts.size());
  LTXMPS_CHECK(batch_ >= 1, "generate: no prompt given");
  LTXMPS_CHECK(r.decode_noise_scale.value_or(0.0) >= 0, "generate: decode_noise_scale must be >= 0");
  if (r.kind != PipelineKind::image_to_video && r.kind != PipelineKind::condition)
    LTXMPS_CHECK(!r.image, "generate: an image is given, but the pipeline is ", kind_name(r.kind),
                 " (use image-to-video or condition)");
  if (r.kind == PipelineKind::image_to_video) LTXMPS_CHECK(r.image.has_value(), "generate: image-to-video needs an image");
  if (r.kind != PipelineKind::condition) {
    LTXMPS_CHECK(r.conditions.empty(), "generate: conditions are only used by the condition pipeline, not by ",
                 kind_name(r.kind));
    LTXMPS_CHECK(!r.latents, "generate: latents are only used by the condition pipeline (video-to-video)");
    LTXMPS_CHECK(!r.timesteps, "generate: custom timesteps are only used by the condition pipeline");
  } else {
    LTXMPS_CHECK(r.denoise_strength > 0 && r.denoise_strength <= 1, "generate: denoise_strength must be in (0, 1], got ",
                 r.denoise_strength);
    LTXMPS_CHECK(r.image_cond_noise_scale >= 0, "generate: image_cond_noise_scale must be >= 0");
  }
}

void Generation::encode_prompts() {
  PromptEmbeddings e;
  if (r_.prompt_embeddings) {
    e = *r_.prompt_embeddings;
  } else {
    LTXMPS_CHECK(m_.tokenizer && m_.text_encoder && m_.text_encoder->loaded(),
                 "generate: no text encoder (it was not loaded, or released after an earlier generation): pass "
                 "prompt_embeddings (a prompt cache) or load the model with its text encoder");
    LTXMPS_CHECK(!r_.prompts.empty(), "generate: no prompt given");
    EncodePromptOptions options;
    options.prompts = r_.prompts;
    options.negative_prompts = r_.negative_prompts;
    options.max_sequence_length =
        r_.max_sequence_length.value_or(r_.kind == PipelineKind::condition ? int64_t{256} : int64_t{128});
    options.encoder_attention_mask = r_.kind == PipelineKind::condition;
    LTXMPS_CHECK(options.max_sequence_length >= 1, "generate: max_sequence_length must be >= 1");
    auto& encoder = *m_.text_encoder;
    encoder.runtime.attention.kernel = plan_.attention.kernel;
    {
      ltxmps::ReleaseMemoryScope release(device_, "text encoding", sink_);
      ltxmps::OffloadScope offload(plan_.offload, [&](const c10::Device& d) { move_t5(encoder, d); }, "text encoder",
                                   sink_);
      e = encode_prompt(*m_.tokenizer, encoder, options);
    }
    // The text encoder is not needed again: free it before the transformer's loop, on every device.
    encoder.release();
    if (plan_.memory.release_after_heavy_ops) ltxmps::release_memory(device_);
    sink_(ltxmps::Diagnostic{ltxmps::Severity::info, "memory", "pipeline.text_encoder_released",
                             "text encoder released after encoding the prompts, before the denoising loop" +
                                 std::string(plan_.memory.release_after_heavy_ops
                                                 ? " (device cache emptied)"
                                                 : " (its weights are freed on every device)")});
  }
  const auto caption = m_.transformer.config.caption_channels;
  for (const auto* t : {&e.prompt_embeds, &e.negative_prompt_embeds})
    LTXMPS_CHECK(!t->defined() || (t->dim() == 3 && t->size(2) == caption && at::isFloatingType(t->scalar_type())),
                 "generate: prompt embeddings must be floating [batch, tokens, ", caption,
                 "] (the transformer's caption_channels), got ", t->defined() ? t->sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(e.prompt_embeds.defined() && e.prompt_attention_mask.defined(),
               "generate: prompt embeddings without prompt_embeds or prompt_attention_mask");
  LTXMPS_CHECK(e.prompt_attention_mask.dim() == 2 && e.prompt_attention_mask.size(0) == e.prompt_embeds.size(0) &&
                   e.prompt_attention_mask.size(1) == e.prompt_embeds.size(1),
               "generate: prompt_attention_mask has shape ", e.prompt_attention_mask.sizes(), ", expected [",
               e.prompt_embeds.size(0), ", ", e.prompt_embeds.size(1), "]");
  batch_ = e.prompt_embeds.size(0);
  pos_embeds_ = e.prompt_embeds.to(device_);
  const auto pos_mask = e.prompt_attention_mask.to(device_, at::kBool);
  if (cfg_) {
    LTXMPS_CHECK(e.negative_prompt_embeds.defined() && e.negative_prompt_attention_mask.defined() &&
                     e.negative_prompt_embeds.sizes() == e.prompt_embeds.sizes() &&
                     e.negative_prompt_attention_mask.sizes() == e.prompt_attention_mask.sizes(),
                 "generate: guidance_scale > 1 needs negative prompt embeddings and mask of the prompts' shape");
    embeds_ = at::cat({e.negative_prompt_embeds.to(device_, pos_embeds_.scalar_type()), pos_embeds_}, 0);
    mask_ = at::cat({e.negative_prompt_attention_mask.to(device_, at::kBool), pos_mask}, 0);
  } else {
    embeds_ = pos_embeds_;
    mask_ = pos_mask;
  }
}

void Generation::prepare_conditioning() {
  if (r_.kind == PipelineKind::image_to_video) {
    at::Tensor image = *r_.image;
    if (image.dim() == 3) image = image.unsqueeze(0);
    LTXMPS_CHECK(image.dim() == 4 && image.size(1) == m_.vae.config.in_channels && image.size(2) == r_.height &&
                     image.size(3) == r_.width && (image.size(0) == 1 || image.size(0) == batch_),
                 "generate: the image must be [3, ", r_.height, ", ", r_.width, "] (or one per prompt), got ",
                 r_.image->sizes(), "; resize it to the requested size first");
    const auto pixels = to_model_range(image);
    for (int64_t b = 0; b < pixels.size(0); ++b) inputs_.push_back({pixels[b].unsqueeze(0).unsqueeze(2), 1.0, 0});
  } else if (r_.kind == PipelineKind::condition) {
    auto add = [&](const at::Tensor& frames, int64_t frame_index, double strength, size_t index) {
      LTXMPS_CHECK(frames.defined() && frames.dim() == 4 && frames.size(0) >= 1 &&
                       frames.size(1) == m_.vae.config.in_channels && frames.size(2) == r_.height &&
                       frames.size(3) == r_.width,
                   "generate: condition ", index, " must be frames [F, 3, ", r_.height, ", ", r_.width, "], got ",
                   frames.defined() ? frames.sizes() : at::IntArrayRef{}, "; resize it to the requested size first");
      LTXMPS_CHECK(frame_index >= 0 && frame_index < r_.num_frames, "generate: condition ", index, " has frame_index ",
                   frame_index, ", expected 0..", r_.num_frames - 1);
      LTXMPS_CHECK(strength >= 0 && strength <= 1, "generate: condition ", index, " has strength ", strength,
                   ", expected [0, 1]");
      auto data = to_model_range(frames).permute({1, 0, 2, 3}).unsqueeze(0);  // [1, 3, F, H, W]
      if (frames.size(0) > 1) {  // trim_conditioning_sequence
        int64_t n = std::min(frames.size(0), r_.num_frames - frame_index);
        n = (n - 1) / temporal_ * temporal_ + 1;
        data = data.slice(2, 0, n);
      }
      LTXMPS_CHECK(data.size(2) % temporal_ == 1 % temporal_, "generate: condition ", index, " has ", data.size(2),
                   " frames, expected ", temporal_, "k+1");
      inputs_.push_back({data, strength, frame_index});
    };
    if (r_.image) add(r_.image->dim() == 3 ? r_.image->unsqueeze(0) : *r_.image, 0, 1.0, 0);
    for (size_t i = 0; i < r_.conditions.size(); ++i)
      add(r_.conditions[i].frames, r_.conditions[i].frame_index, r_.conditions[i].strength, i + (r_.image ? 1 : 0));
  }
}

void Generation::encode_conditioning() {
  if (inputs_.empty()) return;
  ltxmps::OffloadScope offload(plan_.offload, [&](const c10::Device& d) { move_vae(m_.vae, d); }, "vae", sink_);
  for (const auto& input : inputs_) {
    // I2V casts the image to the embeddings' dtype first (diffusers), the condition pipeline to the VAE's.
    auto data = input.data.to(device_);
    if (r_.kind == PipelineKind::image_to_video) data = data.to(pos_embeds_.scalar_type());
    posteriors_.push_back(m_.vae.encode(data.to(m_.vae.runtime.dtype).contiguous()));
  }
}

at::Tensor Generation::sample_latents(size_t i) {
  auto latents = posteriors_.at(i).sample(gen_).to(device_, at::kFloat);
  return m_.vae.normalize_latents(latents, 1.0);
}

at::Tensor Generation::velocity(const at::Tensor& latents, const at::Tensor& timestep, const TransformerInputs& grid) {
  TransformerInputs in = grid;
  in.hidden_states = (cfg_ ? at::cat({latents, latents}, 0) : latents).to(pos_embeds_.scalar_type());
  in.encoder_hidden_states = embeds_;
  in.encoder_attention_mask = mask_;
  in.timestep = timestep;
  return m_.transformer.forward(in);
}

at::Tensor Generation::guide(const at::Tensor& noise_pred) const {
  if (!cfg_) return noise_pred;
  const auto chunks = noise_pred.chunk(2, 0);
  const auto& uncond = chunks[0];
  const auto& text = chunks[1];
  auto guided = uncond + r_.guidance_scale * (text - uncond);
  if (r_.guidance_rescale > 0) guided = rescale_noise_cfg(guided, text, r_.guidance_rescale);
  return guided;
}

void Generation::after_step(const at::Tensor& latents, int64_t i, int64_t total) {
  check_finite(latents, c10::str("generate: the latents contain NaN or Inf after denoising step ", i + 1, " of ", total,
                                 " (a non-finite transformer output: broken weights, or a precision too low for "
                                 "this model; try fp32 or bf16)"));
  if (on_step_) on_step_(i + 1, total);
}

void Generation::text_to_video(at::Tensor& latents) {
  const int64_t C = m_.transformer.config.in_channels;
  const int64_t N = r_.num_inference_steps;
  const auto& sc = m_.scheduler;
  const double mu =
      calculate_shift(lf_ * lh_ * lw_, sc.base_image_seq_len, sc.max_image_seq_len, sc.base_shift, sc.max_shift);
  FlowMatchEulerScheduler scheduler(sc);
  scheduler.set_timesteps(N, numpy_linspace(1.0, 1.0 / static_cast<double>(N), N), mu);
  const auto timesteps = scheduler.timesteps().to(device_);
  const int64_t total = timesteps.size(0);

  TransformerInputs grid;
  grid.num_frames = lf_ / pt_;
  grid.height = lh_ / p_;
  grid.width = lw_ / p_;
  grid.rope_interpolation_scale = std::array<double, 3>{static_cast<double>(temporal_) / r_.frame_rate,
                                                        static_cast<double>(spatial_), static_cast<double>(spatial_)};
  at::Tensor mask;  // image-to-video: 1 for the frame-0 tokens
  if (r_.kind == PipelineKind::image_to_video) {
    // prepare_latents: the image's latent repeated over the frames, noise elsewhere.
    std::vector<at::Tensor> init;
    for (size_t b = 0; b < posteriors_.size(); ++b) init.push_back(sample_latents(b));
    auto init_latents = at::cat(init, 0).repeat({1, 1, lf_, 1, 1});
    auto cond = at::zeros({batch_, 1, lf_, lh_, lw_}, f32());
    cond.select(2, 0).fill_(1.0);
    const auto n = noise({batch_, C, lf_, lh_, lw_});
    latents = pack_latents(init_latents * cond + n * (1 - cond), p_, pt_);
    mask = pack_latents(cond, p_, pt_).squeeze(-1);
    if (cfg_) mask = at::cat({mask, mask}, 0);
  } else {
    latents = pack_latents(noise({batch_, C, lf_, lh_, lw_}), p_, pt_);
  }
  const int64_t F = lf_ / pt_, H = lh_ / p_, W = lw_ / p_;
  for (int64_t i = 0; i < total; ++i) {
    const auto t = timesteps[i];
    const int64_t rows = cfg_ ? 2 * batch_ : batch_;
    auto timestep = t.expand({rows});
    if (mask.defined()) timestep = timestep.unsqueeze(-1) * (1 - mask);
    auto noise_pred = guide(velocity(latents, timestep, grid).to(at::kFloat));
    check_finite(noise_pred, c10::str("generate: the transformer output contains NaN or Inf at denoising step ", i + 1,
                                      " of ", total, " (broken weights, or a precision too low for this model)"));
    const double t_value = t.item<float>();
    if (!mask.defined()) {
      latents = scheduler.step(noise_pred, t_value, latents);
    } else {
      // Only frames 1.. are stepped; frame 0 keeps the image's latent.
      const auto v = unpack_latents(noise_pred, F, H, W, p_, pt_);
      const auto x = unpack_latents(latents, F, H, W, p_, pt_);
      const auto stepped = scheduler.step(v.slice(2, 1), t_value, x.slice(2, 1));
      latents = pack_latents(at::cat({x.slice(2, 0, 1), stepped}, 2), p_, pt_);
    }
    after_step(latents, i, total);
  }
  latents = unpack_latents(latents, F, H, W, p_, pt_);
}

void Generation::condition(at::Tensor& latents) {
  const int64_t C = m_.transformer.config.in_channels;
  const bool conditioned = !inputs_.empty();

  // Schedule: linear-quadratic timesteps (or custom ones), passed to the scheduler as custom timesteps.
  std::vector<double> custom;
  if (r_.timesteps) {
    custom = *r_.timesteps;
  } else {
    const auto sigmas = linear_quadratic_schedule(r_.num_inference_steps);
    const auto scaled = at::tensor(sigmas, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat) * 1000;
    for (int64_t i = 0; i < scaled.size(0); ++i) custom.push_back(scaled[i].item<float>());
  }
  FlowMatchEulerScheduler scheduler(m_.scheduler);
  scheduler.set_timesteps(0, std::nullopt, std::nullopt, custom);
  auto timesteps = scheduler.timesteps();
  std::optional<at::Tensor> latent_sigma;
  if (r_.denoise_strength < 1) {
    const int64_t n = timesteps.size(0);
    const int64_t steps = std::min(static_cast<int64_t>(static_cast<double>(n) * r_.denoise_strength), n);
    const int64_t start = std::max<int64_t>(n - steps, 0);
    LTXMPS_CHECK(start < n, "generate: denoise_strength ", r_.denoise_strength, " leaves no step of ", n,
                 " (raise it or the number of steps)");
    timesteps = timesteps.slice(0, start);
    latent_sigma = scheduler.sigmas().slice(0, start, start + 1).to(device_);
  }
  timesteps = timesteps.to(device_);
  const int64_t total = timesteps.size(0);

  // prepare_latents
  const std::vector<int64_t> shape{batch_, C, lf_, lh_, lw_};
  auto lat = noise(shape);
  if (r_.latents && latent_sigma) {
    LTXMPS_CHECK(r_.latents->sizes() == at::IntArrayRef(shape), "generate: latents have shape ", r_.latents->sizes(),
                 ", expected ", at::IntArrayRef(shape), " (normalized VAE latents of the video)");
    const auto user = r_.latents->to(device_, at::kFloat);
    lat = *latent_sigma * lat + (1 - *latent_sigma) * user;
  } else if (r_.latents) {
    sink_(ltxmps::Diagnostic{ltxmps::Severity::warning, "pipeline", "pipeline.latents_ignored",
                             "latents are ignored with denoise_strength = 1 (as in diffusers): pass a "
                             "denoise_strength below 1 for video-to-video"});
  }
  std::vector<at::Tensor> extra_latents, extra_ids, extra_masks;
  int64_t extra_tokens = 0;
  at::Tensor frame_mask;
  if (conditioned) frame_mask = at::zeros({batch_, lf_}, f32());
  for (size_t index = 0; index < inputs_.size(); ++index) {
    const auto& item = inputs_[index];
    auto cond = sample_latents(index);
    const int64_t data_frames = item.data.size(2), cond_frames = cond.size(2);
    if (item.frame_index == 0) {
      auto head = lat.slice(2, 0, cond_frames);
      head.copy_(at::lerp(head, cond, item.strength));
      frame_mask.slice(1, 0, cond_frames).fill_(item.strength);
      continue;
    }
    constexpr int64_t prefix = 2;  // num_prefix_latent_frames
    if (data_frames > 1) {
      LTXMPS_CHECK(cond_frames >= prefix, "generate: a video condition at frame ", item.frame_index,
                   " needs at least ", prefix, " latent frames, got ", cond_frames);
      if (cond_frames > prefix) {
        const int64_t start = item.frame_index / temporal_ + prefix;
        const int64_t end = start + cond_frames - prefix;
        LTXMPS_CHECK(end <= lf_, "generate: the video condition at frame ", item.frame_index, " does not fit the ",
                     r_.num_frames, " frames");
        auto part = lat.slice(2, start, end);
        part.copy_(at::lerp(part, cond.slice(2, prefix), item.strength));
        frame_mask.slice(1, start, end).fill_(item.strength);
        cond = cond.slice(2, 0, prefix);
      }
    }
    cond = at::lerp(noise(cond.sizes()), cond, item.strength);
    auto ids = scale_video_ids(prepare_video_ids(batch_, cond.size(2), lh_, lw_, p_, pt_, device_), spatial_, temporal_,
                               item.frame_index);
    auto packed = pack_latents(cond, p_, pt_).expand({batch_, -1, -1});
    extra_masks.push_back(at::full({batch_, packed.size(1)}, item.strength, f32()));
    extra_tokens += packed.size(1);
    extra_latents.push_back(packed);
    extra_ids.push_back(ids);
  }
  auto ids = prepare_video_ids(batch_, lf_, lh_, lw_, p_, pt_, device_);
  at::Tensor mask;
  if (conditioned) mask = frame_mask.gather(1, ids.select(1, 0));
  ids = scale_video_ids(ids, spatial_, temporal_, 0);
  latents = pack_latents(lat, p_, pt_);
  if (!extra_latents.empty()) {
    extra_latents.push_back(latents);
    extra_ids.push_back(ids);
    extra_masks.push_back(mask);
    latents = at::cat(extra_latents, 1);
    ids = at::cat(extra_ids, 2);
    mask = at::cat(extra_masks, 1);
  }
  auto coords = ids.to(at::kFloat);
  coords.select(1, 0).copy_(coords.select(1, 0) * (1.0 / r_.frame_rate));
  const auto init_latents = conditioned ? latents.clone() : at::Tensor();
  TransformerInputs grid;
  grid.video_coords = cfg_ ? at::cat({coords, coords}, 0) : coords;
  const auto mask_in = conditioned ? (cfg_ ? at::cat({mask, mask}, 0) : mask) : at::Tensor();

  for (int64_t i = 0; i < total; ++i) {
    const auto t = timesteps[i];
    if (r_.image_cond_noise_scale > 0 && conditioned) {
      // add_noise_to_image_conditioning_latents
      const auto n = noise(latents.sizes());
      const auto need = (mask > 1.0 - 1e-6).unsqueeze(-1);
      const auto noised = init_latents + r_.image_cond_noise_scale * n * at::pow(t / 1000.0, 2);
      latents = at::where(need, noised, latents);
    }
    const int64_t rows = cfg_ ? 2 * batch_ : batch_;
    auto timestep = t.expand({rows}).unsqueeze(-1).to(at::kFloat);
    if (conditioned) timestep = at::minimum(timestep, (1 - mask_in) * 1000.0);
    auto noise_pred = guide(velocity(latents, timestep, grid));
    check_finite(noise_pred, c10::str("generate: the transformer output contains NaN or Inf at denoising step ", i + 1,
                                      " of ", total, " (broken weights, or a precision too low for this model)"));
    if (cfg_) timestep = timestep.chunk(2, 0)[0];
    auto denoised = scheduler.step_per_token(-noise_pred, timestep, latents);
    if (conditioned) {
      const auto to_denoise = (t / 1000 - 1e-6 < (1.0 - mask)).unsqueeze(-1);
      latents = at::where(to_denoise, denoised, latents);
    } else {
      latents = denoised;
    }
    after_step(latents, i, total);
  }
  if (conditioned) latents = latents.slice(1, extra_tokens);
  latents = unpack_latents(latents, lf_ / pt_, lh_ / p_, lw_ / p_, p_, pt_);
}

GenerateResult Generation::decode(const at::Tensor& unpacked_normalized) {
  GenerateResult result;
  auto latents = m_.vae.denormalize_latents(unpacked_normalized, m_.vae.config.scaling_factor);
  result.latents = latents.to(at::kCPU, at::kFloat).contiguous();
  latents = latents.to(pos_embeds_.scalar_type());
  std::optional<at::Tensor> temb;
  if (m_.vae.config.timestep_conditioning) {
    const auto n = ltxmps::randn(latents.sizes(), gen_, latents.options());
    const auto opts = at::TensorOptions().dtype(latents.scalar_type()).device(device_);
    temb = at::full({batch_}, r_.decode_timestep, opts);
    const auto scale = at::full({batch_}, r_.decode_noise_scale.value_or(r_.decode_timestep), opts);
    latents = mix_decode_noise(latents, n, scale);
  }
  latents = latents.to(m_.vae.runtime.dtype);
  at::Generator injection = ltxmps::make_cpu_generator(r_.seed);  // Note [One generator, diffusers' order of draws]
  at::Tensor video;
  {
    ltxmps::ReleaseMemoryScope release(device_, "vae decode", sink_);
    ltxmps::OffloadScope offload(plan_.offload, [&](const c10::Device& d) { move_vae(m_.vae, d); }, "vae", sink_);
    video = m_.vae.decode(latents, temb, &injection);
  }
  result.frames = postprocess_video(video);
  return result;
}

GenerateResult Generation::run() {
  validate();
  prepare_conditioning();
  encode_prompts();
  encode_conditioning();
  m_.transformer.runtime.attention.kernel = plan_.attention.kernel;
  at::Tensor latents;
  {
    ltxmps::OffloadScope offload(plan_.offload, [&](const c10::Device& d) { move_transformer(m_.transformer, d); },
                                 "transformer", sink_);
    if (r_.kind == PipelineKind::condition) condition(latents);
    else text_to_video(latents);
  }
  if (plan_.memory.release_after_heavy_ops) ltxmps::release_memory(device_);
  return decode(latents);
}

void require_path(const fs::path& path, bool folder, const fs::path& root, const std::string& what) {
  const bool ok = folder ? fs::is_directory(path) : fs::is_regular_file(path);
  LTXMPS_CHECK(ok, root.string(), ": missing ", folder ? "subfolder '" : "file '", fs::relative(path, root).string(),
               folder ? "/'" : "'", " (", what, ")");
}

}  // namespace

LtxModel load_ltx_model(const fs::path& root, const ltxmps::ExecutionPlan& plan, const LoadOptions& options,
                        const ltxmps::DiagnosticSink& sink) {
  LTXMPS_CHECK(fs::is_directory(root), "load_ltx_model: ", root.string(),
               " is not a folder (expected a diffusers LTX-Video folder with model_index.json)");
  const auto index_file = root / "model_index.json";
  require_path(index_file, false, root, "the diffusers pipeline index written by save_pretrained");
  const auto index = read_json_file(index_file);
  LTXMPS_CHECK(index.is_object() && index.contains("_class_name") && index.at("_class_name").is_string(),
               index_file.string(), ": no '_class_name'");
  const auto cls = index.at("_class_name").get<std::string>();
  LTXMPS_CHECK(cls == "LTXPipeline" || cls == "LTXImageToVideoPipeline" || cls == "LTXConditionPipeline",
               index_file.string(), ": _class_name is '", cls,
               "', expected LTXPipeline, LTXImageToVideoPipeline or LTXConditionPipeline");
  for (const char* component : {"transformer", "vae", "scheduler", "text_encoder", "tokenizer"}) {
    if (!options.load_text_encoder && (std::string(component) == "text_encoder" || std::string(component) == "tokenizer"))
      continue;
    require_path(root / component, true, root, "a component of the LTX-Video pipeline");
  }
  require_path(root / "scheduler" / "scheduler_config.json", false, root, "the FlowMatchEulerDiscreteScheduler config");
  require_path(root / "transformer" / "config.json", false, root, "the LTXVideoTransformer3DModel config");
  require_path(root / "vae" / "config.json", false, root, "the AutoencoderKLLTXVideo config");

  const c10::Device home = plan.offload.enabled ? plan.offload.home : plan.device;
  LtxModel model{root,
                 std::nullopt,
                 std::nullopt,
                 TransformerModel{},
                 VaeModel{},
                 FlowMatchSchedulerConfig::from_file(root / "scheduler" / "scheduler_config.json"),
                 false};
  TransformerRuntime tr;
  tr.device = home;
  tr.dtype = plan.precision.transformer.compute;
  tr.attention = ltxmps::AttentionOptions(plan.attention.kernel);
  model.transformer = load_transformer(root / "transformer", tr, options.variant);
  VaeRuntime vr;
  vr.device = home;
  vr.dtype = plan.precision.vae.compute;
  model.vae = load_vae(root / "vae", vr, options.variant);
  if (plan.vae.tiling) model.vae.tiling.enable_tiling();
  model.vae.tiling.use_slicing = plan.vae.slicing;
  if (options.load_text_encoder) {
    require_path(root / "text_encoder" / "config.json", false, root, "the T5EncoderModel config");
    model.tokenizer = T5Tokenizer::load(root / "tokenizer");
    T5Runtime t5;
    t5.device = home;
    t5.dtype = plan.precision.text_encoder.compute;
    t5.keep_in_fp32_modules = plan.precision.text_encoder.keep_in_fp32_modules;
    t5.attention = ltxmps::AttentionOptions(plan.attention.kernel);
    model.text_encoder = load_t5_encoder(root / "text_encoder", t5, options.variant);
  }
  sink(ltxmps::Diagnostic{ltxmps::Severity::info, "pipeline", "pipeline.loaded",
                          c10::str("loaded ", cls, " from ", root.string(), " on ", home.str(),
                                   options.load_text_encoder ? "" : " (without the text encoder)")});
  return model;
}

GenerateResult generate(LtxModel& model, const GenerateRequest& request, const ltxmps::ExecutionPlan& plan,
                        const ltxmps::DiagnosticSink& sink, const StepCallback& on_step) {
  return Generation(model, request, plan, sink, on_step).run();
}

}  // namespace ltxmps::pipeline
