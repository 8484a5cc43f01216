// LTXLatentUpsamplerModel, following diffusers 0.42.1 pipelines/ltx/modeling_latent_upsampler.py, and its
// loader for diffusers folders and Lightricks single files.

#include "ltxmps_pipeline/latent_upsampler.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"

#include "ltxmps/error.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <set>

namespace ltxmps::pipeline {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------
// Config

LatentUpsamplerConfig LatentUpsamplerConfig::from_json(const nlohmann::json& json, const std::string& source) {
  LTXMPS_CHECK(json.is_object(), source, ": expected a JSON object, got ", json.type_name());
  LatentUpsamplerConfig c;
  for (const auto& [key, value] : json.items()) {
    if (!key.empty() && key[0] == '_') {
      if (key == "_class_name") {
        const auto name = config_field<std::string>(value, key, source);
        LTXMPS_CHECK(name == "LTXLatentUpsamplerModel", source, ": _class_name is '", name,
                     "', expected 'LTXLatentUpsamplerModel'");
      }
      continue;  // _diffusers_version, _name_or_path, ...: metadata
    }
    if (key == "in_channels") c.in_channels = config_field<int64_t>(value, key, source);
    else if (key == "mid_channels") c.mid_channels = config_field<int64_t>(value, key, source);
    else if (key == "num_blocks_per_stage") c.num_blocks_per_stage = config_field<int64_t>(value, key, source);
    else if (key == "dims") c.dims = config_field<int64_t>(value, key, source);
    else if (key == "spatial_upsample") c.spatial_upsample = config_field<bool>(value, key, source);
    else if (key == "temporal_upsample") c.temporal_upsample = config_field<bool>(value, key, source);
    else LTXMPS_CHECK(false, source, ": unknown LTXLatentUpsamplerModel config field '", key, "'");
  }
  return c;
}

LatentUpsamplerConfig LatentUpsamplerConfig::from_file(const fs::path& path) {
  return from_json(read_json_file(path), path.string());
}

void LatentUpsamplerConfig::validate(const std::string& source) const {
  check_config_range(source, "in_channels", in_channels, 1, kMaxConfigChannels);
  check_config_range(source, "mid_channels", mid_channels, 32, kMaxConfigChannels);
  LTXMPS_CHECK(mid_channels % 32 == 0, source, ": mid_channels = ", mid_channels,
               " must be a multiple of 32 (the res blocks normalize with GroupNorm(32, mid_channels))");
  check_config_range(source, "num_blocks_per_stage", num_blocks_per_stage, 0, kMaxConfigLayers);
  LTXMPS_CHECK(dims == 2 || dims == 3, source, ": dims = ", dims, " is not supported (expected 2 or 3)");
  LTXMPS_CHECK(spatial_upsample || temporal_upsample, source,
               ": either spatial_upsample or temporal_upsample must be true");
  // With dims = 2 diffusers flattens frames into the batch before the upsampler, and the Conv3d that temporal
  // upsampling builds then fails on the 4-D activations: no such checkpoint can run.
  LTXMPS_CHECK(dims == 3 || !temporal_upsample, source,
               ": temporal_upsample needs dims = 3 (with dims = 2 the frames are folded into the batch)");
}

// ---------------------------------------------------------------------------------------------------
// Weights

namespace {

std::vector<int64_t> conv_shape(int64_t out, int64_t in, int64_t dims) {
  return dims == 2 ? std::vector<int64_t>{out, in, 3, 3} : std::vector<int64_t>{out, in, 3, 3, 3};
}

// The upsampler conv: Conv2d for spatial-only upsampling (applied frame by frame even with dims = 3), Conv3d
// otherwise, with 2^(number of doubled axes) times mid_channels outputs for the pixel shuffle.
std::vector<int64_t> upsampler_shape(const LatentUpsamplerConfig& c) {
  const int64_t m = c.mid_channels;
  if (c.spatial_upsample && c.temporal_upsample) return conv_shape(8 * m, m, 3);
  if (c.spatial_upsample) return conv_shape(4 * m, m, 2);
  return conv_shape(2 * m, m, 3);
}

struct LayerBuilder {
  const LatentUpsamplerWeightSource& weights;
  at::TensorOptions options;

