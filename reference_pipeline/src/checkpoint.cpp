#include "ltxmps_pipeline/checkpoint.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <algorithm>

namespace ltxmps::pipeline {

namespace detail {

void config_field_error(const nlohmann::json& value, const std::string& key, const std::string& source,
                        const std::string& expected) {
  if (expected.empty())
    throw Error(c10::str(source, ": field '", key, "' has the wrong type (", value.type_name(), ")"));
  throw Error(c10::str(source, ": field '", key, "' is ", describe_json(value), ", expected ", expected));
}

}  // namespace detail

void check_config_range(const std::string& source, const char* name, int64_t value, int64_t lo, int64_t hi) {
  LTXMPS_CHECK(value >= lo && value <= hi, source, ": ", name, " = ", value, " is out of range (expected ", lo, " to ",
               hi, ")");
}

// ---------------------------------------------------------------------------------------------------
// Finiteness

namespace {
thread_local bool t_weight_check = true;
}  // namespace

bool weight_check_enabled() noexcept { return t_weight_check; }

WeightCheckGuard::WeightCheckGuard(bool enabled) noexcept : previous_(t_weight_check) { t_weight_check = enabled; }
WeightCheckGuard::~WeightCheckGuard() { t_weight_check = previous_; }

bool all_finite(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0 || !(at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type())))
    return true;
  if (at::isComplexType(t.scalar_type())) return at::isfinite(t).all().item<bool>();
  // min and max propagate NaN, and an Inf is one of them: one reduction, no full-size temporary.
  const auto [lo, hi] = at::aminmax(t);
  const auto both = at::stack({lo.to(at::kFloat), hi.to(at::kFloat)}).to(at::kCPU);
  const float* v = both.data_ptr<float>();
  return std::isfinite(v[0]) && std::isfinite(v[1]);
}

void require_finite(const at::Tensor& t, const std::string& what) {
  if (all_finite(t)) return;
  const auto nan = at::isnan(t).sum().item<int64_t>();
  const auto inf = at::isinf(t).sum().item<int64_t>();
  LTXMPS_CHECK(false, what, " is not finite: ", nan, " NaN and ", inf, " Inf among ", t.numel(), " values");
}

// ---------------------------------------------------------------------------------------------
// WeightStore

struct WeightStore::Entry {
  TensorInfo info;          // `info.name` is the store's name (renamed for Lightricks files)
  size_t file = 0;          // index into State::files
  std::string stored_name;  // the name in the file
};

struct WeightStore::State {
  std::filesystem::path path;
  std::vector<SafetensorsFile> files;
  std::map<std::string, Entry, std::less<>> entries;
  std::vector<std::string> unlisted;
};

WeightStore::WeightStore(std::shared_ptr<const State> state) : state_(std::move(state)) {}

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// A name that stays inside its folder: no separators, not "." or "..", not empty.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

// Note [Sharded indexes]
// As diffusers and transformers do, the store holds exactly what `weight_map` lists: a listed
// tensor must be in its shard (else the checkpoint is broken), while a tensor that a shard holds
// but the index does not list is kept aside in `unlisted` for StrictLoader to report as unexpected.
// Shard names must be plain file names in the index's folder, so an index cannot reach outside it
// ("../x", "/etc/x"); the Hub's indexes always use plain names.

}  // namespace

WeightStore WeightStore::open_file(const std::filesystem::path& file) {
  if (ends_with(file.filename().string(), ".json")) return open_index(file);
  auto state = std::make_shared<State>();
  state->path = file;
  state->files.push_back(SafetensorsFile::open(file));
  for (const auto& t : state->files[0].tensors()) state->entries.emplace(t.name, Entry{t, 0, t.name});
  return WeightStore(std::move(state));
}

