#pragma once
/// @file checkpoint.hpp
/// @brief Diffusers checkpoint loading: component folders, sharded indexes, the original Lightricks
/// single-file transformer, strict binding of weights to model code, and config.json reading.

#include "ltxmps_pipeline/safetensors.hpp"

#include <ltxmps/error.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The weights of one diffusers component folder (config.json + weights) or of one file.
///
/// A store maps tensor names to the file holding them. Copies are cheap and share the mappings.
class WeightStore {
 public:
  /// @brief Opens the weights of a component folder.
  ///
  /// Looks, for each stem (the given one, else "diffusion_pytorch_model" then "model"), for
  /// `<stem>.safetensors` then `<stem>.safetensors.index.json`; with a variant, for
  /// `<stem>.<variant>.safetensors` then `<stem>.safetensors.index.<variant>.json` (diffusers
  /// naming). The first that exists wins; the error lists every file looked for.
  static WeightStore open_component(const std::filesystem::path& dir,
                                    std::optional<std::string> variant = std::nullopt,
                                    std::optional<std::string> stem = std::nullopt);
  /// @brief Opens one `.safetensors` file or one `*.index*.json` sharded index.
  static WeightStore open_file(const std::filesystem::path& file);
  /// @brief Opens an original Lightricks single-file checkpoint under diffusers transformer names
  /// (see lightricks_transformer_key()); the "vae.*" keys are left out.
  static WeightStore open_lightricks_transformer(const std::filesystem::path& file);

  /// @brief The file or index the store was opened from (named in errors).
  const std::filesystem::path& path() const;
  /// @brief All tensor names, sorted.
  std::vector<std::string> names() const;
  /// @brief Whether the store has `name`.
  bool contains(std::string_view name) const;
  /// @brief The header entry of `name` (with `name` as its name); throws naming the store's path.
  const TensorInfo& info(std::string_view name) const;
  /// @brief The file (shard) that holds `name`.
  const std::filesystem::path& file_of(std::string_view name) const;
  /// @brief Loads `name` as SafetensorsFile::load() does.
  at::Tensor load(std::string_view name, const at::TensorOptions& options = {}) const;
  /// @brief Tensors that lie in a shard but that the index does not list, as "name (in shard)".
  ///
  /// They are not part of the store (diffusers loads what the index lists); StrictLoader reports
  /// them as unexpected.
  const std::vector<std::string>& unlisted() const;

 private:
  struct Entry;
  struct State;
  explicit WeightStore(std::shared_ptr<const State> state);
  static WeightStore open_index(const std::filesystem::path& index_file);
  const Entry& entry(std::string_view name) const;
  std::shared_ptr<const State> state_;
};

/// @brief The diffusers name of a key of the original Lightricks checkpoint, or nullopt for a key
/// the transformer does not use ("vae.*").
///
/// Strips "model.diffusion_model." and renames patchify_proj->proj_in, adaln_single->time_embed,
/// q_norm->norm_q, k_norm->norm_k (as diffusers' scripts/convert_ltx_to_diffusers.py does).
std::optional<std::string> lightricks_transformer_key(std::string_view key);

/// @brief Strict binding of stored weights to model code.
///
/// Each take() checks that the tensor exists, has the expected shape and, for a floating-point
/// target, is stored as F32, F16 or BF16; finish() then reports stored keys that were never taken.
/// Names are relative to `prefix`; finish() looks only at stored keys under `prefix`.
class StrictLoader {
 public:
  /// @brief Binds to a copy of `store` (cheap); tensors load in `options`' dtype and device (the
  /// stored dtype when `options` has none).
  StrictLoader(const WeightStore& store, at::TensorOptions options, std::string prefix = "");

  /// @brief Loads `prefix + name`; throws for a missing tensor or a shape mismatch.
  at::Tensor take(const std::string& name, std::vector<int64_t> expected_shape);
  /// @brief As take(), in `dtype_override` instead of the options' dtype (keep-in-fp32 modules).
  at::Tensor take(const std::string& name, std::vector<int64_t> expected_shape, at::ScalarType dtype_override);
  /// @brief Whether the store has `prefix + name`.
  bool has(const std::string& name) const;
  /// @brief Marks `prefix + name` as used without loading it (a known-unused key); no-op when absent.
  void skip(const std::string& name);
  /// @brief Throws "unexpected keys: ... in <path>" when a stored key under the prefix was never
  /// taken or skipped, or when the index left a shard's tensor unlisted.
  void finish() const;

  /// @brief The store bound to.
  const WeightStore& store() const { return store_; }
  /// @brief The prefix prepended to every name.
  const std::string& prefix() const { return prefix_; }

 private:
  at::Tensor take_as(const std::string& name, const std::vector<int64_t>& expected_shape,
                     std::optional<at::ScalarType> dtype);
  WeightStore store_;
  at::TensorOptions options_;
  std::string prefix_;
  std::set<std::string, std::less<>> used_;
};

/// @brief Reads and parses a JSON file (config.json, model_index.json, an index); the error names
/// the file and the parse position. Duplicate keys are rejected.
nlohmann::json read_json_file(const std::filesystem::path& file);

/// @brief One config.json field as `T`; a value of another JSON type is an error naming `source` (the file)
///        and the field. Shared by every model's and the scheduler's config parser.
template <typename T>
T config_field(const nlohmann::json& value, const std::string& key, const std::string& source) {
  try {
    return value.get<T>();
  } catch (const nlohmann::json::exception&) {
    throw ::ltxmps::Error(c10::str(source, ": field '", key, "' has the wrong type (", value.type_name(), ")"));
  }
}

namespace detail {
/// @brief Parses `text` as JSON and rejects duplicate object keys; errors name `file` and `what`
/// ("the header of", "") and the parse position. Shared by the safetensors header and JSON files.
nlohmann::json parse_json_strict(std::string_view text, const std::filesystem::path& file, std::string_view what);
/// @brief A short description of an untrusted JSON value for an error message: scalars and short
/// flat arrays as JSON (cut to 64 characters), other containers by kind (never dumped: they may be
/// deeply nested).
std::string describe_json(const nlohmann::json& value);
}  // namespace detail

}  // namespace ltxmps::pipeline
