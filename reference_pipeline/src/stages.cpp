// The shared stages of the LTX-Video pipelines (see stages.hpp).
//
// Note [One generator, diffusers' order of draws]
// Every random tensor of a run comes from one CPU generator seeded with the request's seed, drawn with
// ltxmps::randn in float32 (equal to diffusers' randn_tensor / torch.randn with
// `torch.Generator().manual_seed(seed)` in float32), in the pipeline's order: each pipeline file lists its
// draws. 0.9.1's decoder noise injection uses diffusers' *global* torch RNG, which no pipeline argument seeds;
// here it comes from a second CPU generator seeded with the same seed (deterministic, but only equal to
// diffusers after `torch.manual_seed(seed)` right before the decode).
//
// Note [Dtypes in the loop]
// As in diffusers: the loop latents are float32; the transformer input is cast to the prompt embeddings'
// dtype (the text encoder's); T2V/I2V cast the velocity to float32 before guidance, the condition pipeline
// guides in the transformer's dtype; the Euler step runs in float32. Before decoding, the latents are cast
// to the embeddings' dtype (the decode noise is mixed in that dtype) and then to the VAE's.

#include "ltxmps_pipeline/stages.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/runtime.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/offload.hpp"
#include "ltxmps/random.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

namespace ltxmps::pipeline {

// Note [Frames to the host]
// A decoded 768x512x121 video is 570 MB of float32. Copied from the GPU into fresh pageable memory it crossed at
// about 1.5 GB/s (the driver stages pageable copies and the new pages fault in as they are written), 0.37-0.44 s
// of a 2B text-to-video run of 4 s. Through a small pinned buffer each piece crosses at the DMA engines' speed and
// the CPU's copy out of it runs on every core, the pages faulting in parallel; the values are the same.
at::Tensor to_host_frames(const at::Tensor& frames) {
  const auto src = frames.contiguous();
  if (!src.is_cuda()) return src.to(at::kCPU, at::kFloat);
  auto dst = at::empty(src.sizes(), at::TensorOptions().dtype(at::kFloat));
  const auto from = src.view(-1);
  auto to = dst.view(-1);
  const int64_t total = from.numel(), piece = std::min<int64_t>(total, int64_t{8} << 20);  // 32 MiB of float32
  if (piece == 0) return dst;
  const auto staging = at::empty({piece}, at::TensorOptions().dtype(at::kFloat).pinned_memory(true));
  for (int64_t begin = 0; begin < total; begin += piece) {
    const int64_t n = std::min(piece, total - begin);
    auto part = staging.narrow(0, 0, n);
    part.copy_(from.narrow(0, begin, n));  // blocking: the piece is on the host when it returns
    to.narrow(0, begin, n).copy_(part);
  }
  return dst;
}

at::Tensor postprocess_video(const at::Tensor& video) {
  return to_host_frames(video.mul(0.5).add_(0.5).clamp_(0, 1).permute({0, 2, 1, 3, 4}));
}

PromptEmbeddings text_embeddings(StageContext& ctx, const PromptRequest& r) {
  if (r.embeddings) return *r.embeddings;
  auto& m = ctx.model;
  LTXMPS_CHECK(m.text_encoder && m.text_encoder->loaded() && (m.tokenizer || m.byte_tokenizer),
               "generate: no text encoder (it was not loaded, or released after an earlier generation): pass "
               "prompt_embeddings (a prompt cache) or load the model with its text encoder");
  LTXMPS_CHECK(!r.prompts.empty(), "generate: no prompt given");
  LTXMPS_CHECK(r.max_sequence_length >= 1, "generate: max_sequence_length must be >= 1");
  auto& encoder = *m.text_encoder;
  encoder.runtime.attention.kernel = ctx.plan.attention.kernel;
  PromptEmbeddings e;
  report(ctx.progress, "text encoder", 0, 1);
  {
    ltxmps::ReleaseMemoryScope release(ctx.device, "text encoding", ctx.sink);
    ltxmps::OffloadScope offload(ctx.plan.offload, [&](const c10::Device& d) { move_model(encoder, d); }, "text encoder",
                                 ctx.sink);
    if (m.byte_tokenizer) {
      e = embedded_default_prompt_embeddings(m, r.prompts, r.negative_prompts, r.max_sequence_length,
                                             r.encoder_attention_mask);
    } else {
      EncodePromptOptions options;
      options.prompts = r.prompts;
      options.negative_prompts = r.negative_prompts;
      options.max_sequence_length = r.max_sequence_length;
      options.encoder_attention_mask = r.encoder_attention_mask;
      e = encode_prompt(*m.tokenizer, encoder, options);
    }
  }
  report(ctx.progress, "text encoder", 1, 1);
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&e.prompt_embeds, "prompt_embeds"},
                                {&e.negative_prompt_embeds, "negative_prompt_embeds"}})
    LTXMPS_CHECK(all_finite(*t), "the text encoder's output '", name, "' contains NaN or Inf (broken T5 weights, or a "
                 "precision too low for it: T5 overflows in fp16 without its float32 'wo' layers)");
  if (!r.release_encoder) return e;
  // The text encoder is not needed again: free it before the transformer's loop, on every device.
  encoder.release();
  if (ctx.plan.memory.release_after_heavy_ops) ltxmps::release_memory(ctx.device);
  ctx.sink(ltxmps::Diagnostic{ltxmps::Severity::info, "memory", "pipeline.text_encoder_released",
                              "text encoder released after encoding the prompts, before the denoising loop" +
                                  std::string(ctx.plan.memory.release_after_heavy_ops
                                                  ? " (device cache emptied)"
                                                  : " (its weights are freed on every device)")});
  return e;
}