  at::Tensor tensor(const std::string& name, const std::vector<int64_t>& shape) const {
    auto t = weights(name, shape);
    LTXMPS_CHECK(t.defined() && t.sizes() == at::IntArrayRef(shape), "latent upsampler weight '", name,
                 "' has shape ", t.defined() ? t.sizes() : at::IntArrayRef{}, ", expected ", at::IntArrayRef(shape));
    return t.to(options);
  }
  LatentUpsamplerLayer conv(const std::string& name, const std::vector<int64_t>& shape) const {
    return {tensor(name + ".weight", shape), tensor(name + ".bias", {shape.at(0)})};
  }
  LatentUpsamplerLayer norm(const std::string& name, int64_t channels) const {
    return {tensor(name + ".weight", {channels}), tensor(name + ".bias", {channels})};
  }
  std::vector<LatentUpsamplerResBlockWeights> blocks(const std::string& prefix, const LatentUpsamplerConfig& c) const {
    std::vector<LatentUpsamplerResBlockWeights> out;
    const auto shape = conv_shape(c.mid_channels, c.mid_channels, c.dims);
    for (int64_t i = 0; i < c.num_blocks_per_stage; ++i) {
      const auto p = prefix + "." + std::to_string(i) + ".";
      out.push_back({conv(p + "conv1", shape), norm(p + "norm1", c.mid_channels), conv(p + "conv2", shape),
                     norm(p + "norm2", c.mid_channels)});
    }
    return out;
  }
};

}  // namespace

LatentUpsamplerModel LatentUpsamplerModel::from_weights(const LatentUpsamplerConfig& config,
                                                        const LatentUpsamplerRuntime& runtime,
                                                        const LatentUpsamplerWeightSource& weights) {
  config.validate();
  LatentUpsamplerModel m;
  m.config = config;
  m.runtime = runtime;
  const LayerBuilder b{weights, at::TensorOptions().device(runtime.device).dtype(runtime.dtype)};
  m.initial_conv = b.conv("initial_conv", conv_shape(config.mid_channels, config.in_channels, config.dims));
  m.initial_norm = b.norm("initial_norm", config.mid_channels);
  m.res_blocks = b.blocks("res_blocks", config);
  m.upsampler_0 = b.conv("upsampler.0", upsampler_shape(config));
  m.post_upsample_res_blocks = b.blocks("post_upsample_res_blocks", config);
  m.final_conv = b.conv("final_conv", conv_shape(config.in_channels, config.mid_channels, config.dims));
  return m;
}

// ---------------------------------------------------------------------------------------------------
// Forward

namespace {

// torch.nn.GroupNorm's default eps.
constexpr double kGroupNormEps = 1e-5;

// Conv2d / Conv3d with kernel 3, padding 1 (zero padding in time too: the upsampler is not causal), chosen by
// the weight's rank.
at::Tensor conv(const LatentUpsamplerLayer& l, const at::Tensor& x) {
  if (l.weight.dim() == 4) return at::conv2d(x, l.weight, l.bias, 1, 1);
  return at::conv3d(x, l.weight, l.bias, 1, 1);
}

at::Tensor group_norm(const LatentUpsamplerLayer& l, const at::Tensor& x) {
  return at::group_norm(x, 32, l.weight, l.bias, kGroupNormEps);
}

at::Tensor res_block(const LatentUpsamplerResBlockWeights& b, const at::Tensor& x) {
  // SiLU in place on fresh results (Note [VAE activation lifetimes] in vae.cpp).
  at::Tensor h = group_norm(b.norm1, conv(b.conv1, x));
  at::silu_(h);
  h = group_norm(b.norm2, conv(b.conv2, h));
  h.add_(x);
  return at::silu_(h);
}

// PixelShuffleND with factors 2: `axes` trailing axes (1: time; 2: H, W; 3: time, H, W) grow twice, taking
// their factors from channel groups `c (p1 [p2 [p3]])` in that order.
at::Tensor pixel_shuffle_nd(const at::Tensor& x, int64_t axes) {
  if (axes == 3)
    return x.unflatten(1, {-1, 2, 2, 2}).permute({0, 1, 5, 2, 6, 3, 7, 4}).flatten(6, 7).flatten(4, 5).flatten(2, 3);
  if (axes == 2) return x.unflatten(1, {-1, 2, 2}).permute({0, 1, 4, 2, 5, 3}).flatten(4, 5).flatten(2, 3);
  return x.unflatten(1, {-1, 2}).permute({0, 1, 3, 2, 4, 5}).flatten(2, 3);
}

// [B, C, F, H, W] <-> [B·F, C, H, W] (the frame-by-frame layout of the 2-D convolutions).
at::Tensor frames_to_batch(const at::Tensor& x) { return x.permute({0, 2, 1, 3, 4}).flatten(0, 1); }
at::Tensor batch_to_frames(const at::Tensor& x, int64_t batch) {
  return x.unflatten(0, {batch, -1}).permute({0, 2, 1, 3, 4});
}

}  // namespace

at::Tensor LatentUpsamplerModel::forward(const at::Tensor& latents) const {
  const auto& c = config;
  LTXMPS_CHECK(latents.defined() && latents.dim() == 5, "latent upsampler: expected latents [B, C, F, H, W], got ",
               latents.defined() ? latents.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(at::isFloatingType(latents.scalar_type()), "latent upsampler: latents must be floating point, got ",
               latents.scalar_type());
  LTXMPS_CHECK(latents.size(1) == c.in_channels, "latent upsampler: latents have ", latents.size(1),
               " channels, the upsampler's in_channels is ", c.in_channels);
  LTXMPS_CHECK(latents.numel() > 0, "latent upsampler: latents ", latents.sizes(), " are empty");
  const int64_t batch = latents.size(0);
  auto h = latents.to(runtime.device, runtime.dtype);
  if (c.dims == 2) h = frames_to_batch(h);
  h = group_norm(initial_norm, conv(initial_conv, h));
  at::silu_(h);
  for (const auto& b : res_blocks) h = res_block(b, h);
  if (c.dims == 2) {
    h = pixel_shuffle_nd(conv(upsampler_0, h), 2);
  } else if (c.temporal_upsample) {
    // The first latent frame encodes one pixel frame (causal VAE): of its two copies only the second is kept.
    h = pixel_shuffle_nd(conv(upsampler_0, h), c.spatial_upsample ? 3 : 1);
    h = h.slice(2, 1);
  } else {
    h = batch_to_frames(pixel_shuffle_nd(conv(upsampler_0, frames_to_batch(h)), 2), batch);
  }
  for (const auto& b : post_upsample_res_blocks) h = res_block(b, h);
  h = conv(final_conv, h);
  if (c.dims == 2) h = batch_to_frames(h, batch);
  return h;
}

// ---------------------------------------------------------------------------------------------------
// Loading

namespace {

std::vector<int64_t> stored_shape(const WeightStore& store, const std::string& name) {
  LTXMPS_CHECK(store.contains(name), store.path().string(), ": missing tensor '", name,
               "' (needed to read the latent upsampler's config off the tensor shapes)");
  return store.info(name).shape;
}

// Note [Lightricks upsampler config]
// Lightricks' own LatentUpsampler stores its constructor arguments as JSON in the safetensors metadata entry
// "config", with the diffusers field names and `_class_name` "LatentUpsampler"; later versions of that class
// add `spatial_scale` and `rational_resampler` for rational (e.g. 1.5x) resampling, which diffusers'
// LTXLatentUpsamplerModel does not have. Those two are accepted only with the values that mean the plain 2x
// pixel shuffle. A file without the entry (e.g. a bare save_file of the state dict) gets its config from the
// tensor shapes, which determine every field.
LatentUpsamplerConfig config_from_metadata(const std::string& text, const fs::path& file) {
  const auto source = file.string() + " (metadata 'config')";
  auto json = detail::parse_json_strict(text, file, "the metadata 'config' of");
  LTXMPS_CHECK(json.is_object(), source, ": expected a JSON object, got ", json.type_name());
  if (json.contains("_class_name")) {
    const auto name = config_field<std::string>(json.at("_class_name"), "_class_name", source);
    LTXMPS_CHECK(name == "LatentUpsampler" || name == "LTXLatentUpsamplerModel", source, ": _class_name is '", name,
                 "', expected 'LatentUpsampler' (Lightricks) or 'LTXLatentUpsamplerModel'");
    json.erase("_class_name");
  }
  if (json.contains("rational_resampler")) {
    LTXMPS_CHECK(!config_field<bool>(json.at("rational_resampler"), "rational_resampler", source), source,
                 ": rational_resampler = true is not supported (diffusers' LTXLatentUpsamplerModel has only the 2x "
                 "pixel-shuffle upsampler)");
    json.erase("rational_resampler");
  }
  if (json.contains("spatial_scale")) {
    const auto scale = config_field<double>(json.at("spatial_scale"), "spatial_scale", source);
    LTXMPS_CHECK(scale == 2.0, source, ": spatial_scale = ", scale,
                 " is not supported (diffusers' LTXLatentUpsamplerModel upsamples by 2)");
    json.erase("spatial_scale");
  }
  return LatentUpsamplerConfig::from_json(json, source);
}

LatentUpsamplerConfig config_from_shapes(const WeightStore& store) {
  const auto& file = store.path().string();
  LatentUpsamplerConfig c;
  const auto initial = stored_shape(store, "initial_conv.weight");  // [mid, in, 3, 3(, 3)]
  LTXMPS_CHECK(initial.size() == 4 || initial.size() == 5, file, ": initial_conv.weight has shape ",
               at::IntArrayRef(initial), ", expected a Conv2d or Conv3d weight");
  c.dims = static_cast<int64_t>(initial.size()) - 2;
  c.mid_channels = initial[0];
  c.in_channels = initial[1];
  std::set<int64_t> blocks;
  const std::string prefix = "res_blocks.";
  for (const auto& name : store.names()) {
    if (name.rfind(prefix, 0) != 0) continue;
    const auto rest = name.substr(prefix.size());
    const auto dot = rest.find('.');
    LTXMPS_CHECK(dot != std::string::npos && dot > 0 && rest.find_first_not_of("0123456789") == dot, file,
                 ": tensor '", name, "' is not named res_blocks.<index>.<layer>");
    blocks.insert(std::stoll(rest.substr(0, dot)));
  }
  c.num_blocks_per_stage = static_cast<int64_t>(blocks.size());
  const auto up = stored_shape(store, "upsampler.0.weight");
  const int64_t m = c.mid_channels;
  if (up.size() == 4 && up[0] == 4 * m) {
    c.spatial_upsample = true, c.temporal_upsample = false;
  } else if (up.size() == 5 && up[0] == 8 * m) {
    c.spatial_upsample = true, c.temporal_upsample = true;
  } else if (up.size() == 5 && up[0] == 2 * m) {
    c.spatial_upsample = false, c.temporal_upsample = true;
  } else {
    LTXMPS_CHECK(false, file, ": upsampler.0.weight has shape ", at::IntArrayRef(up), ", expected [", 4 * m, ", ", m,
                 ", 3, 3] (spatial), [", 2 * m, ", ", m, ", 3, 3, 3] (temporal) or [", 8 * m, ", ", m,
                 ", 3, 3, 3] (both) for mid_channels ", m);
  }
  return c;
}

LatentUpsamplerModel load_from_store(const WeightStore& store, const LatentUpsamplerConfig& config,
                                     const std::string& config_source, const LatentUpsamplerRuntime& runtime) {
  config.validate(config_source);
  return load_strict<LatentUpsamplerModel>(store, config, runtime);
}

}  // namespace

LatentUpsamplerConfig lightricks_latent_upsampler_config(const fs::path& file) {
  const auto safetensors = SafetensorsFile::open(file);
  const auto& metadata = safetensors.metadata();
  const auto entry = metadata.find("config");
  if (entry != metadata.end()) return config_from_metadata(entry->second, file);
  return config_from_shapes(WeightStore::open_file(file));
}

LatentUpsamplerModel load_latent_upsampler(const fs::path& folder_or_file, const LatentUpsamplerRuntime& runtime) {
  std::error_code ec;
  if (fs::is_directory(folder_or_file, ec)) {
    const auto config_file = folder_or_file / "config.json";
    LTXMPS_CHECK(fs::is_regular_file(config_file, ec), "latent upsampler folder ", folder_or_file.string(),
                 " has no config.json (expected a diffusers LTXLatentUpsamplerModel folder)");
    const auto config = LatentUpsamplerConfig::from_file(config_file);
    return load_from_store(WeightStore::open_component(folder_or_file), config, config_file.string(), runtime);
  }
  LTXMPS_CHECK(fs::is_regular_file(folder_or_file, ec), "latent upsampler ", folder_or_file.string(),
               " is neither a folder nor a file (expected a diffusers LTXLatentUpsamplerModel folder or a "
               "Lightricks ltxv-spatial-upscaler-*.safetensors file)");
  LTXMPS_CHECK(folder_or_file.extension() == ".safetensors", "latent upsampler ", folder_or_file.string(),
               " is not a .safetensors file");
  const auto config = lightricks_latent_upsampler_config(folder_or_file);
  return load_from_store(WeightStore::open_file(folder_or_file), config, folder_or_file.string(), runtime);
}

}  // namespace ltxmps::pipeline
