#pragma once
/// @file prompt_cache.hpp
/// @brief Prompt encoding as diffusers' LTX pipelines do it (`encode_prompt` / `_get_t5_prompt_embeds`), and
///        a safetensors cache of the result so the T5 encoder can be released before the transformer loads.

#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/tokenizer.hpp"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The four tensors a pipeline feeds to the transformer.
struct PromptEmbeddings {
  at::Tensor prompt_embeds;                   ///< [B, L, d_model], text encoder dtype
  at::Tensor prompt_attention_mask;           ///< [B, L] bool
  at::Tensor negative_prompt_embeds;          ///< [B, L, d_model]
  at::Tensor negative_prompt_attention_mask;  ///< [B, L] bool
};

/// @brief Arguments of encode_prompt(), with diffusers' defaults.
struct EncodePromptOptions {
  std::vector<std::string> prompts;  ///< the batch of prompts (at least one)
  /// One per prompt, or one for all; empty means "" for every prompt (diffusers' default).
  std::vector<std::string> negative_prompts;
  /// 128 in LTXPipeline / LTXImageToVideoPipeline, 256 in LTXConditionPipeline.
  int64_t max_sequence_length = 128;
  /// false: LTXPipeline / LTXImageToVideoPipeline (T5 attends to the pad tokens); true: LTXConditionPipeline
  /// passes `attention_mask=prompt_attention_mask` to T5 (docs/models/t5.md, "Prompt encoding, masks and
  /// max_sequence_length").
  bool encoder_attention_mask = false;
  int64_t num_videos_per_prompt = 1;  ///< embeddings and masks are repeated this many times per prompt
};

/// @brief `pipeline.encode_prompt(prompt, negative_prompt, do_classifier_free_guidance=True, ...)`.
PromptEmbeddings encode_prompt(const T5Tokenizer& tokenizer, const T5EncoderModel& encoder,
                               const EncodePromptOptions& options);

/// @brief Writes the four tensors (host copies, embeds in their dtype, masks as bool) and `metadata`, atomically
///        (save_safetensors()). Embeddings with NaN or Inf are refused, naming the tensor.
void save_prompt_cache(const std::filesystem::path& file, const PromptEmbeddings& embeddings,
                       const std::map<std::string, std::string>& metadata = {});

/// @brief Reads a cache written by save_prompt_cache(); errors name the file and the missing, inconsistent or
///        non-finite (NaN/Inf) tensor.
PromptEmbeddings load_prompt_cache(const std::filesystem::path& file);

}  // namespace ltxmps::pipeline
