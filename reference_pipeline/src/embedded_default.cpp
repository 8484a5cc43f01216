// The embedded default model of `ltxmps generate` (embedded_default.hpp): tiny LTX-Video components with
// deterministic random weights, and the byte tokenizer stand-in for its T5.

#include "ltxmps_pipeline/embedded_default.hpp"

#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/t5_streaming.hpp"
#include "ltxmps_pipeline/weight_streaming.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/random.hpp"

#include <ATen/ATen.h>

#include <cmath>

namespace ltxmps::pipeline {

namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// One weight by checkpoint name, drawn from `generator` on the CPU in float32 (the component's from_weights
// moves and casts it). The rules are documented in embedded_default.hpp.
at::Tensor random_weight(at::Generator& generator, const std::string& name, const std::vector<int64_t>& shape) {
  const auto cpu = at::TensorOptions().dtype(at::kFloat);
  if (shape.empty()) return at::full({}, name == "decoder.timestep_scale_multiplier" ? 1000.0 : 1.0, cpu);
  if (ends_with(name, ".bias") || name == "latents_mean" || contains(name, "per_channel_scale")) return at::zeros(shape, cpu);
  if (name == "latents_std") return at::ones(shape, cpu);
  if (contains(name, "scale_shift_table"))
    return ltxmps::randn(shape, generator).div(std::sqrt(static_cast<double>(shape.back())));
  if (shape.size() == 1) return at::ones(shape, cpu);  // RMSNorm / LayerNorm / GroupNorm weights
  if (name == "shared.weight") return ltxmps::randn(shape, generator);  // nn.Embedding: N(0, 1)
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  // PyTorch's default kaiming_uniform_(a=sqrt(5)) has variance 1 / (3 fan_in); a normal of that variance.
  return ltxmps::randn(shape, generator).mul(1.0 / std::sqrt(3.0 * static_cast<double>(fan_in)));
}

}  // namespace

TransformerConfig EmbeddedDefault::transformer_config() {
  TransformerConfig c;
  c.in_channels = 8;
  c.out_channels = 8;
  c.patch_size = 1;
  c.patch_size_t = 1;
  c.num_attention_heads = 4;
  c.attention_head_dim = 8;
  c.cross_attention_dim = 32;
  c.num_layers = 2;
  c.caption_channels = 32;
  return c;
}

VaeConfig EmbeddedDefault::vae_config() {
  VaeConfig c;
  c.latent_channels = 8;
  c.block_out_channels = {16, 16, 16, 16};
  c.decoder_block_out_channels = {16, 16, 16, 16};
  c.layers_per_block = {1, 1, 1, 1, 1};
  c.decoder_layers_per_block = {1, 1, 1, 1, 1};
  c.spatio_temporal_scaling = {true, true, true, false};
  c.decoder_spatio_temporal_scaling = {true, true, true, false};
  c.decoder_inject_noise = {false, false, false, false, false};
  c.upsample_residual = {false, false, false, false};
  c.upsample_factor = {1, 1, 1, 1};
  c.timestep_conditioning = false;
  c.patch_size = 4;
  c.patch_size_t = 1;
  return c;
}

T5Config EmbeddedDefault::text_encoder_config() {
  T5Config c;
  c.vocab_size = 256 + 3;  // pad, eos, unk, then the bytes
  c.d_model = 32;
  c.d_kv = 8;
  c.num_heads = 4;
  c.d_ff = 64;
  c.num_layers = 2;
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 16;
  c.feed_forward_proj = "relu";
  c.dense_act_fn = "relu";
  c.is_gated_act = false;
  return c;
}

LtxModel make_embedded_default_model(const ltxmps::ExecutionPlan& plan) {
  at::Generator generator = ltxmps::make_cpu_generator(EmbeddedDefault::weight_seed);
  auto draw = [&](const std::string& name, const std::vector<int64_t>& shape) {
    return random_weight(generator, name, shape);
  };

  check_fp8_attention_heads(plan, EmbeddedDefault::transformer_config());
  LtxModel model;
  model.random_weights = true;
  model.byte_tokenizer = true;
  model.scheduler = FlowMatchSchedulerConfig{};
  model.text_encoder = T5EncoderModel::from_weights(
      EmbeddedDefault::text_encoder_config(), t5_runtime(plan),
      [&](const std::string& name, const std::vector<int64_t>& shape, at::ScalarType) { return draw(name, shape); });
  if (plan.weights.planned && plan.weights.text_encoder.mode == ltxmps::WeightMode::streamed)
    stream_t5_blocks(*model.text_encoder, execution_device(plan));
  model.transformer = TransformerModel::from_weights(EmbeddedDefault::transformer_config(), transformer_runtime(plan), draw);
  if (const auto ahead = streamed_blocks_ahead(plan))
    stream_transformer_blocks(model.transformer, execution_device(plan), *ahead);
  model.vae = VaeModel::from_weights(EmbeddedDefault::vae_config(), vae_runtime(plan), draw);
  model.vae.tiling = vae_tiling(plan);  // as load_ltx_model
  return model;
}

TokenizedPrompts embedded_default_tokenize(const std::vector<std::string>& prompts, int64_t max_length) {
  LTXMPS_CHECK(max_length >= 1, "embedded default tokenizer: max_length must be >= 1, got ", max_length);
  const auto batch = static_cast<int64_t>(prompts.size());
  auto ids = at::zeros({batch, max_length}, at::kLong);
  auto mask = at::zeros({batch, max_length}, at::kLong);
  auto id = ids.accessor<int64_t, 2>();
  auto m = mask.accessor<int64_t, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    const auto& text = prompts[static_cast<size_t>(b)];
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(text.size()), max_length - 1);
    for (int64_t i = 0; i < n; ++i) id[b][i] = static_cast<unsigned char>(text[static_cast<size_t>(i)]) + 3;
    id[b][n] = 1;  // </s>
    for (int64_t i = 0; i <= n; ++i) m[b][i] = 1;
  }
  return {ids, mask};
}

PromptEmbeddings embedded_default_prompt_embeddings(const LtxModel& model, const std::vector<std::string>& prompts,
                                                    const std::vector<std::string>& negative_prompts,
                                                    int64_t max_length, bool encoder_attention_mask) {
  LTXMPS_CHECK(model.text_encoder && model.text_encoder->loaded(),
               "embedded default: the text encoder is not loaded (it was released or never built)");
  LTXMPS_CHECK(!prompts.empty(), "embedded default: no prompt given");
  std::vector<std::string> negative = negative_prompts;
  if (negative.empty()) negative.assign(prompts.size(), "");
  else if (negative.size() == 1) negative.assign(prompts.size(), negative.front());
  LTXMPS_CHECK(negative.size() == prompts.size(), "embedded default: ", negative.size(), " negative prompts for ",
               prompts.size(), " prompts (give one, or one per prompt)");
  const auto& encoder = *model.text_encoder;
  auto encode = [&](const std::vector<std::string>& texts) {
    const auto tokens = embedded_default_tokenize(texts, max_length);
    std::optional<at::Tensor> mask;
    if (encoder_attention_mask) mask = tokens.attention_mask;
    auto embeds = encoder.forward(tokens.input_ids, mask).to(encoder.runtime.dtype);
    return std::make_pair(embeds, tokens.attention_mask.to(at::kBool).to(encoder.runtime.device));
  };
  PromptEmbeddings out;
  std::tie(out.prompt_embeds, out.prompt_attention_mask) = encode(prompts);
  std::tie(out.negative_prompt_embeds, out.negative_prompt_attention_mask) = encode(negative);
  return out;
}

}  // namespace ltxmps::pipeline