WeightStore WeightStore::open_index(const std::filesystem::path& index_file) {
  const nlohmann::json index = read_json_file(index_file);
  LTXMPS_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
               "sharded index ", index_file.string(), " has no 'weight_map' object");
  const auto dir = index_file.parent_path();
  auto state = std::make_shared<State>();
  state->path = index_file;
  std::map<std::string, size_t> shard_index;  // shard file name -> index into files
  for (const auto& [name, shard_json] : index["weight_map"].items()) {
    LTXMPS_CHECK(shard_json.is_string(), "sharded index ", index_file.string(), " maps tensor '", name, "' to ",
                 detail::describe_json(shard_json), ", expected a shard file name");
    const auto& shard = shard_json.get_ref<const std::string&>();
    LTXMPS_CHECK(is_plain_file_name(shard), "sharded index ", index_file.string(), " maps tensor '", name,
                 "' to shard '", shard, "', which is not a plain file name in the index's folder");
    auto it = shard_index.find(shard);
    if (it == shard_index.end()) {
      const auto shard_path = dir / shard;
      LTXMPS_CHECK(std::filesystem::is_regular_file(shard_path), "shard ", shard_path.string(), " listed in ",
                   index_file.string(), " for tensor '", name, "' does not exist");
      state->files.push_back(SafetensorsFile::open(shard_path));
      it = shard_index.emplace(shard, state->files.size() - 1).first;
    }
    const auto& file = state->files[it->second];
    const TensorInfo* info = file.find(name);
    LTXMPS_CHECK(info != nullptr, "tensor '", name, "' is listed in ", index_file.string(), " for shard ",
                 file.path().string(), ", but that shard has no such tensor");
    state->entries.emplace(name, Entry{*info, it->second, name});
  }
  for (size_t i = 0; i < state->files.size(); ++i) {
    for (const auto& t : state->files[i].tensors()) {
      const auto it = state->entries.find(t.name);
      if (it == state->entries.end() || it->second.file != i)
        state->unlisted.push_back(c10::str(t.name, " (in shard ", state->files[i].path().string(), ")"));
    }
  }
  return WeightStore(std::move(state));
}

WeightStore WeightStore::open_component(const std::filesystem::path& dir, std::optional<std::string> variant,
                                        std::optional<std::string> stem) {
  LTXMPS_CHECK(std::filesystem::is_directory(dir), "component folder ", dir.string(), " does not exist or is not a folder");
  LTXMPS_CHECK(!variant || is_plain_file_name(*variant), "weight variant '", variant.value_or(""), "' is not a plain name");
  LTXMPS_CHECK(!stem || is_plain_file_name(*stem), "weight file stem '", stem.value_or(""), "' is not a plain name");
  const std::vector<std::string> stems =
      stem ? std::vector<std::string>{*stem} : std::vector<std::string>{"diffusion_pytorch_model", "model"};
  // Note [Weight file resolution]
  // A single file is preferred to an index when a folder has both (they should hold the same
  // weights). A requested variant is required: falling back to the full-precision file silently
  // would change memory use and numerics behind the caller's back.
  std::vector<std::string> candidates;
  for (const auto& s : stems) {
    if (variant) {
      candidates.push_back(s + "." + *variant + ".safetensors");
      candidates.push_back(s + ".safetensors.index." + *variant + ".json");
    } else {
      candidates.push_back(s + ".safetensors");
      candidates.push_back(s + ".safetensors.index.json");
    }
  }
  for (const auto& c : candidates)
    if (std::filesystem::is_regular_file(dir / c)) return open_file(dir / c);
  std::string looked;
  for (const auto& c : candidates) looked += (looked.empty() ? "" : ", ") + c;
  LTXMPS_CHECK(false, "no safetensors weights in ", dir.string(), variant ? " for variant '" + *variant + "'" : "",
               ": looked for ", looked);
  return WeightStore(nullptr);  // unreachable
}

std::optional<std::string> lightricks_transformer_key(std::string_view key) {
  if (starts_with(key, "vae.")) return std::nullopt;
  constexpr std::string_view kPrefix = "model.diffusion_model.";
  if (starts_with(key, kPrefix)) key.remove_prefix(kPrefix.size());
  // diffusers renames by substring; we rename whole dot-separated parts, which gives the same names
  // for every LTX key and cannot touch a longer part that merely contains an old name.
  static const std::pair<std::string_view, std::string_view> kRenames[] = {
      {"patchify_proj", "proj_in"}, {"adaln_single", "time_embed"}, {"q_norm", "norm_q"}, {"k_norm", "norm_k"}};
  std::string out;
  size_t start = 0;
  while (start <= key.size()) {
    const size_t dot = std::min(key.find('.', start), key.size());
    std::string_view part = key.substr(start, dot - start);
    for (const auto& [from, to] : kRenames)
      if (part == from) part = to;
    out.append(part);
    if (dot < key.size()) out.push_back('.');
    start = dot + 1;
  }
  return out;
}

