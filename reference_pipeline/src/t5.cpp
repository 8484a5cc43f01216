// T5EncoderModel, following transformers 5.17.0 models/t5/modeling_t5.py (T5Stack.forward, encoder only).

#include "ltxmps_pipeline/t5.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/t5_streaming.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

namespace ltxmps::pipeline {

// ---------------------------------------------------------------------------------------------------
// Config

namespace {

// Note [Generic config keys]
// A transformers config.json carries the generic `PretrainedConfig` fields next to the model's own. For an
// encoder-only eval forward none of them matters (dropout is inactive, token ids only concern generation and
// the tokenizer, `tie_word_embeddings` is forced true by T5Config, `scale_decoder_outputs` concerns the decoder),
// so they are accepted and ignored; keys starting with '_' are metadata. Any key outside this list and
// T5Config's fields is an error, so a typo or a config of another model is caught.
const std::set<std::string>& ignored_config_keys() {
  static const std::set<std::string> keys = {
      "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "is_encoder_decoder",
      "use_cache", "pad_token_id", "eos_token_id", "bos_token_id", "sep_token_id", "decoder_start_token_id",
      "tie_word_embeddings", "output_past", "num_decoder_layers", "dropout_rate", "initializer_factor",
      "classifier_dropout", "n_positions", "task_specific_params", "gradient_checkpointing", "output_hidden_states",
      "output_attentions", "return_dict", "id2label", "label2id", "problem_type", "tokenizer_class", "prefix",
      "chunk_size_feed_forward", "add_cross_attention", "tie_encoder_decoder", "cross_attention_hidden_size",
      "finetuning_task", "torchscript", "pruned_heads", "max_length", "min_length", "num_beams", "do_sample",
      "early_stopping", "length_penalty", "no_repeat_ngram_size", "temperature", "top_k", "top_p",
      "repetition_penalty", "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
      "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
      "suppress_tokens", "begin_suppress_tokens", "num_beam_groups", "diversity_penalty", "typical_p",
      "encoder_no_repeat_ngram_size", "tf_legacy_loss", "use_bfloat16", "is_decoder",
      "scale_decoder_outputs"};
  return keys;
}

}  // namespace

T5Config T5Config::from_json(const nlohmann::json& json, const std::string& source) {
  LTXMPS_CHECK(json.is_object(), source, ": expected a JSON object, got ", json.type_name());
  T5Config c;
  std::optional<std::string> dense_act_fn;
  std::optional<bool> is_gated_act;
  for (const auto& [key, value] : json.items()) {
    if (!key.empty() && key[0] == '_') continue;  // _name_or_path, _attn_implementation_autoset, ...
    if (key == "vocab_size") c.vocab_size = config_field<int64_t>(value, key, source);
    else if (key == "d_model") c.d_model = config_field<int64_t>(value, key, source);
    else if (key == "d_kv") c.d_kv = config_field<int64_t>(value, key, source);
    else if (key == "d_ff") c.d_ff = config_field<int64_t>(value, key, source);
    else if (key == "num_layers") c.num_layers = config_field<int64_t>(value, key, source);
    else if (key == "num_heads") c.num_heads = config_field<int64_t>(value, key, source);
    else if (key == "relative_attention_num_buckets") c.relative_attention_num_buckets = config_field<int64_t>(value, key, source);
    else if (key == "relative_attention_max_distance") c.relative_attention_max_distance = config_field<int64_t>(value, key, source);
    else if (key == "layer_norm_epsilon") c.layer_norm_epsilon = config_field<double>(value, key, source);
    else if (key == "feed_forward_proj") c.feed_forward_proj = config_field<std::string>(value, key, source);
    else if (key == "dense_act_fn") dense_act_fn = config_field<std::string>(value, key, source);
    else if (key == "is_gated_act") is_gated_act = config_field<bool>(value, key, source);
    else if (key == "is_decoder") {
      LTXMPS_CHECK(!config_field<bool>(value, key, source), source, ": is_decoder is true; only the T5 encoder is supported");
    } else if (!ignored_config_keys().count(key)) {
      throw Error(c10::str(source, ": unknown field '", key, "' for T5EncoderModel"));
    }
  }
  // T5Config.__post_init__: "gated-gelu" -> gelu_new; the split form otherwise. Explicit fields win (they are
  // set by PretrainedConfig after __post_init__ computed them).
  const auto dash = c.feed_forward_proj.find('-');
  LTXMPS_CHECK(c.feed_forward_proj.find('-', dash == std::string::npos ? dash : dash + 1) == std::string::npos &&
                   (dash == std::string::npos || c.feed_forward_proj.substr(0, dash) == "gated"),
               source, ": feed_forward_proj '", c.feed_forward_proj, "' is not of the form 'gated-{ACT}' or '{ACT}'");
  c.is_gated_act = dash != std::string::npos;
  c.dense_act_fn = c.is_gated_act ? c.feed_forward_proj.substr(dash + 1) : c.feed_forward_proj;
  if (c.feed_forward_proj == "gated-gelu") c.dense_act_fn = "gelu_new";
  if (dense_act_fn) c.dense_act_fn = *dense_act_fn;
  if (is_gated_act) c.is_gated_act = *is_gated_act;
  c.validate(source);
  return c;
}

T5Config T5Config::from_file(const std::filesystem::path& path) { return from_json(read_json_file(path), path.string()); }

void T5Config::validate(const std::string& source) const {
  // Sizes are bounded as Note [Config bounds] (checkpoint.hpp) explains: inner_dim() and the weight shapes
  // multiply them.
  const std::pair<const char*, int64_t> sizes[] = {{"vocab_size", vocab_size},
                                                   {"d_model", d_model},
                                                   {"d_kv", d_kv},
                                                   {"d_ff", d_ff},
                                                   {"num_heads", num_heads},
                                                   {"relative_attention_max_distance", relative_attention_max_distance}};
  for (const auto& [name, v] : sizes) check_config_range(source, name, v, 1, kMaxConfigChannels);
  check_config_range(source, "num_layers", num_layers, 1, kMaxConfigLayers);
  // Bidirectional buckets: N/2 per direction, half of them exact: needs N/2/2 >= 1.
  LTXMPS_CHECK(relative_attention_num_buckets >= 4, source, ": relative_attention_num_buckets must be >= 4, got ",
               relative_attention_num_buckets);
  check_config_range(source, "relative_attention_num_buckets", relative_attention_num_buckets, 4, kMaxConfigChannels);
  LTXMPS_CHECK(inner_dim() <= kMaxConfigChannels, source, ": inner dim num_heads * d_kv = ", inner_dim(),
               " is out of range (at most ", kMaxConfigChannels, ")");
  LTXMPS_CHECK(layer_norm_epsilon > 0.0 && std::isfinite(layer_norm_epsilon), source,
               ": layer_norm_epsilon must be > 0, got ", layer_norm_epsilon);
  static const std::set<std::string> activations = {"relu", "gelu", "gelu_new", "silu", "swish", "gelu_pytorch_tanh"};
  LTXMPS_CHECK(activations.count(dense_act_fn) > 0, source, ": activation '", dense_act_fn,
               "' is not supported (relu, gelu, gelu_new, gelu_pytorch_tanh, silu)");
}

// ---------------------------------------------------------------------------------------------------
// Weights

namespace {

// transformers keeps a parameter in float32 when one of `_keep_in_fp32_modules` is a dot-separated component
// of its name ("wo" matches "encoder.block.3.layer.1.DenseReluDense.wo.weight", never "o").
bool keep_in_fp32(const std::string& name, const std::vector<std::string>& modules) {
  for (const auto& m : modules) {
    size_t pos = 0;
    while ((pos = name.find(m, pos)) != std::string::npos) {
      const bool starts = pos == 0 || name[pos - 1] == '.';
      const bool ends = pos + m.size() == name.size() || name[pos + m.size()] == '.';
      if (starts && ends) return true;
      ++pos;
    }
  }
  return false;
}

}  // namespace

T5EncoderModel T5EncoderModel::from_weights(const T5Config& config, const T5Runtime& runtime,
                                            const T5WeightSource& weights) {
  config.validate();
  const int64_t D = config.d_model, inner = config.inner_dim(), F = config.d_ff;
  auto tensor = [&](const std::string& name, std::vector<int64_t> shape) {
    const auto dtype = keep_in_fp32(name, runtime.keep_in_fp32_modules) ? at::kFloat : runtime.dtype;
    auto t = weights(name, shape, dtype);
    LTXMPS_CHECK(t.defined() && t.sizes() == at::IntArrayRef(shape), "T5 weight '", name, "' has shape ",
                 t.defined() ? t.sizes() : at::IntArrayRef{}, ", expected ", at::IntArrayRef(shape));
    return t.to(at::TensorOptions().device(runtime.device).dtype(dtype));
  };
  T5EncoderModel m;
  m.config = config;
  m.runtime = runtime;
  m.shared = tensor("shared.weight", {config.vocab_size, D});
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = "encoder.block." + std::to_string(i) + ".layer.";
    T5BlockWeights b;
    b.layer_0_layer_norm_weight = tensor(p + "0.layer_norm.weight", {D});
    b.q = tensor(p + "0.SelfAttention.q.weight", {inner, D});
    b.k = tensor(p + "0.SelfAttention.k.weight", {inner, D});
    b.v = tensor(p + "0.SelfAttention.v.weight", {inner, D});
    b.o = tensor(p + "0.SelfAttention.o.weight", {D, inner});
    if (i == 0)
      b.relative_attention_bias = tensor(p + "0.SelfAttention.relative_attention_bias.weight",
                                         {config.relative_attention_num_buckets, config.num_heads});
    b.layer_1_layer_norm_weight = tensor(p + "1.layer_norm.weight", {D});
    if (config.is_gated_act) {
      b.wi_0 = tensor(p + "1.DenseReluDense.wi_0.weight", {F, D});
      b.wi_1 = tensor(p + "1.DenseReluDense.wi_1.weight", {F, D});
    } else {
      b.wi = tensor(p + "1.DenseReluDense.wi.weight", {F, D});
    }
    b.wo = tensor(p + "1.DenseReluDense.wo.weight", {D, F});
    m.block.push_back(std::move(b));
  }
  m.final_layer_norm = tensor("encoder.final_layer_norm.weight", {D});
  return m;
}