namespace {

void check_embeddings(const PromptEmbeddings& e, int64_t caption, bool guidance) {
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
  if (guidance)
    LTXMPS_CHECK(e.negative_prompt_embeds.defined() && e.negative_prompt_attention_mask.defined() &&
                     e.negative_prompt_embeds.sizes() == e.prompt_embeds.sizes() &&
                     e.negative_prompt_attention_mask.sizes() == e.prompt_attention_mask.sizes(),
                 "generate: guidance_scale > 1 needs negative prompt embeddings and mask of the prompts' shape");
}

}  // namespace

StageContext::StageContext(LtxModel& m, const ltxmps::ExecutionPlan& p, const ltxmps::DiagnosticSink& s,
                           const ProgressCallback& pr, uint64_t seed_)
    : model(m), plan(p), sink(s), progress(pr), device(execution_device(p)),
      generator(ltxmps::make_cpu_generator(seed_)), seed(seed_) {}

at::Tensor StageContext::noise(at::IntArrayRef shape) {
  return ltxmps::randn(shape, generator, at::TensorOptions().dtype(at::kFloat).device(device));
}

// Note [Text past the longest prompt]
// T5 pads every prompt to max_sequence_length tokens (128; 256 in the condition pipeline and object removal) and the
// transformer's cross-attention adds a bias of -10000 to the padding's scores, under which their probabilities are
// exactly 0 in float32 and bfloat16 (the exponential underflows). The columns that no row attends to are dropped
// before the loop, so the caption projection and the cross-attention run over the longest prompt's tokens (the
// official removal's "Empty" and its negative prompt: 16 of 256) with the same values up to the order of the sums.
// Only trailing columns go (a mask need not be a prefix), and nothing when a row attends to no token at all: equal
// biases then spread its attention over every column, padding included, as diffusers does.
namespace {

void drop_text_past_longest_prompt(PromptBatch& b) {
  const int64_t length = b.mask.size(1);
  const auto mask = b.mask.to(at::kCPU);  // one read of the mask before the loop
  const auto attended = mask.any(0).nonzero();
  if (!mask.any(1).all().item<bool>() || attended.numel() == 0) return;
  const int64_t keep = attended.max().item<int64_t>() + 1;
  if (keep == length) return;
  b.embeds = b.embeds.narrow(1, 0, keep).contiguous();
  b.mask = b.mask.narrow(1, 0, keep).contiguous();
  b.positive = b.positive.narrow(1, 0, keep).contiguous();
}

}  // namespace

PromptBatch encode_prompts(StageContext& ctx, const PromptRequest& r) {
  const PromptEmbeddings e = text_embeddings(ctx, r);
  if (r.embeddings)  // the text encoder's own output was checked in text_embeddings()
    for (const auto* t : {&e.prompt_embeds, &e.negative_prompt_embeds})
      LTXMPS_CHECK(!t->defined() || all_finite(*t),
                   "generate: the prompt embeddings given (a prompt cache or embeddings passed in) contain NaN or Inf");
  check_embeddings(e, ctx.model.transformer.config.caption_channels, r.guidance);
  PromptBatch b;
  b.guidance = r.guidance;
  b.batch = e.prompt_embeds.size(0);
  b.positive = e.prompt_embeds.to(ctx.device);
  const auto pos_mask = e.prompt_attention_mask.to(ctx.device, at::kBool);
  if (r.guidance) {
    b.embeds = at::cat({e.negative_prompt_embeds.to(ctx.device, b.positive.scalar_type()), b.positive}, 0);
    b.mask = at::cat({e.negative_prompt_attention_mask.to(ctx.device, at::kBool), pos_mask}, 0);
  } else {
    b.embeds = b.positive;
    b.mask = pos_mask;
  }
  drop_text_past_longest_prompt(b);
  return b;
}

