#pragma once
// SentencePiece as the pipeline library sees it: a model held by libltxmps_spm, which runs in a link-map
// namespace of its own (Note [SentencePiece isolation] in sentencepiece_isolation.cpp). Private to the
// pipeline library: tokenizer.cpp is its only user.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

struct ltxmps_spm;

namespace ltxmps::pipeline::detail {

/// @brief A loaded `spiece.model`. Move-only; the model lives inside libltxmps_spm.
class SentencePieceModel {
 public:
  /// @brief Loads `file`; throws ltxmps::Error naming it when it is not a SentencePiece model, or naming the
  ///        wrapper library when that cannot be loaded.
  explicit SentencePieceModel(const std::filesystem::path& file);
  SentencePieceModel(SentencePieceModel&& other) noexcept;
  SentencePieceModel& operator=(SentencePieceModel&& other) noexcept;
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;
  ~SentencePieceModel();

  int64_t piece_size() const;
  /// @brief The id of `piece`, the unknown id when the model has no such piece.
  int64_t piece_to_id(const std::string& piece) const;
  /// @brief The piece of `id`; throws when `id` is not one of the model.
  std::string id_to_piece(int64_t id) const;
  /// @brief Appends SentencePieceProcessor::Encode(text) to `out`.
  void encode(const std::string& text, std::vector<int64_t>& out) const;

 private:
  ltxmps_spm* handle_ = nullptr;
  std::filesystem::path file_;
};

/// @brief Where libltxmps_spm is loaded from: the folder of the library that holds this code.
std::filesystem::path sentencepiece_library_path();

}  // namespace ltxmps::pipeline::detail