WeightStore WeightStore::open_renamed(const WeightStore& original,
                                      const std::function<std::optional<std::string>(std::string_view)>& rename,
                                      const char* component) {
  auto state = std::make_shared<State>();
  state->path = original.state_->path;
  state->files = original.state_->files;
  state->unlisted = original.state_->unlisted;
  for (const auto& [stored, entry] : original.state_->entries) {
    const auto name = rename(stored);
    if (!name) continue;
    Entry renamed = entry;
    renamed.info.name = *name;
    const auto [it, inserted] = state->entries.emplace(*name, std::move(renamed));
    LTXMPS_CHECK(inserted, "keys '", it->second.stored_name, "' and '", stored, "' in ", state->path.string(),
                 " both map to ", component, " key '", *name, "'");
  }
  return WeightStore(std::move(state));
}

WeightStore WeightStore::open_lightricks_transformer(const std::filesystem::path& file) {
  return open_renamed(open_file(file), lightricks_transformer_key, "transformer");
}

WeightStore WeightStore::open_lightricks_vae(const std::filesystem::path& file) {
  const WeightStore original = open_file(file);
  const auto info = inspect_lightricks_checkpoint(original);
  LTXMPS_CHECK(info.has_vae, file.string(), ": no VAE in this Lightricks single file (no 'vae.encoder.conv_in.conv.bias'",
               "; it is a ", info.model_type, " transformer-only file)");
  const auto layout = info.vae_layout;
  return open_renamed(original, [layout](std::string_view key) { return lightricks_vae_key(key, layout); }, "VAE");
}

namespace {

using Renames = std::vector<std::pair<std::string, std::string>>;

/// Python's dict.update on an ordered table: existing keys keep their place and take the new value, new keys
/// go to the end (the order the substring replacements then run in).
void update_renames(Renames& table, const Renames& update) {
  for (const auto& [from, to] : update) {
    auto it = std::find_if(table.begin(), table.end(), [&](const auto& p) { return p.first == from; });
    if (it != table.end()) it->second = to;
    else table.emplace_back(from, to);
  }
}

/// convert_ltx_vae_checkpoint_to_diffusers' VAE_KEYS_RENAME_DICT, updated with the layout's table.
Renames vae_renames(LightricksVaeLayout layout) {
  Renames table = {
      {"vae.", ""},
      {"up_blocks.0", "mid_block"}, {"up_blocks.1", "up_blocks.0"}, {"up_blocks.2", "up_blocks.1.upsamplers.0"},
      {"up_blocks.3", "up_blocks.1"}, {"up_blocks.4", "up_blocks.2.conv_in"},
      {"up_blocks.5", "up_blocks.2.upsamplers.0"}, {"up_blocks.6", "up_blocks.2"},
      {"up_blocks.7", "up_blocks.3.conv_in"}, {"up_blocks.8", "up_blocks.3.upsamplers.0"},
      {"up_blocks.9", "up_blocks.3"},
      {"down_blocks.0", "down_blocks.0"}, {"down_blocks.1", "down_blocks.0.downsamplers.0"},
      {"down_blocks.2", "down_blocks.0.conv_out"}, {"down_blocks.3", "down_blocks.1"},
      {"down_blocks.4", "down_blocks.1.downsamplers.0"}, {"down_blocks.5", "down_blocks.1.conv_out"},
      {"down_blocks.6", "down_blocks.2"}, {"down_blocks.7", "down_blocks.2.downsamplers.0"},
      {"down_blocks.8", "down_blocks.3"}, {"down_blocks.9", "mid_block"},
      {"conv_shortcut", "conv_shortcut.conv"}, {"res_blocks", "resnets"}, {"norm3.norm", "norm3"},
      {"per_channel_statistics.mean-of-means", "latents_mean"},
      {"per_channel_statistics.std-of-means", "latents_std"}};
  const Renames decoder_09x = {
      {"up_blocks.0", "mid_block"}, {"up_blocks.1", "up_blocks.0.upsamplers.0"}, {"up_blocks.2", "up_blocks.0"},
      {"up_blocks.3", "up_blocks.1.upsamplers.0"}, {"up_blocks.4", "up_blocks.1"},
      {"up_blocks.5", "up_blocks.2.upsamplers.0"}, {"up_blocks.6", "up_blocks.2"},
      {"up_blocks.7", "up_blocks.3.upsamplers.0"}, {"up_blocks.8", "up_blocks.3"}};
  const Renames common_09x = {{"last_time_embedder", "time_embedder"},
                              {"last_scale_shift_table", "scale_shift_table"}};
  if (layout == LightricksVaeLayout::v090) return table;
  Renames update = decoder_09x;
  if (layout == LightricksVaeLayout::v095)
    update_renames(update, {{"down_blocks.0", "down_blocks.0"}, {"down_blocks.1", "down_blocks.0.downsamplers.0"},
                            {"down_blocks.2", "down_blocks.1"}, {"down_blocks.3", "down_blocks.1.downsamplers.0"},
                            {"down_blocks.4", "down_blocks.2"}, {"down_blocks.5", "down_blocks.2.downsamplers.0"},
                            {"down_blocks.6", "down_blocks.3"}, {"down_blocks.7", "down_blocks.3.downsamplers.0"},
                            {"down_blocks.8", "mid_block"}});
  update_renames(update, common_09x);
  update_renames(table, update);
  return table;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
}

}  // namespace