void T5EncoderModel::release() {
  shared = at::Tensor();
  block.clear();
  block.shrink_to_fit();
  final_layer_norm = at::Tensor();
  if (!runtime.device.is_cpu()) ltxmps::release_memory(runtime.device);
}

// ---------------------------------------------------------------------------------------------------
// Forward

namespace {

// Note [T5LayerNorm]
// transformers `T5LayerNorm.forward`: variance = mean(h.float()²); h = h · rsqrt(variance + eps) (a half h
// times a float32 rsqrt promotes to float32); cast to the weight's dtype only when that is fp16/bf16; then
// weight · h. With a float32 residual stream and a bf16 weight the output is bf16.
at::Tensor t5_layer_norm(const at::Tensor& h, const at::Tensor& weight, double eps) {
  auto variance = h.to(at::kFloat).pow(2).mean(-1, /*keepdim=*/true);
  auto y = h * at::rsqrt(variance + eps);
  if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16) y = y.to(weight.scalar_type());
  return weight * y;
}

// transformers activations.py; `gelu_new` (NewGELUActivation) is the explicit tanh formula, evaluated in the
// same order as Python so that half-precision roundings match:
//   0.5 * x * (1.0 + tanh(sqrt(2/π) * (x + 0.044715 * pow(x, 3.0))))
at::Tensor activation(const std::string& name, const at::Tensor& x) {
  if (name == "relu") return at::relu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "silu" || name == "swish") return at::silu(x);
  const double c = std::sqrt(2.0 / M_PI);
  return (0.5 * x) * (1.0 + at::tanh(c * (x + 0.044715 * at::pow(x, 3.0))));
}

