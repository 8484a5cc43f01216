#pragma once
/// @file checkpoint.hpp
/// @brief Diffusers checkpoint loading: component folders, sharded indexes, the original Lightricks
/// single-file transformer, strict binding of weights to model code (with a NaN/Inf check of every weight),
/// and config.json fields (the JSON files themselves are read by json_file.hpp, included here).

#include "ltxmps_pipeline/json_file.hpp"
#include "ltxmps_pipeline/safetensors.hpp"

#include <ltxmps/error.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
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
  /// @brief Opens the VAE of an original Lightricks single-file checkpoint (its "vae.*" keys) under diffusers
  /// VAE names, renamed with the table its keys select (lightricks_vae_key(), inspect_lightricks_checkpoint());
  /// the per-channel statistics diffusers drops and every non-VAE key are left out.
  static WeightStore open_lightricks_vae(const std::filesystem::path& file);

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
  static WeightStore open_renamed(const WeightStore& original,
                                  const std::function<std::optional<std::string>(std::string_view)>& rename,
                                  const char* component);
  const Entry& entry(std::string_view name) const;
  std::shared_ptr<const State> state_;
};

/// @brief The diffusers name of a key of the original Lightricks checkpoint, or nullopt for a key
/// the transformer does not use ("vae.*").
///
/// Strips "model.diffusion_model." and renames patchify_proj->proj_in, adaln_single->time_embed,
/// q_norm->norm_q, k_norm->norm_k (as diffusers' scripts/convert_ltx_to_diffusers.py does).
std::optional<std::string> lightricks_transformer_key(std::string_view key);

// Note [Lightricks single-file VAE]
// The original LTX-Video files hold the transformer ("model.diffusion_model.*") and the VAE ("vae.*") together.
// diffusers (loaders/single_file_utils.py) decides what such a file is from its keys alone: the model type
// (infer_diffusers_model_type) picks the reference repository whose vae/config.json it fetches, and the VAE
// keys pick one of three rename tables (convert_ltx_vae_checkpoint_to_diffusers): 0.9.5 when the encoder's
// conv_out takes 2048 channels (0.9.5, 0.9.7, 0.9.8), 0.9.1 when the decoder has a last_time_embedder, else
// 0.9.0. The renames are substring replacements applied in the table's order; lightricks_vae_key() applies them
// the same way, so every key gets the name diffusers gives it. The config is never read off the file: diffusers
// takes the reference repository's (or the `config=` folder given to from_single_file); load_lightricks_vae()
// takes it from the caller and checks that it describes the layout the keys imply.

/// @brief Which of diffusers' VAE rename tables a Lightricks single file's keys select.
enum class LightricksVaeLayout {
  v090,  ///< the base table (LTX-Video 0.9.0)
  v091,  ///< VAE_091_RENAME_DICT: the decoder has `last_time_embedder`
  v095,  ///< VAE_095_RENAME_DICT: the encoder's conv_out takes 2048 channels (0.9.5, 0.9.7, 0.9.8)
};

/// @brief What diffusers 0.42.1 infers from the keys of a Lightricks single file.
struct LightricksCheckpointInfo {
  std::string model_type;           ///< infer_diffusers_model_type: ltx-video, ltx-video-0.9.1, -0.9.5 or -0.9.7
  std::string reference_config;     ///< the repository whose configs diffusers fetches for that type
  bool has_vae = false;             ///< the file holds "vae.*" keys (`vae.encoder.conv_in.conv.bias`)
  LightricksVaeLayout vae_layout = LightricksVaeLayout::v090;  ///< the rename table of its VAE keys
};

/// @brief Reads the model type and VAE layout off the keys (original names) of a Lightricks single file, as
///        diffusers does; throws naming the file when it holds none of diffusers' LTX-Video marker keys.
LightricksCheckpointInfo inspect_lightricks_checkpoint(const WeightStore& original);

/// @brief The diffusers VAE name of a key of an original Lightricks checkpoint under `layout`'s rename table,
///        or nullopt for a key the VAE does not take (no "vae." in it, or per-channel statistics diffusers drops).
std::optional<std::string> lightricks_vae_key(std::string_view key, LightricksVaeLayout layout);

// Note [Weight check]
// A checkpoint with NaN or Inf weights (a broken conversion, a diverged fine-tune, bit rot) otherwise shows
// up as a NaN video after minutes of work, blamed on whichever component first reports it. StrictLoader
// checks each floating-point weight as it is loaded, in the dtype it will run in, with one min/max reduction
// (no copy), and names the tensor; values that are finite as stored but overflow in the run dtype (a BF16
// weight above 65504 loaded as Half) are told apart. The check is on by default and can be skipped per
// thread with WeightCheckGuard, e.g. for a checkpoint known to be good whose load time matters.

/// @brief Whether StrictLoader checks loaded floating-point weights for NaN/Inf on this thread (default true).
bool weight_check_enabled() noexcept;

