// VaeConfig: AutoencoderKLLTXVideo's config.json (diffusers 0.42.1 models/autoencoders/autoencoder_kl_ltx.py),
// parsed and checked against what LTXVideoEncoder3d / LTXVideoDecoder3d can build; the tiling options.

#include "ltxmps_pipeline/vae.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"

#include "ltxmps/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <utility>

namespace ltxmps::pipeline {

namespace {

// diffusers stores the per-block tuples as JSON lists; a scalar is not accepted by the constructor either.
template <typename T>
std::vector<T> json_list(const nlohmann::json& value, const std::string& key, const std::string& source) {
  LTXMPS_CHECK(value.is_array(), source, ": field '", key, "' must be a list, got ", value.type_name());
  std::vector<T> out;
  for (const auto& item : value) out.push_back(config_field<T>(item, key, source));
  return out;
}

std::optional<int64_t> json_optional_int(const nlohmann::json& value, const std::string& key, const std::string& source) {
  if (value.is_null()) return std::nullopt;
  return config_field<int64_t>(value, key, source);
}

int64_t count_true(const std::vector<bool>& v) { return std::count(v.begin(), v.end(), true); }

// patch · 2^scalings, checked (Note [Config bounds]): a config built in code may skip validate().
int64_t compression(int64_t patch, int64_t scalings, const char* what) {
  const bool ok = patch >= 1 && patch <= kMaxConfigCompression && scalings < 17 &&
                  (patch << scalings) <= kMaxConfigCompression;
  LTXMPS_CHECK(ok, "the ", what, " compression (patch size ", patch, " times 2^", scalings,
               " for the true spatio_temporal_scaling entries) is out of range (expected 1 to ", kMaxConfigCompression,
               ")");
  return patch << scalings;
}

void need_entries(const std::string& source, const char* name, size_t have, size_t want) {
  LTXMPS_CHECK(have >= want, source, ": ", name, " has ", have, " entries, the block structure needs ", want);
}

// Scalars and per-block sizes, bounded as Note [Config bounds] (checkpoint.hpp) explains.
void validate_sizes(const VaeConfig& c, const std::string& source) {
  const std::pair<const char*, int64_t> positive[] = {
      {"in_channels", c.in_channels}, {"out_channels", c.out_channels}, {"latent_channels", c.latent_channels}};
  for (const auto& [name, v] : positive) check_config_range(source, name, v, 1, kMaxConfigChannels);
  check_config_range(source, "patch_size", c.patch_size, 1, kMaxConfigPatch);
  check_config_range(source, "patch_size_t", c.patch_size_t, 1, kMaxConfigPatch);
  // Note [VAE patch_size_t]
  // LTXVideoEncoder3d sizes conv_in with in_channels · patch_size² (no patch_size_t) while its patchify
  // produces in_channels · patch_size_t · patch_size² channels, so diffusers only runs patch_size_t = 1.
  LTXMPS_CHECK(c.patch_size_t == 1, source, ": patch_size_t = ", c.patch_size_t,
               " is not supported (diffusers' LTX VAE sizes conv_in with in_channels * patch_size^2 and so only "
               "runs patch_size_t = 1)");
  LTXMPS_CHECK(c.resnet_norm_eps > 0.0 && std::isfinite(c.resnet_norm_eps), source,
               ": resnet_norm_eps must be > 0, got ", c.resnet_norm_eps);
  LTXMPS_CHECK(c.scaling_factor != 0.0 && std::isfinite(c.scaling_factor), source,
               ": scaling_factor must be finite and not 0");
  LTXMPS_CHECK(!c.block_out_channels.empty() && !c.down_block_types.empty(), source,
               ": block_out_channels and down_block_types must not be empty");
  for (auto v : c.block_out_channels) check_config_range(source, "block_out_channels[i]", v, 1, kMaxConfigChannels);
  for (auto v : c.decoder_block_out_channels)
    check_config_range(source, "decoder_block_out_channels[i]", v, 1, kMaxConfigChannels);
  for (auto v : c.layers_per_block) check_config_range(source, "layers_per_block[i]", v, 0, kMaxConfigLayers);
  for (auto v : c.decoder_layers_per_block)
    check_config_range(source, "decoder_layers_per_block[i]", v, 0, kMaxConfigLayers);
  for (auto v : c.upsample_factor) LTXMPS_CHECK(v > 0 && 8 % v == 0, source, ": upsample_factor must be 1, 2, 4 or 8");
}

// Encoder block `i` of type LTXVideo095DownBlock3D, mapping `in` to `out` channels.
void validate_095_down_block(const VaeConfig& c, const std::string& source, size_t i, int64_t in, int64_t out) {
  need_entries(source, "downsample_type", c.downsample_type.size(), i + 1);
  const auto& ds = c.downsample_type[i];
  LTXMPS_CHECK(ds == "conv" || ds == "spatial" || ds == "temporal" || ds == "spatiotemporal", source,
               ": downsample_type[", i, "] = '", ds, "' is unknown (conv, spatial, temporal, spatiotemporal)");
  const bool changes = c.spatio_temporal_scaling[i] && ds != "conv";
  LTXMPS_CHECK(changes || in == out, source, ": encoder block ", i, " (LTXVideo095DownBlock3D) maps ", in, " to ", out,
               " channels but only its spatial/temporal/spatiotemporal downsampler can change channels");
  if (changes) {
    const int64_t s = ds == "spatiotemporal" ? 8 : (ds == "spatial" ? 4 : 2);
    LTXMPS_CHECK(out % s == 0 && (in * s) % out == 0, source, ": encoder block ", i, ": downsampler ", in, " -> ", out,
                 " channels with stride product ", s, " is not a whole channel grouping");
  }
}

// LTXVideoEncoder3d.__init__.
void validate_encoder(const VaeConfig& c, const std::string& source) {
  const auto& boc = c.block_out_channels;
  const bool v095 = c.is_095_encoder();
  const size_t n_down = boc.size() - (v095 ? 1 : 0);
  LTXMPS_CHECK(n_down >= 1 || !v095, source, ": LTXVideo095DownBlock3D encoders need >= 2 block_out_channels");
  need_entries(source, "down_block_types", c.down_block_types.size(), n_down);
  need_entries(source, "spatio_temporal_scaling", c.spatio_temporal_scaling.size(), n_down);
  need_entries(source, "layers_per_block", c.layers_per_block.size(), std::max<size_t>(n_down, 1));
  int64_t out = boc[0];
  for (size_t i = 0; i < n_down; ++i) {
    const int64_t in = out;
    out = v095 ? boc[i + 1] : (i + 1 < n_down ? boc[i + 1] : boc[i]);
    const auto& type = c.down_block_types[i];
    LTXMPS_CHECK(type == "LTXVideoDownBlock3D" || type == "LTXVideo095DownBlock3D", source, ": down_block_types[", i,
                 "] = '", type, "' is unknown (LTXVideoDownBlock3D, LTXVideo095DownBlock3D)");
    if (type == "LTXVideo095DownBlock3D") validate_095_down_block(c, source, i, in, out);
  }
}

// LTXVideoDecoder3d.__init__ on the reversed tuples.
void validate_decoder(const VaeConfig& c, const std::string& source) {
  const auto& dboc = c.decoder_block_out_channels;
  const size_t m = dboc.size();
  LTXMPS_CHECK(m >= 1, source, ": decoder_block_out_channels must not be empty");
  need_entries(source, "decoder_layers_per_block", c.decoder_layers_per_block.size(), m + 1);
  need_entries(source, "decoder_spatio_temporal_scaling", c.decoder_spatio_temporal_scaling.size(), m);
  need_entries(source, "decoder_inject_noise", c.decoder_inject_noise.size(), m + 1);
  need_entries(source, "upsample_residual", c.upsample_residual.size(), m);
  need_entries(source, "upsample_factor", c.upsample_factor.size(), m);
  int64_t dec_out = dboc.back();
  for (size_t i = 0; i < m; ++i) {
    const int64_t u = c.upsample_factor[c.upsample_factor.size() - 1 - i];
    const int64_t boc = dboc[m - 1 - i];
    LTXMPS_CHECK(dec_out % u == 0 && boc % u == 0, source, ": decoder up block ", i, ": channels ", dec_out, " / ",
                 boc, " are not divisible by upsample_factor ", u);
    const int64_t in = dec_out / u;
    dec_out = boc / u;
    // Note [Up-block conv_in and timestep conditioning]
    // LTXVideoUpBlock3d.forward calls conv_in with the raw [B] timestep, which a timestep-conditioned
    // resnet cannot unflatten: diffusers fails on such a config, so it is rejected here.
    LTXMPS_CHECK(!(in != dec_out && c.timestep_conditioning), source, ": decoder up block ", i, " changes channels (",
                 in, " -> ", dec_out, ") with timestep_conditioning; diffusers cannot run that combination");
  }
}

void validate_compression(const VaeConfig& c, const std::string& source) {
  if (c.spatial_compression_ratio)
    check_config_range(source, "spatial_compression_ratio", *c.spatial_compression_ratio, 1, kMaxConfigCompression);
  if (c.temporal_compression_ratio)
    check_config_range(source, "temporal_compression_ratio", *c.temporal_compression_ratio, 1, kMaxConfigCompression);
  try {
    (void)c.spatial_compression();
    (void)c.temporal_compression();
  } catch (const Error& e) {
    throw Error(c10::str(source, ": ", e.what()));
  }
}

}  // namespace

bool VaeConfig::is_095_encoder() const { return down_block_types.back() == "LTXVideo095DownBlock3D"; }

int64_t VaeConfig::spatial_compression() const {
  return spatial_compression_ratio ? *spatial_compression_ratio
                                   : compression(patch_size, count_true(spatio_temporal_scaling), "spatial");
}

int64_t VaeConfig::temporal_compression() const {
  return temporal_compression_ratio ? *temporal_compression_ratio
                                    : compression(patch_size_t, count_true(spatio_temporal_scaling), "temporal");
}

VaeConfig VaeConfig::from_json(const nlohmann::json& json, const std::string& source) {
  LTXMPS_CHECK(json.is_object(), source, ": expected a JSON object, got ", json.type_name());
  VaeConfig c;
  for (const auto& [key, value] : json.items()) {
    if (!key.empty() && key[0] == '_') {
      if (key == "_class_name") {
        const auto name = config_field<std::string>(value, key, source);
        LTXMPS_CHECK(name == "AutoencoderKLLTXVideo", source, ": _class_name is '", name,
                     "', expected 'AutoencoderKLLTXVideo'");
      }
      continue;  // _diffusers_version, _name_or_path, ...: metadata
    }
    if (key == "in_channels") c.in_channels = config_field<int64_t>(value, key, source);
    else if (key == "out_channels") c.out_channels = config_field<int64_t>(value, key, source);
    else if (key == "latent_channels") c.latent_channels = config_field<int64_t>(value, key, source);
    else if (key == "block_out_channels") c.block_out_channels = json_list<int64_t>(value, key, source);
    else if (key == "down_block_types") c.down_block_types = json_list<std::string>(value, key, source);
    else if (key == "decoder_block_out_channels") c.decoder_block_out_channels = json_list<int64_t>(value, key, source);
    else if (key == "layers_per_block") c.layers_per_block = json_list<int64_t>(value, key, source);
    else if (key == "decoder_layers_per_block") c.decoder_layers_per_block = json_list<int64_t>(value, key, source);
    else if (key == "spatio_temporal_scaling") c.spatio_temporal_scaling = json_list<bool>(value, key, source);
    else if (key == "decoder_spatio_temporal_scaling")
      c.decoder_spatio_temporal_scaling = json_list<bool>(value, key, source);
    else if (key == "decoder_inject_noise") c.decoder_inject_noise = json_list<bool>(value, key, source);
    else if (key == "downsample_type") c.downsample_type = json_list<std::string>(value, key, source);
    else if (key == "upsample_residual") c.upsample_residual = json_list<bool>(value, key, source);
    else if (key == "upsample_factor") c.upsample_factor = json_list<int64_t>(value, key, source);
    else if (key == "timestep_conditioning") c.timestep_conditioning = config_field<bool>(value, key, source);
    else if (key == "patch_size") c.patch_size = config_field<int64_t>(value, key, source);
    else if (key == "patch_size_t") c.patch_size_t = config_field<int64_t>(value, key, source);
    else if (key == "resnet_norm_eps") c.resnet_norm_eps = config_field<double>(value, key, source);
    else if (key == "scaling_factor") c.scaling_factor = config_field<double>(value, key, source);
    else if (key == "encoder_causal") c.encoder_causal = config_field<bool>(value, key, source);
    else if (key == "decoder_causal") c.decoder_causal = config_field<bool>(value, key, source);
    else if (key == "spatial_compression_ratio") c.spatial_compression_ratio = json_optional_int(value, key, source);
    else if (key == "temporal_compression_ratio") c.temporal_compression_ratio = json_optional_int(value, key, source);
    else throw Error(c10::str(source, ": unknown field '", key, "' for AutoencoderKLLTXVideo"));
  }
  c.validate(source);
  return c;
}

VaeConfig VaeConfig::from_file(const std::filesystem::path& path) {
  return from_json(read_json_file(path), path.string());
}

void VaeConfig::validate(const std::string& source) const {
  validate_sizes(*this, source);
  validate_encoder(*this, source);
  validate_decoder(*this, source);
  validate_compression(*this, source);
}

// ---------------------------------------------------------------------------------------------------
// Tiling options

void VaeTiling::enable_tiling(std::optional<int64_t> min_height, std::optional<int64_t> min_width,
                              std::optional<int64_t> min_num_frames, std::optional<int64_t> stride_height,
                              std::optional<int64_t> stride_width, std::optional<int64_t> stride_num_frames) {
  use_tiling = true;
  tile_sample_min_height = min_height.value_or(tile_sample_min_height);
  tile_sample_min_width = min_width.value_or(tile_sample_min_width);
  tile_sample_min_num_frames = min_num_frames.value_or(tile_sample_min_num_frames);
  tile_sample_stride_height = stride_height.value_or(tile_sample_stride_height);
  tile_sample_stride_width = stride_width.value_or(tile_sample_stride_width);
  tile_sample_stride_num_frames = stride_num_frames.value_or(tile_sample_stride_num_frames);
}

void VaeTiling::validate() const {
  const std::pair<const char*, int64_t> sizes[] = {{"tile_sample_min_height", tile_sample_min_height},
                                                   {"tile_sample_min_width", tile_sample_min_width},
                                                   {"tile_sample_min_num_frames", tile_sample_min_num_frames},
                                                   {"tile_sample_stride_height", tile_sample_stride_height},
                                                   {"tile_sample_stride_width", tile_sample_stride_width},
                                                   {"tile_sample_stride_num_frames", tile_sample_stride_num_frames}};
  for (const auto& [name, v] : sizes) LTXMPS_CHECK(v > 0, "VAE tiling: ", name, " must be > 0, got ", v);
  LTXMPS_CHECK(tile_sample_stride_height <= tile_sample_min_height && tile_sample_stride_width <= tile_sample_min_width &&
                   tile_sample_stride_num_frames <= tile_sample_min_num_frames,
               "VAE tiling: a stride exceeds its tile size (tiles ", tile_sample_min_height, "x", tile_sample_min_width,
               "x", tile_sample_min_num_frames, ", strides ", tile_sample_stride_height, "x", tile_sample_stride_width,
               "x", tile_sample_stride_num_frames, ")");
}

}  // namespace ltxmps::pipeline
