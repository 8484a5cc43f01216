#pragma once
/// @file tokenizer.hpp
/// @brief The T5 tokenizer as LTX pipelines call it (transformers 5.17 `T5Tokenizer`, the tokenizers-backed
///        "fast" tokenizer `AutoTokenizer` gives), through the SentencePiece library.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief Token ids and mask of a batch of prompts, padded to one length.
struct TokenizedPrompts {
  at::Tensor input_ids;       ///< [B, L] int64
  at::Tensor attention_mask;  ///< [B, L] int64, 1 for text and `</s>`, 0 for padding
};

/// @brief `spiece.model` plus the special tokens of transformers' T5 tokenizer.
///
/// Ids: the SentencePiece pieces, then `extra_ids` sentinels `<extra_id_{i}>` with id
/// `piece_count + extra_ids - 1 - i`. See Note [T5 tokenizer rules] in tokenizer.cpp for the rules that make the
/// result equal to the tokenizers-backed tokenizer.
class T5Tokenizer {
 public:
  /// @brief Loads `dir/spiece.model` and, when present, `dir/tokenizer_config.json` (`model_max_length`,
  ///        `extra_ids`, `pad_token` / `eos_token` / `unk_token`).
  static T5Tokenizer load(const std::filesystem::path& dir);
  /// @brief Loads one `spiece.model` with transformers' defaults (100 extra ids, no max length).
  static T5Tokenizer from_model_file(const std::filesystem::path& file, int64_t extra_ids = 100);

  /// @brief The ids of `text` followed by `</s>`, without truncation or padding.
  std::vector<int64_t> encode(const std::string& text) const;
  /// @brief `tokenizer(prompts, padding="max_length", max_length=N, truncation=True,
  ///        add_special_tokens=True)`: at most N-1 text tokens, then `</s>`, then `<pad>` up to N.
  ///        N is `max_length`, else `model_max_length()`; throws when neither is known.
  TokenizedPrompts operator()(const std::vector<std::string>& prompts, std::optional<int64_t> max_length = std::nullopt) const;

  int64_t vocab_size() const;  ///< pieces + extra ids
  int64_t pad_id() const;  ///< `<pad>` (0 for T5), the padding id
  int64_t eos_id() const;  ///< `</s>` (1 for T5), appended to every prompt
  int64_t unk_id() const;  ///< `<unk>` (2 for T5)
  /// @brief `model_max_length` of tokenizer_config.json, when it is a real limit.
  std::optional<int64_t> model_max_length() const;

  ///@{
  /// Movable, not copyable (it owns the SentencePiece processor).
  T5Tokenizer(T5Tokenizer&&) noexcept;
  T5Tokenizer& operator=(T5Tokenizer&&) noexcept;
  ///@}
  ~T5Tokenizer();

 private:
  struct State;
  explicit T5Tokenizer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace ltxmps::pipeline