/// @brief Sets weight_check_enabled() for the current thread while it lives (restoring the previous value),
///        like c10's thread-local guards: `WeightCheckGuard skip(false);` before loading skips the check.
class WeightCheckGuard {
 public:
  /// @brief Sets the check to `enabled` for this thread until the guard is destroyed.
  explicit WeightCheckGuard(bool enabled) noexcept;
  ~WeightCheckGuard();
  WeightCheckGuard(const WeightCheckGuard&) = delete;
  WeightCheckGuard& operator=(const WeightCheckGuard&) = delete;

 private:
  bool previous_;
};

/// @brief True when `t` holds no NaN or Inf (always true for integer, bool and empty tensors). One
///        min/max reduction on the tensor's device.
bool all_finite(const at::Tensor& t);

/// @brief Throws ltxmps::Error "<what> is not finite: N NaN and M Inf among K values" unless all_finite(t).
void require_finite(const at::Tensor& t, const std::string& what);

/// @brief Strict binding of stored weights to model code.
///
/// Each take() checks that the tensor exists, has the expected shape and, for a floating-point
/// target, is stored as F32, F16 or BF16 and holds no NaN/Inf (Note [Weight check]; skipped while a
/// WeightCheckGuard(false) is active at construction); finish() then reports stored keys that were
/// never taken. Names are relative to `prefix`; finish() looks only at stored keys under `prefix`.
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
  bool check_finite_ = true;
};

/// @brief `Model::from_weights(config, runtime, source)` with every tensor taken from `store` by a StrictLoader in
///        the runtime's device and dtype, then finish(): the last step every model loader shares.
template <typename Model, typename Config, typename Runtime>
Model load_strict(const WeightStore& store, const Config& config, const Runtime& runtime) {
  StrictLoader loader(store, at::TensorOptions().device(runtime.device).dtype(runtime.dtype));
  auto model = Model::from_weights(config, runtime, [&](const std::string& name, const std::vector<int64_t>& shape) {
    return loader.take(name, shape);
  });
  loader.finish();
  return model;
}

namespace detail {
[[noreturn]] void config_field_error(const nlohmann::json& value, const std::string& key, const std::string& source,
                                     const std::string& expected);
}  // namespace detail

/// @brief One config.json field as `T`; a value of another JSON type is an error naming `source` (the file)
///        and the field ("has the wrong type"). Shared by every model's and the scheduler's config parser.
///
/// An integer field takes only a JSON integer within `T`'s range: `1.9`, `2.0` and `2^64` are errors, never
/// truncated or wrapped (Python would fail on them later, or compute with a float). A floating-point field
/// takes any finite JSON number.
template <typename T>
T config_field(const nlohmann::json& value, const std::string& key, const std::string& source) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (value.is_number_unsigned()) {
      const auto v = value.get<uint64_t>();
      if (v <= static_cast<uint64_t>(std::numeric_limits<T>::max())) return static_cast<T>(v);
    } else if (value.is_number_integer()) {
      const auto v = value.get<int64_t>();
      if (v >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
          static_cast<uint64_t>(std::max<int64_t>(v, 0)) <= static_cast<uint64_t>(std::numeric_limits<T>::max()))
        return static_cast<T>(v);
    } else if (value.is_number_float()) {
      detail::config_field_error(value, key, source, "an integer");
    } else {
      detail::config_field_error(value, key, source, "");
    }
    detail::config_field_error(value, key, source,
                               c10::str("an integer from ", std::numeric_limits<T>::min(), " to ",
                                        std::numeric_limits<T>::max()));
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!value.is_number()) detail::config_field_error(value, key, source, "");
    const auto v = value.get<T>();
    if (!std::isfinite(v)) detail::config_field_error(value, key, source, "a finite number");
    return v;
  } else {
    try {
      return value.get<T>();
    } catch (const nlohmann::json::exception&) {
      detail::config_field_error(value, key, source, "");
    }
  }
}

// Note [Config bounds]
// Sizes from config.json are untrusted. Each is bounded far above every released model (LTX-Video: 128
// channels, 2048 inner dim, 28 layers, patch 1) yet low enough that every product the model and pipeline form
// from them (inner dim, patch volumes, compression times patch size) fits in int64 with room to spare, so
// a hostile value is a named error here and never an overflow, a division by zero or a huge allocation later.

/// @brief Upper bound of a channel count or inner dimension in a model config (Note [Config bounds]).
constexpr int64_t kMaxConfigChannels = int64_t{1} << 20;
/// @brief Upper bound of a patch size.
constexpr int64_t kMaxConfigPatch = 64;
/// @brief Upper bound of a compression ratio (VAE spatial/temporal compression).
constexpr int64_t kMaxConfigCompression = int64_t{1} << 16;
/// @brief Upper bound of a layer count.
constexpr int64_t kMaxConfigLayers = 10000;

/// @brief Throws "<source>: <name> = <value> is out of range (expected <lo> to <hi>)" unless lo <= value <= hi.
///        Config validators bound every size so that the products computed from them cannot overflow.
void check_config_range(const std::string& source, const char* name, int64_t value, int64_t lo, int64_t hi);

}  // namespace ltxmps::pipeline
