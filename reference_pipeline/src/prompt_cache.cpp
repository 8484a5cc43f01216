// Prompt encoding as diffusers' LTX pipelines do it (pipelines/ltx/pipeline_ltx.py `encode_prompt` /
// `_get_t5_prompt_embeds`) and the safetensors prompt cache (prompt_cache.hpp).

#include "ltxmps_pipeline/prompt_cache.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/safetensors.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <tuple>

namespace ltxmps::pipeline {

namespace {

// _get_t5_prompt_embeds: tokenize (max_length padding, truncation), T5 with or without the mask, embeddings
// cast to the encoder dtype, mask as bool; repeated num_videos_per_prompt times.
std::pair<at::Tensor, at::Tensor> t5_prompt_embeds(const T5Tokenizer& tokenizer, const T5EncoderModel& encoder,
                                                   const std::vector<std::string>& prompts,
                                                   const EncodePromptOptions& options) {
  const auto tokens = tokenizer(prompts, options.max_sequence_length);
  std::optional<at::Tensor> mask;
  if (options.encoder_attention_mask) mask = tokens.attention_mask;
  auto embeds = encoder.forward(tokens.input_ids, mask).to(encoder.runtime.dtype);
  auto bool_mask = tokens.attention_mask.to(at::kBool).to(encoder.runtime.device);
  const int64_t n = options.num_videos_per_prompt, B = embeds.size(0), L = embeds.size(1);
  embeds = embeds.repeat({1, n, 1}).view({B * n, L, -1});
  bool_mask = bool_mask.view({B, -1}).repeat({n, 1});
  return {embeds, bool_mask};
}

}  // namespace

PromptEmbeddings encode_prompt(const T5Tokenizer& tokenizer, const T5EncoderModel& encoder,
                               const EncodePromptOptions& options) {
  LTXMPS_CHECK(!options.prompts.empty(), "encode_prompt: no prompt given");
  LTXMPS_CHECK(options.num_videos_per_prompt >= 1, "encode_prompt: num_videos_per_prompt must be >= 1, got ",
               options.num_videos_per_prompt);
  const size_t batch = options.prompts.size();
  std::vector<std::string> negative = options.negative_prompts;
  if (negative.empty()) negative.assign(batch, "");
  else if (negative.size() == 1) negative.assign(batch, negative.front());
  LTXMPS_CHECK(negative.size() == batch, "encode_prompt: ", negative.size(), " negative prompts for ", batch,
               " prompts (give one, or one per prompt)");
  PromptEmbeddings out;
  std::tie(out.prompt_embeds, out.prompt_attention_mask) = t5_prompt_embeds(tokenizer, encoder, options.prompts, options);
  std::tie(out.negative_prompt_embeds, out.negative_prompt_attention_mask) =
      t5_prompt_embeds(tokenizer, encoder, negative, options);
  return out;
}

namespace {
constexpr const char* kCacheNames[4] = {"prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                                        "negative_prompt_attention_mask"};
}

void save_prompt_cache(const std::filesystem::path& file, const PromptEmbeddings& e,
                       const std::map<std::string, std::string>& metadata) {
  const at::Tensor* tensors[4] = {&e.prompt_embeds, &e.prompt_attention_mask, &e.negative_prompt_embeds,
                                  &e.negative_prompt_attention_mask};
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (int i = 0; i < 4; ++i) {
    LTXMPS_CHECK(tensors[i]->defined(), "save_prompt_cache(", file.string(), "): '", kCacheNames[i], "' is undefined");
    auto t = tensors[i]->to(at::kCPU);
    if (i % 2 == 1) t = t.to(at::kBool);
    // A cache of NaN would only move the failure to the transformer, which would then be blamed for it.
    else require_finite(t, c10::str("prompt cache ", file.string(), ": '", kCacheNames[i], "' (text encoder output)"));
    named.emplace_back(kCacheNames[i], t.contiguous());
  }
  auto meta = metadata;
  meta.emplace("format", "ltxmps.prompt_cache.v1");
  save_safetensors(file, named, meta);
}

PromptEmbeddings load_prompt_cache(const std::filesystem::path& file) {
  const auto st = SafetensorsFile::open(file);
  at::Tensor t[4];
  for (int i = 0; i < 4; ++i) {
    LTXMPS_CHECK(st.find(kCacheNames[i]) != nullptr, file.string(), ": prompt cache has no tensor '", kCacheNames[i], "'");
    t[i] = st.load(kCacheNames[i]);
  }
  for (int i : {0, 2}) {
    LTXMPS_CHECK(t[i].dim() == 3 && at::isFloatingType(t[i].scalar_type()), file.string(), ": '", kCacheNames[i],
                 "' must be a floating [batch, tokens, channels] tensor, got ", t[i].scalar_type(), " ", t[i].sizes());
    require_finite(t[i], c10::str("prompt cache ", file.string(), ": tensor '", kCacheNames[i], "'"));
  }
  for (int i : {1, 3}) {
    LTXMPS_CHECK(t[i].dim() == 2 && t[i].size(0) == t[i - 1].size(0) && t[i].size(1) == t[i - 1].size(1), file.string(),
                 ": '", kCacheNames[i], "' must be [", t[i - 1].size(0), ", ", t[i - 1].size(1), "] like '",
                 kCacheNames[i - 1], "', got ", t[i].sizes());
    t[i] = t[i].to(at::kBool);
  }
  LTXMPS_CHECK(t[0].sizes() == t[2].sizes(), file.string(), ": 'negative_prompt_embeds' ", t[2].sizes(),
               " and 'prompt_embeds' ", t[0].sizes(), " differ in shape");
  return {t[0], t[1], t[2], t[3]};
}

}  // namespace ltxmps::pipeline
