// libltxmps_spm: SentencePiece behind the C interface of ltxmps_spm.h. Every entry point catches what
// SentencePiece or the C++ runtime throws, since no exception may leave this library (its C++ runtime is not
// the caller's, see Note [SentencePiece isolation] in src/sentencepiece_isolation.cpp).

#include "ltxmps_spm.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

static_assert(sizeof(int) == sizeof(int32_t), "SentencePiece ids are int; the C interface passes int32_t");

struct ltxmps_spm {
  sentencepiece::SentencePieceProcessor processor;
};

namespace {

void write_error(char* error, size_t capacity, const char* message) {
  if (error == nullptr || capacity == 0) return;
  const size_t length = std::min(capacity - 1, std::strlen(message));
  std::memcpy(error, message, length);
  error[length] = '\0';
}

// Runs `body`, turning an escaping exception into `failure` and a message.
template <typename Result, typename Body>
Result guarded(Result failure, char* error, size_t capacity, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    write_error(error, capacity, e.what());
  } catch (...) {
    write_error(error, capacity, "unknown exception inside SentencePiece");
  }
  return failure;
}

}  // namespace

extern "C" {

int ltxmps_spm_abi_version(void) { return LTXMPS_SPM_ABI_VERSION; }

ltxmps_spm* ltxmps_spm_load(const char* path, char* error, size_t error_capacity) {
  return guarded<ltxmps_spm*>(nullptr, error, error_capacity, [&]() -> ltxmps_spm* {
    auto model = std::make_unique<ltxmps_spm>();
    const auto status = model->processor.Load(path);
    if (!status.ok()) {
      write_error(error, error_capacity, status.ToString().c_str());
      return nullptr;
    }
    return model.release();
  });
}

void ltxmps_spm_free(ltxmps_spm* model) { delete model; }

int32_t ltxmps_spm_piece_size(const ltxmps_spm* model) { return model->processor.GetPieceSize(); }

int32_t ltxmps_spm_piece_to_id(const ltxmps_spm* model, const char* piece, size_t length) {
  return guarded<int32_t>(-1, nullptr, 0, [&] { return model->processor.PieceToId(absl::string_view(piece, length)); });
}

int64_t ltxmps_spm_id_to_piece(const ltxmps_spm* model, int32_t id, char* out, size_t capacity) {
  // SentencePiece does not range-check `id`.
  if (id < 0 || id >= model->processor.GetPieceSize()) return -1;
  const std::string& piece = model->processor.IdToPiece(id);
  std::memcpy(out, piece.data(), std::min(capacity, piece.size()));
  return static_cast<int64_t>(piece.size());
}

int64_t ltxmps_spm_encode(const ltxmps_spm* model, const char* text, size_t length, int32_t* ids, size_t capacity,
                          char* error, size_t error_capacity) {
  return guarded<int64_t>(-1, error, error_capacity, [&]() -> int64_t {
    std::vector<int> pieces;
    const auto status = model->processor.Encode(absl::string_view(text, length), &pieces);
    if (!status.ok()) {
      write_error(error, error_capacity, status.ToString().c_str());
      return -1;
    }
    std::copy_n(pieces.begin(), std::min(capacity, pieces.size()), ids);
    return static_cast<int64_t>(pieces.size());
  });
}

}  // extern "C"