// Note [Batched CPU encodes]
// At small sizes the VAE encoder's deep convolutions (512 channels over a few latent positions) cost what reading
// their weights costs (28 MB per convolution), whatever the batch: on the CPU in float32 two 64x64x9 videos encode
// in 350 ms as one batch, in 410 ms one after the other (96x96x9: 750 vs 940 ms; 128x128x9: 1390 vs 1470 ms;
// 2 cores). From 3x17x128x128 values per video on, the batch gains nothing (2280 vs 2200 ms) and would only double
// the encoder's activations, so same-shaped videos of at most kBatchedEncodeMaxValues values each (object
// removal's video and mask, several conditions) are encoded as one batch there. Every sample's values are the
// same sums in another GEMM blocking (rounding); other devices and dtypes keep one encode per video.
constexpr int64_t kBatchedEncodeMaxValues = int64_t{1} << 19;

// Note [Frames mapped on the device]
// A removal's video and mask arrive as float frames in [0, 1] on the host (decoded files, or the caller's tensors)
// and the VAE wants [1, C, F, H, W] in [-1, 1] in its dtype. Mapped on the host, 2x - 1, the permutation and the
// mask's thresholds were passes over freshly allocated 190-571 MB tensors (a 121-frame 768x512 clip): about 0.4 s
// on a 16-core GPU host before the first encode, longer than the encode itself, and seconds on 2 cores. The frames
// now cross as they are and the same float32 operations run on the device, bit for bit the same values (2x is
// exact; the device computes 2x - 1 as the host did). On the CPU the work is what it was.
at::Tensor frames_to_vae_input(const StageContext& ctx, const at::Tensor& frames) {
  LTXMPS_CHECK(frames.defined() && frames.dim() == 4 && at::isFloatingType(frames.scalar_type()),
               "frames_to_vae_input: the frames must be floating point [F, C, H, W], got ",
               frames.defined() ? c10::str(frames.scalar_type(), " ", frames.sizes()) : std::string("nothing"));
  // A copy (never the caller's tensor) on the device, mapped in place there.
  auto x = frames.to(ctx.device, at::kFloat, /*non_blocking=*/false, /*copy=*/true);
  x.mul_(2.0).sub_(1.0);
  auto out = at::empty({1, x.size(1), x.size(0), x.size(2), x.size(3)},
                       x.options().dtype(ctx.model.vae.runtime.dtype));
  out[0].copy_(x.permute({1, 0, 2, 3}));
  return out;
}

bool encode_as_batch(const StageContext& ctx, const std::vector<at::Tensor>& videos) {
  const auto& vae = ctx.model.vae;
  if (videos.size() < 2 || !ctx.device.is_cpu() || vae.runtime.dtype != at::kFloat || vae.tiling.use_slicing)
    return false;
  for (const auto& v : videos)
    if (v.sizes() != videos.front().sizes() || v.numel() > kBatchedEncodeMaxValues) return false;
  return true;
}

std::vector<VaePosterior> encode_videos(StageContext& ctx, const std::vector<VideoSource>& sources) {
  std::vector<VaePosterior> out;
  if (sources.empty()) return out;
  auto& vae = ctx.model.vae;
  ltxmps::OffloadScope offload(ctx.plan.offload, [&](const c10::Device& d) { move_model(vae, d); }, "vae", ctx.sink);
  const auto prepared = [&](const at::Tensor& v) { return v.to(ctx.device).to(vae.runtime.dtype).contiguous(); };
  const auto total = static_cast<int64_t>(sources.size());
  // Off the CPU each input is made just before its encode and dropped after it, so that one input at a time takes
  // device memory; on the CPU they are made together, to be encoded as one batch where they can.
  std::vector<at::Tensor> videos;
  if (ctx.device.is_cpu() && sources.size() > 1)
    for (const auto& source : sources) videos.push_back(source());
  if (encode_as_batch(ctx, videos)) {
    throw_if_cancelled();
    report(ctx.progress, "vae encode", 0, total);
    std::vector<at::Tensor> batch;
    for (const auto& v : videos) batch.push_back(prepared(v));
    const auto posterior = vae.encode(at::cat(batch));
    const int64_t b = videos.front().size(0);
    for (size_t i = 0; i < videos.size(); ++i) {
      const int64_t start = static_cast<int64_t>(i) * b;
      out.push_back({posterior.mean.narrow(0, start, b), posterior.logvar.narrow(0, start, b)});
    }
  }
  for (size_t i = out.size(); i < sources.size(); ++i) {
    throw_if_cancelled();
    report(ctx.progress, "vae encode", static_cast<int64_t>(i), total);
    out.push_back(vae.encode(prepared(videos.empty() ? sources[i]() : std::exchange(videos[i], at::Tensor()))));
  }
  report(ctx.progress, "vae encode", total, total);
  return out;
}

