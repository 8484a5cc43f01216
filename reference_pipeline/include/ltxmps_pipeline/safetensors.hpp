#pragma once
/// @file safetensors.hpp
/// @brief Strict, memory-mapped reading and atomic writing of safetensors files.
///
/// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
/// N bytes of UTF-8 JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
/// {str: str}}`, then the data section. Every file is fully validated when it is opened, so a file
/// that opens can be loaded tensor by tensor without further checks on untrusted sizes.

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/core/TensorOptions.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ltxmps::pipeline {

/// @brief One tensor of a safetensors file, as its header describes it.
struct TensorInfo {
  /// The name in the header.
  std::string name;
  /// The stored element type.
  c10::ScalarType dtype = c10::ScalarType::Float;
  /// The stored shape (every entry >= 0).
  std::vector<int64_t> shape;
  /// Byte offsets of the data, relative to the start of the data section (`end - begin` equals
  /// `numel * itemsize`).
  uint64_t begin = 0;
  /// One past the last byte.
  uint64_t end = 0;
};

/// @brief The safetensors name of a dtype ("F32", "BF16", ...); throws ltxmps::Error for a dtype
/// the format cannot store here (complex, quantized, float8, ...).
const char* safetensors_dtype_name(c10::ScalarType dtype);

/// @brief A read-only memory mapping of one safetensors file whose header has been validated.
///
/// Copies are cheap and share the mapping; the mapping is released with the last copy. Loaded
/// tensors never alias the mapping.
class SafetensorsFile {
 public:
  /// @brief Maps `file` and validates its header and layout; throws ltxmps::Error naming the file
  /// (and the tensor, where one is at fault) on any violation.
  static SafetensorsFile open(const std::filesystem::path& file);

  /// @brief The path the file was opened from.
  const std::filesystem::path& path() const;
  /// @brief All tensors, in the order their bytes lie in the file (see Note [Tensor order]).
  const std::vector<TensorInfo>& tensors() const;
  /// @brief The tensor called `name`, or nullptr when the file has none.
  const TensorInfo* find(std::string_view name) const;
  /// @brief The string pairs of "__metadata__" (empty when absent).
  const std::map<std::string, std::string>& metadata() const;
  /// @brief Size in bytes of the data section.
  uint64_t data_size() const;

  /// @brief Loads `name` onto `options.device()` in `options.dtype()` (the stored dtype when
  /// `options` has none).
  ///
  /// Host memory stays near one tensor: the bytes are read through a view of the mapping (copied
  /// into an aligned buffer only when the mapping is misaligned for the dtype) and converted
  /// directly into the result; with `options.pinned_memory()` on the CPU, into page-locked memory. Throws
  /// ltxmps::Error when the tensor is absent or, for BOOL, when a byte is neither 0 nor 1.
  at::Tensor load(std::string_view name, const at::TensorOptions& options = {}) const;

 private:
  struct State;
  explicit SafetensorsFile(std::shared_ptr<const State> state);
  std::shared_ptr<const State> state_;
};

/// @brief Writes `tensors` (in any order; names must be unique) and `metadata` to `file`.
///
/// Supported dtypes: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL. Tensors on any device and
/// with any strides are written as contiguous host copies, one at a time. The header is padded
/// with spaces to a multiple of 8 bytes and tensors are laid out largest itemsize first, as the
/// Python library does, so every tensor is aligned in a mapping. The bytes go to a unique temporary
/// file in the same folder (AtomicOutput, output_files.hpp) that is renamed over `file` only once
/// complete, so a partial file never carries the final name and an existing `file` stays intact
/// until then. Cancellation (throw_if_cancelled()) is checked between tensors and every 64 MiB.
void save_safetensors(const std::filesystem::path& file,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// @brief Opens `file` and loads all its tensors (in the order of SafetensorsFile::tensors()).
std::vector<std::pair<std::string, at::Tensor>> load_all(const std::filesystem::path& file,
                                                         const at::TensorOptions& options = {});

}  // namespace ltxmps::pipeline
