#pragma once
/// @file t5.hpp
/// @brief transformers' `T5EncoderModel` (transformers 5.17.0, models/t5/modeling_t5.py) as a flat struct
///        of checkpoint tensors (the tokenizer that LTX pipelines call before it is in tokenizer.hpp).
///
/// Numerics follow the installed transformers source (the default "sdpa" attention implementation);
/// docs/models/t5.md describes the encoder, and the Notes in t5.cpp the places where transformers 5.17
/// differs from older releases.

#include "ltxmps/attention.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The `config.json` of a transformers `text_encoder/` folder (`T5Config`), with its defaults.
///
/// Generic `PretrainedConfig` keys (architectures, model_type, token ids, dropout, ...) are accepted and
/// ignored (they do not change the encoder's eval forward); any other unknown key is an error.
struct T5Config {
  int64_t vocab_size = 32128;                      ///< rows of the token embedding
  int64_t d_model = 512;                           ///< width of the residual stream (4096 for T5-XXL)
  int64_t d_kv = 64;                               ///< width of one attention head
  int64_t d_ff = 2048;                             ///< hidden width of the feed-forward
  int64_t num_layers = 6;                          ///< encoder blocks
  int64_t num_heads = 8;                           ///< attention heads
  int64_t relative_attention_num_buckets = 32;     ///< buckets of the relative position bias
  int64_t relative_attention_max_distance = 128;   ///< distance from which all positions share the last bucket
  double layer_norm_epsilon = 1e-6;                ///< eps of every T5LayerNorm
  std::string feed_forward_proj = "relu";  ///< "relu", "gated-gelu", "gelu", "gated-silu", ...
  ///@{
  /// Derived from feed_forward_proj as T5Config.__post_init__ does ("gated-gelu" -> "gelu_new", gated); an
  /// explicit `dense_act_fn` / `is_gated_act` in config.json wins, as in transformers.
  std::string dense_act_fn = "relu";
  bool is_gated_act = false;
  ///@}

  /// @brief `inner = num_heads * d_kv`.
  int64_t inner_dim() const { return num_heads * d_kv; }

  /// @brief Parses a config object; errors name `source`.
  static T5Config from_json(const nlohmann::json& json, const std::string& source = "config.json");
  /// @brief Reads and parses `path`.
  static T5Config from_file(const std::filesystem::path& path);
  /// @brief Throws ltxmps::Error when the values cannot describe a model.
  void validate(const std::string& source = "T5Config") const;
};

/// @brief Where and in which precision the encoder runs.
struct T5Runtime {
  c10::Device device = c10::kCPU;  ///< where the weights live and the encoder runs
  /// Weights and activations (`torch_dtype` of `from_pretrained`).
  at::ScalarType dtype = at::kFloat;
  /// Checkpoint name components whose weights stay float32 whatever `dtype` says (`{"wo"}`: transformers'
  /// `_keep_in_fp32_modules`); ltxmps::t5_fp32_modules() gives what transformers 5.17 does for a dtype.
  std::vector<std::string> keep_in_fp32_modules;
  /// Attention kernel; the softmax scale is always 1 (T5 does not scale q·kᵀ).
  ltxmps::AttentionOptions attention{};
};

/// @brief One `T5Block` of the encoder (`encoder.block.{i}`); names follow the checkpoint.
struct T5BlockWeights {
  at::Tensor layer_0_layer_norm_weight;                  ///< [d_model]
  ///@{
  /// Self-attention projections q, k, v: [inner, d_model], no bias.
  at::Tensor q, k, v;
  ///@}
  at::Tensor o;                                          ///< [d_model, inner]
  at::Tensor relative_attention_bias;                    ///< [buckets, heads]; block 0 only
  at::Tensor layer_1_layer_norm_weight;                  ///< [d_model]
  at::Tensor wi;                                         ///< [d_ff, d_model]; non-gated only
  ///@{
  /// Gated feed-forward input projections (`wi_0` through the activation, times `wi_1`): [d_ff, d_model];
  /// gated only.
  at::Tensor wi_0, wi_1;
  ///@}
  at::Tensor wo;                                         ///< [d_model, d_ff]
};

/// @brief Supplies one weight by checkpoint name, expected shape and the dtype to load it in.
using T5WeightSource =
    std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape, at::ScalarType dtype)>;

/// @brief `T5EncoderModel` in eval mode.
struct T5EncoderModel {
  T5Config config;    ///< the checkpoint's config.json
  T5Runtime runtime;  ///< device, dtype, float32 modules, attention kernel

  at::Tensor shared;  ///< `shared.weight` [vocab, d_model] (or the tied `encoder.embed_tokens.weight`)
  std::vector<T5BlockWeights> block;  ///< `encoder.block.{i}`
  at::Tensor final_layer_norm;  ///< `encoder.final_layer_norm.weight`
  /// Set by stream_t5_blocks() (t5_streaming.hpp): the blocks live in (pinned) host memory and forward() copies
  /// each to `runtime.device` just before it runs (Note [Streamed T5]); false: the blocks are on `runtime.device`.
  bool streamed_blocks = false;

  /// @brief Builds the model from `weights`, asked once per tensor with the dtype the runtime gives it.
  static T5EncoderModel from_weights(const T5Config& config, const T5Runtime& runtime, const T5WeightSource& weights);

  /// @brief `last_hidden_state [B, L, d_model]` of `input_ids [B, L]` (any integer dtype).
  ///
  /// `attention_mask [B, L]` (1/true = attend) is optional, as in transformers: LTXPipeline and
  /// LTXImageToVideoPipeline pass none, LTXConditionPipeline passes the tokenizer's mask. The result has the
  /// runtime dtype (the final norm casts to its weight's dtype).
  at::Tensor forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask = std::nullopt) const;

  /// @brief Whether the weights are held (false after release()).
  bool loaded() const { return final_layer_norm.defined(); }
  /// @brief Drops every weight tensor (the model can no longer run) and, for an accelerator, synchronizes
  ///        and empties the device cache (ltxmps::release_memory), so the transformer can load next.
  void release();
};

/// @brief Loads a transformers `text_encoder/` folder: `config.json` plus `model[.variant].safetensors` (or its
///        sharded index). Strict: missing, unexpected and mis-shaped tensors are errors naming the file and
///        tensor. `shared.weight` and `encoder.embed_tokens.weight` are tied: either may be absent.
///        `pinned_memory`: read the weights into page-locked host memory (runtime.device must be the CPU).
T5EncoderModel load_t5_encoder(const std::filesystem::path& model_dir, const T5Runtime& runtime,
                               std::optional<std::string> variant = std::nullopt, bool pinned_memory = false);

}  // namespace ltxmps::pipeline