std::vector<VaePosterior> encode_videos(StageContext& ctx, const std::vector<at::Tensor>& videos) {
  std::vector<VideoSource> sources;
  for (const auto& v : videos) sources.emplace_back([v] { return v; });
  return encode_videos(ctx, sources);
}

at::Tensor sample_normalized(StageContext& ctx, const VaePosterior& posterior) {
  auto latents = posterior.sample(ctx.generator).to(ctx.device, at::kFloat);
  return ctx.model.vae.normalize_latents(latents, 1.0);
}

GenerateResult decode_latents(StageContext& ctx, const at::Tensor& normalized, const DecodeSettings& s) {
  auto& vae = ctx.model.vae;
  GenerateResult result;
  result.normalized_latents = normalized;
  auto latents = vae.denormalize_latents(normalized, vae.config.scaling_factor);
  result.latents = latents.to(at::kCPU, at::kFloat).contiguous();
  latents = latents.to(s.latents_dtype);
  std::optional<at::Tensor> temb;
  if (vae.config.timestep_conditioning) {
    const auto n = ltxmps::randn(latents.sizes(), ctx.generator, latents.options());
    const auto opts = at::TensorOptions().dtype(latents.scalar_type()).device(ctx.device);
    const int64_t batch = latents.size(0);
    temb = at::full({batch}, s.decode_timestep, opts);
    const auto scale = at::full({batch}, s.decode_noise_scale.value_or(s.decode_timestep), opts);
    latents = mix_decode_noise(latents, n, scale);
  }
  latents = latents.to(vae.runtime.dtype);
  at::Generator injection = ltxmps::make_cpu_generator(ctx.seed);  // Note [One generator, diffusers' order of draws]
  at::Tensor video;
  throw_if_cancelled();
  report(ctx.progress, "vae decode", 0, 1);
  {
    ltxmps::ReleaseMemoryScope release(ctx.device, "vae decode", ctx.sink);
    ltxmps::OffloadScope offload(ctx.plan.offload, [&](const c10::Device& d) { move_model(vae, d); }, "vae", ctx.sink);
    video = vae.decode(latents, temb, &injection);
  }
  report(ctx.progress, "vae decode", 1, 1);
  result.frames = postprocess_video(video);
  return result;
}

at::Tensor rescale_noise_cfg(const at::Tensor& noise_cfg, const at::Tensor& noise_pred_text, double guidance_rescale) {
  std::vector<int64_t> dims;
  for (int64_t i = 1; i < noise_pred_text.dim(); ++i) dims.push_back(i);
  const auto std_text = at::std(noise_pred_text, dims, /*unbiased=*/true, /*keepdim=*/true);
  const auto std_cfg = at::std(noise_cfg, dims, /*unbiased=*/true, /*keepdim=*/true);
  const auto rescaled = noise_cfg * (std_text / std_cfg);
  return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg;
}

at::Tensor to_model_range(const at::Tensor& pixels) {
  auto x = pixels.to(at::kFloat);
  if (x.min().item<float>() >= 0) x = 2.0 * x - 1.0;
  return x;
}

std::vector<double> condition_timesteps(int64_t steps, const std::optional<std::vector<double>>& custom) {
  if (custom) return *custom;
  const auto sigmas = linear_quadratic_schedule(steps);
  const auto scaled = at::tensor(sigmas, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat) * 1000;
  std::vector<double> out;
  for (int64_t i = 0; i < scaled.size(0); ++i) out.push_back(scaled[i].item<float>());
  return out;
}

void check_custom_timesteps(const std::optional<std::vector<double>>& timesteps, const std::string& what) {
  if (!timesteps) return;
  LTXMPS_CHECK(!timesteps->empty(), "generate: ", what, " is an empty list (give at least one timestep, or none for "
               "the default schedule)");
  for (size_t i = 0; i < timesteps->size(); ++i)
    LTXMPS_CHECK(std::isfinite((*timesteps)[i]), "generate: ", what, "[", i, "] is ", (*timesteps)[i],
                 ", expected a finite timestep (sigma * 1000)");
}

}  // namespace ltxmps::pipeline