std::optional<std::string> lightricks_vae_key(std::string_view key, LightricksVaeLayout layout) {
  if (key.find("vae.") == std::string_view::npos) return std::nullopt;
  static const Renames tables[] = {vae_renames(LightricksVaeLayout::v090), vae_renames(LightricksVaeLayout::v091),
                                   vae_renames(LightricksVaeLayout::v095)};
  std::string out(key);
  for (const auto& [from, to] : tables[static_cast<int>(layout)]) replace_all(out, from, to);
  // VAE_SPECIAL_KEYS_REMAP: removed after the renames (mean-of-means has become latents_mean by then).
  for (const char* dropped : {"per_channel_statistics.channel", "per_channel_statistics.mean-of-means",
                              "per_channel_statistics.mean-of-stds"})
    if (out.find(dropped) != std::string::npos) return std::nullopt;
  return out;
}

LightricksCheckpointInfo inspect_lightricks_checkpoint(const WeightStore& original) {
  static const char* const kMarkers[] = {
      "model.diffusion_model.patchify_proj.weight", "model.diffusion_model.transformer_blocks.27.scale_shift_table",
      "patchify_proj.weight", "transformer_blocks.27.scale_shift_table", "vae.decoder.last_scale_shift_table",
      "vae.decoder.up_blocks.9.res_blocks.0.conv1.conv.weight"};
  const bool ltx = std::any_of(std::begin(kMarkers), std::end(kMarkers),
                               [&](const char* k) { return original.contains(k); });
  LTXMPS_CHECK(ltx, original.path().string(), ": not an LTX-Video single file (none of diffusers' marker keys, e.g. "
               "'model.diffusion_model.patchify_proj.weight' or 'vae.decoder.last_scale_shift_table')");
  LightricksCheckpointInfo info;
  info.has_vae = original.contains("vae.encoder.conv_in.conv.bias");
  constexpr const char* kConvOut = "vae.encoder.conv_out.conv.weight";
  const bool wide_conv_out = original.contains(kConvOut) && original.info(kConvOut).shape.size() >= 2 &&
                             original.info(kConvOut).shape[1] == 2048;
  const bool time_embedder = original.contains("vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight");
  const auto names = original.names();
  const bool block_47 = std::any_of(names.begin(), names.end(), [](const std::string& n) {
    return ends_with(n, "transformer_blocks.47.scale_shift_table");
  });
  if (block_47) info.model_type = "ltx-video-0.9.7", info.reference_config = "Lightricks/LTX-Video-0.9.7-dev";
  else if (info.has_vae && wide_conv_out) info.model_type = "ltx-video-0.9.5", info.reference_config = "Lightricks/LTX-Video-0.9.5";
  else if (time_embedder) info.model_type = "ltx-video-0.9.1", info.reference_config = "diffusers/LTX-Video-0.9.1";
  else info.model_type = "ltx-video", info.reference_config = "diffusers/LTX-Video-0.9.0";
  if (info.has_vae) {
    // diffusers reads this tensor unconditionally when it converts the VAE.
    LTXMPS_CHECK(original.contains(kConvOut), original.path().string(), ": has VAE keys but no '", kConvOut, "'");
    info.vae_layout = wide_conv_out ? LightricksVaeLayout::v095
                      : time_embedder ? LightricksVaeLayout::v091
                                      : LightricksVaeLayout::v090;
  }
  return info;
}

const std::filesystem::path& WeightStore::path() const { return state_->path; }

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(state_->entries.size());
  for (const auto& [name, entry] : state_->entries) out.push_back(name);
  return out;
}

bool WeightStore::contains(std::string_view name) const { return state_->entries.count(name) != 0; }

const WeightStore::Entry& WeightStore::entry(std::string_view name) const {
  const auto it = state_->entries.find(name);
  LTXMPS_CHECK(it != state_->entries.end(), "missing tensor '", name, "' in ", state_->path.string());
  return it->second;
}

const TensorInfo& WeightStore::info(std::string_view name) const { return entry(name).info; }

const std::filesystem::path& WeightStore::file_of(std::string_view name) const {
  return state_->files[entry(name).file].path();
}