// Note [T5 relative position buckets]
// `T5Attention._relative_position_bucket(relative_position = key - query, bidirectional=True, N, M)`:
// N' = N/2; bucket = N'·[r > 0] + (|r| < N'/2 ? |r| : min(N'/2 + long(log(|r|.float() / (N'/2)) /
// log(M / (N'/2)) · (N' − N'/2)), N' − 1)). The log is float32 (`.float()`), the divisor a Python double,
// the truncation `.to(torch.long)`; the same tensor ops are used here.
at::Tensor relative_position_bucket(const at::Tensor& relative_position, int64_t num_buckets, int64_t max_distance) {
  const int64_t half = num_buckets / 2;
  auto buckets = (relative_position > 0).to(at::kLong) * half;
  const auto distance = at::abs(relative_position);
  const int64_t max_exact = half / 2;
  const auto is_small = distance < max_exact;
  auto large = max_exact + (at::log(distance.to(at::kFloat) / max_exact) /
                            std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
                            static_cast<double>(half - max_exact))
                               .to(at::kLong);
  large = at::minimum(large, at::full_like(large, half - 1));
  return buckets + at::where(is_small, distance, large);
}

// Note [T5 attention in transformers 5.17]
// The default attention implementation of T5 is "sdpa" (T5PreTrainedModel._supports_sdpa), not the eager
// `softmax(scores.float())` path older transformers had: `sdpa_attention_forward` folds the
// relative position bias into a float mask (`create_position_bias_mask`): the bias itself without a padding
// mask, else `where(mask, position_bias, finfo(key.dtype).min)`, and calls
// `F.scaled_dot_product_attention(q, k, v, attn_mask, scale=1.0)`. The bias is `compute_bias` of block 0, in
// the dtype of its Embedding (bf16 under bf16), shared by every block. The same kernel is called here
// (ltxmps::attention with the sdpa kernel, scale 1); its softmax accumulates in float32.
at::Tensor attention_mask_bias(const at::Tensor& position_bias, const std::optional<at::Tensor>& mask,
                               at::ScalarType key_dtype) {
  if (!mask) return position_bias;
  const auto keep = mask->to(position_bias.device()).to(at::kBool).unsqueeze(1).unsqueeze(1);  // [B, 1, 1, L]
  const double min = key_dtype == at::kBFloat16 ? static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest())
                     : key_dtype == at::kHalf   ? static_cast<double>(std::numeric_limits<c10::Half>::lowest())
                     : key_dtype == at::kDouble ? std::numeric_limits<double>::lowest()
                                                : static_cast<double>(std::numeric_limits<float>::lowest());
  return at::where(keep, position_bias, at::scalar_tensor(min, position_bias.options()));
}