at::Tensor WeightStore::load(std::string_view name, const at::TensorOptions& options) const {
  const auto& e = entry(name);
  return state_->files[e.file].load(e.stored_name, options);
}

const std::vector<std::string>& WeightStore::unlisted() const { return state_->unlisted; }

// ---------------------------------------------------------------------------------------------
// StrictLoader

StrictLoader::StrictLoader(const WeightStore& store, at::TensorOptions options, std::string prefix)
    : store_(store), options_(options), prefix_(std::move(prefix)), check_finite_(weight_check_enabled()) {}

at::Tensor StrictLoader::take(const std::string& name, std::vector<int64_t> expected_shape) {
  return take_as(name, expected_shape, std::nullopt);
}

at::Tensor StrictLoader::take(const std::string& name, std::vector<int64_t> expected_shape, at::ScalarType dtype_override) {
  return take_as(name, expected_shape, dtype_override);
}

at::Tensor StrictLoader::take_as(const std::string& name, const std::vector<int64_t>& expected_shape,
                                 std::optional<at::ScalarType> dtype) {
  const std::string full = prefix_ + name;
  LTXMPS_CHECK(store_.contains(full), "missing tensor '", full, "' in ", store_.path().string());
  const TensorInfo& info = store_.info(full);
  const auto& file = store_.file_of(full);
  LTXMPS_CHECK(info.shape == expected_shape, "tensor '", full, "' in ", file.string(), " has shape ",
               c10::IntArrayRef(info.shape), ", expected ", c10::IntArrayRef(expected_shape));
  const at::ScalarType target =
      dtype ? *dtype : options_.has_dtype() ? c10::typeMetaToScalarType(options_.dtype()) : info.dtype;
  // Note [Stored dtypes]
  // Float weights must be stored as F32, F16 or BF16: an F64 checkpoint is a conversion mistake that
  // would double the file's memory traffic, and the precision policy, not the loader, decides how
  // such files are handled. Integer and bool tensors (ids, masks) must match exactly: converting
  // them would hide a wrong binding.
  if (c10::isFloatingType(target)) {
    LTXMPS_CHECK(info.dtype == at::kFloat || info.dtype == at::kHalf || info.dtype == at::kBFloat16, "tensor '", full,
                 "' in ", file.string(), " is stored as ", safetensors_dtype_name(info.dtype),
                 ", expected a float weight stored as F32, F16 or BF16");
  } else {
    LTXMPS_CHECK(info.dtype == target, "tensor '", full, "' in ", file.string(), " is stored as ",
                 safetensors_dtype_name(info.dtype), ", expected ", safetensors_dtype_name(target));
  }
  at::Tensor out = store_.load(
      full, at::TensorOptions().dtype(target).device(options_.device()).pinned_memory(options_.pinned_memory()));
  if (check_finite_ && !all_finite(out)) {
    // Note [Weight check]: stored values, or an overflow of the conversion to the run dtype.
    const auto stored = info.dtype == target ? out : store_.load(full);
    const auto where = c10::str("weight '", full, "' in ", file.string());
    try {
      require_finite(stored, where);
      require_finite(out, c10::str(where, " (finite as stored in ", safetensors_dtype_name(info.dtype),
                                   ", but not once converted to ", target, ": run in a wider precision)"));
    } catch (const Error& e) {
      throw Error(c10::str(e.what(), "; the checkpoint cannot produce a usable result (--skip-weight-check loads it "
                                     "anyway)"));
    }
  }
  used_.insert(full);
  return out;
}

bool StrictLoader::has(const std::string& name) const { return store_.contains(prefix_ + name); }

void StrictLoader::skip(const std::string& name) {
  if (has(name)) used_.insert(prefix_ + name);
}

void StrictLoader::finish() const {
  std::vector<std::string> unexpected;
  for (const auto& name : store_.names())
    if (starts_with(name, prefix_) && used_.count(name) == 0) unexpected.push_back(name);
  for (const auto& name : store_.unlisted())
    if (starts_with(name, prefix_)) unexpected.push_back(name);
  if (unexpected.empty()) return;
  constexpr size_t kShown = 20;
  std::string list;
  for (size_t i = 0; i < std::min(unexpected.size(), kShown); ++i) list += (i ? ", " : "") + unexpected[i];
  if (unexpected.size() > kShown) list += c10::str(", ... (", unexpected.size(), " in all)");
  LTXMPS_CHECK(false, "unexpected keys: ", list, " in ", store_.path().string());
}

}  // namespace ltxmps::pipeline