// T5Block.forward: "clamp inf values to enable fp16 training", applied whenever the residual stream is fp16.
at::Tensor clamp_fp16(const at::Tensor& h) {
  if (h.scalar_type() != at::kHalf) return h;
  const double max = static_cast<double>(std::numeric_limits<c10::Half>::max());
  const auto clamp_value = at::where(at::isinf(h).any(), at::scalar_tensor(max - 1000, h.options()),
                                     at::scalar_tensor(max, h.options()));
  return at::clamp(h, -clamp_value, clamp_value);
}

// T5DenseActDense / T5DenseGatedActDense: activations are cast to wo.weight's dtype before wo (float32 when
// wo is kept in float32, Note [T5 wo in float32] in ltxmps/precision.hpp).
at::Tensor feed_forward(const T5Config& config, const T5BlockWeights& w, const at::Tensor& x) {
  at::Tensor h;
  if (config.is_gated_act) h = activation(config.dense_act_fn, at::linear(x, w.wi_0)) * at::linear(x, w.wi_1);
  else h = activation(config.dense_act_fn, at::linear(x, w.wi));
  if (h.scalar_type() != w.wo.scalar_type()) h = h.to(w.wo.scalar_type());
  return at::linear(h, w.wo);
}

}  // namespace

at::Tensor T5EncoderModel::forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask) const {
  LTXMPS_CHECK(loaded(), "T5EncoderModel: the weights were released");
  LTXMPS_CHECK(input_ids.defined() && input_ids.dim() == 2 && input_ids.size(0) > 0 && input_ids.size(1) > 0,
               "T5 forward: input_ids must be [batch, tokens], got ", input_ids.defined() ? input_ids.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(!at::isFloatingType(input_ids.scalar_type()) && input_ids.scalar_type() != at::kBool,
               "T5 forward: input_ids must be integer, got ", input_ids.scalar_type());
  const int64_t B = input_ids.size(0), L = input_ids.size(1);
  if (attention_mask) {
    LTXMPS_CHECK(attention_mask->dim() == 2 && attention_mask->size(0) == B && attention_mask->size(1) == L,
                 "T5 forward: attention_mask must be [", B, ", ", L, "], got ", attention_mask->sizes());
  }
  c10::InferenceMode inference;
  const auto ids = input_ids.to(runtime.device).to(at::kLong);
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  LTXMPS_CHECK(lo >= 0 && hi < config.vocab_size, "T5 forward: token ids must lie in [0, ", config.vocab_size,
               "), got [", lo, ", ", hi, "]");

  auto h = at::embedding(shared, ids);

  // compute_bias(L, L) of block 0: [1, H, L, L] in the Embedding's dtype.
  const auto positions = at::arange(L, ids.options());
  const auto relative = positions.unsqueeze(0) - positions.unsqueeze(1);  // key - query
  const auto buckets = relative_position_bucket(relative, config.relative_attention_num_buckets,
                                                config.relative_attention_max_distance);
  // A streamed encoder's bias is in host memory with block 0 (a few KiB).
  const auto position_bias =
      at::embedding(block.front().relative_attention_bias.to(runtime.device), buckets).permute({2, 0, 1}).unsqueeze(0);

  ltxmps::AttentionOptions attention = runtime.attention;
  attention.scale = 1.0;
  const int64_t H = config.num_heads, dk = config.d_kv;
  at::Tensor bias;  // the mask-combined bias depends on the key dtype only, computed once
  for (const auto& host : block) {
    // Note [Streamed T5]: a streamed block's device copy lives until the end of this iteration.
    const auto streamed = streamed_blocks ? copy_t5_block(host, runtime.device) : T5BlockWeights{};
    const auto& w = streamed_blocks ? streamed : host;
    // T5LayerSelfAttention
    const auto normed = t5_layer_norm(h, w.layer_0_layer_norm_weight, config.layer_norm_epsilon);
    auto q = at::linear(normed, w.q).view({B, L, H, dk}).transpose(1, 2);
    auto k = at::linear(normed, w.k).view({B, L, H, dk}).transpose(1, 2);
    auto v = at::linear(normed, w.v).view({B, L, H, dk}).transpose(1, 2);
    if (!bias.defined() || bias.scalar_type() != k.scalar_type())
      bias = attention_mask_bias(position_bias, attention_mask, k.scalar_type());
    auto out = ltxmps::attention(q, k, v, bias, attention);
    out = out.transpose(1, 2).contiguous().reshape({B, L, H * dk});
    h = clamp_fp16(h + at::linear(out, w.o));
    // T5LayerFF
    h = clamp_fp16(h + feed_forward(config, w, t5_layer_norm(h, w.layer_1_layer_norm_weight, config.layer_norm_epsilon)));
  }
  return t5_layer_norm(h, final_layer_norm, config.layer_norm_epsilon);
}

// ---------------------------------------------------------------------------------------------------
// Loading

T5EncoderModel load_t5_encoder(const std::filesystem::path& model_dir, const T5Runtime& runtime,
                               std::optional<std::string> variant, bool pinned_memory) {
  LTXMPS_CHECK(!pinned_memory || runtime.device.is_cpu(), "load_t5_encoder: pinned_memory loads into host memory, but "
               "the runtime device is ", runtime.device);
  LTXMPS_CHECK(std::filesystem::is_directory(model_dir), "text encoder folder ", model_dir.string(),
               " does not exist or is not a folder");
  const auto config = T5Config::from_file(model_dir / "config.json");
  const auto store = WeightStore::open_component(model_dir, std::move(variant), std::string("model"));
  StrictLoader loader(store, at::TensorOptions().device(runtime.device).dtype(runtime.dtype).pinned_memory(pinned_memory));
  // Note [T5 tied embeddings]
  // `shared.weight` and `encoder.embed_tokens.weight` are one tied parameter (T5EncoderModel
  // `_tied_weights_keys`); save_pretrained writes one of them, older checkpoints both. The shared one is
  // read when present and the other is then skipped.
  const bool has_shared = loader.has("shared.weight");
  LTXMPS_CHECK(has_shared || loader.has("encoder.embed_tokens.weight"), store.path().string(),
               ": neither 'shared.weight' nor 'encoder.embed_tokens.weight' is present");
  auto model = T5EncoderModel::from_weights(
      config, runtime, [&](const std::string& name, const std::vector<int64_t>& shape, at::ScalarType dtype) {
        const auto stored = name == "shared.weight" && !has_shared ? std::string("encoder.embed_tokens.weight") : name;
        return loader.take(stored, shape, dtype);
      });
  if (has_shared) loader.skip("encoder.embed_tokens.weight");
  loader.finish();
  return model;
}

}  // namespace ltxmps::pipeline
