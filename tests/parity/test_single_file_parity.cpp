// Original Lightricks single files (transformer "model.diffusion_model.*" and VAE "vae.*" in one file) against
// diffusers' from_single_file and the save_pretrained folders of the same weights (tests/parity/
// single_file_oracle.py writes the cases).

#include "catch_compat.hpp"
#include "parity_support.hpp"

#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace {

fs::path data_dir() { return ltxmps_test::parity_data_dir("single_file"); }

nlohmann::json find_case(const std::string& name) {
  for (const auto& c : read_json_file(data_dir() / "cases.json"))
    if (c.at("name") == name) return c;
  FAIL("no oracle case " << name);
  return {};
}

template <typename Model>
std::vector<at::Tensor> tensors_of(Model& model) {
  std::vector<at::Tensor> out;
  for_each_tensor(model, [&](at::Tensor& t) { out.push_back(t); });
  return out;
}

/// Every weight of `a` equals the one of `b` at the same place, bit for bit (same file values, same dtype).
template <typename Model>
void require_same_weights(Model& a, Model& b) {
  const auto ta = tensors_of(a), tb = tensors_of(b);
  REQUIRE(ta.size() == tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    REQUIRE(ta[i].defined() == tb[i].defined());
    if (ta[i].defined()) REQUIRE(at::equal(ta[i], tb[i]));
  }
}

LightricksVaeLayout layout_of(const std::string& name) {
  if (name == "v091") return LightricksVaeLayout::v091;
  if (name == "v095") return LightricksVaeLayout::v095;
  return LightricksVaeLayout::v090;
}

void check_case(const std::string& name) {
  const auto c = find_case(name);
  const auto folder = data_dir() / name;
  const auto file = folder / "lightricks.safetensors";
  INFO("case " << name);

  const auto info = inspect_lightricks_checkpoint(WeightStore::open_file(file));
  CHECK(info.model_type == c.at("model_type").get<std::string>());
  CHECK(info.has_vae);
  CHECK(info.vae_layout == layout_of(c.at("layout").get<std::string>()));

  const auto vae_config = VaeConfig::from_file(folder / "vae" / "config.json");
  auto single = load_lightricks_vae(file, {}, vae_config);
  auto pretrained = load_vae(folder / "vae", {});
  require_same_weights(single, pretrained);

  const auto ref = ltxmps_test::read_tensors(folder / "reference.safetensors");
  std::optional<at::Tensor> temb;
  if (ref.count("temb")) temb = ref.at("temb");
  const auto decoded = single.decode(ref.at("latents"), temb);
  const double bound = c.at("bound").get<double>();
  CHECK(bound == 1e-4);
  CHECK(ltxmps_test::scaled_error(decoded, ref.at("decoded")) <= bound);

  const auto transformer_config = TransformerConfig::from_file(folder / "transformer" / "config.json");
  auto single_transformer = load_lightricks_transformer(file, {}, transformer_config);
  auto pretrained_transformer = load_transformer(folder / "transformer", {});
  require_same_weights(single_transformer, pretrained_transformer);
}

}  // namespace

TEST_CASE("single file: 0.9.0 layout (base key table)", "[parity][single_file]") { check_case("v090"); }
TEST_CASE("single file: 0.9.1 layout (last_time_embedder)", "[parity][single_file]") { check_case("v091"); }
TEST_CASE("single file: 0.9.5 layout (encoder conv_out of 2048 channels)", "[parity][single_file]") {
  check_case("v095");
}

TEST_CASE("single file: key tables rename as diffusers' substring replacements", "[single_file]") {
  // Chained tables: up_blocks.2 becomes up_blocks.1.upsamplers.0 and must not be renamed again by up_blocks.1.
  CHECK(lightricks_vae_key("vae.decoder.up_blocks.2.conv.conv.weight", LightricksVaeLayout::v090) ==
        "decoder.up_blocks.1.upsamplers.0.conv.conv.weight");
  CHECK(lightricks_vae_key("vae.decoder.up_blocks.1.conv.conv.weight", LightricksVaeLayout::v095) ==
        "decoder.up_blocks.0.upsamplers.0.conv.conv.weight");
  CHECK(lightricks_vae_key("vae.encoder.down_blocks.8.res_blocks.0.norm3.norm.weight", LightricksVaeLayout::v095) ==
        "encoder.mid_block.resnets.0.norm3.weight");
  CHECK(lightricks_vae_key("vae.encoder.down_blocks.8.res_blocks.0.conv_shortcut.weight", LightricksVaeLayout::v090) ==
        "encoder.down_blocks.3.resnets.0.conv_shortcut.conv.weight");
  CHECK(lightricks_vae_key("vae.decoder.last_time_embedder.linear.weight", LightricksVaeLayout::v091) ==
        "decoder.time_embedder.linear.weight");
  CHECK(lightricks_vae_key("vae.per_channel_statistics.mean-of-means", LightricksVaeLayout::v095) == "latents_mean");
  CHECK(lightricks_vae_key("vae.per_channel_statistics.std-of-means", LightricksVaeLayout::v090) == "latents_std");
  CHECK_FALSE(lightricks_vae_key("vae.per_channel_statistics.mean-of-stds", LightricksVaeLayout::v090));
  CHECK_FALSE(lightricks_vae_key("vae.per_channel_statistics.channel", LightricksVaeLayout::v095));
  CHECK_FALSE(lightricks_vae_key("model.diffusion_model.proj_out.weight", LightricksVaeLayout::v090));
}

TEST_CASE("single file: a config of the wrong release is refused before any weight is read", "[parity][single_file]") {
  const auto file095 = data_dir() / "v095" / "lightricks.safetensors";
  const auto config090 = VaeConfig::from_file(data_dir() / "v090" / "vae" / "config.json");
  REQUIRE_THROWS_WITH(load_lightricks_vae(file095, {}, config090),
                      ltxmps_test::ContainsAll({"0.9.5+", "Lightricks/LTX-Video-0.9.5"}));
  const auto file091 = data_dir() / "v091" / "lightricks.safetensors";
  REQUIRE_THROWS_WITH(load_lightricks_vae(file091, {}, config090), ltxmps_test::Contains("timestep_conditioning"));
}

TEST_CASE("single file: a file without VAE keys or LTX markers is refused", "[single_file]") {
  const auto dir = fs::temp_directory_path() / "ltxmps_single_file_test";
  fs::create_directories(dir);
  const auto transformer_only = dir / "transformer_only.safetensors";
  save_safetensors(transformer_only, {{"model.diffusion_model.patchify_proj.weight", at::zeros({4, 2})}}, {});
  REQUIRE_THROWS_WITH(WeightStore::open_lightricks_vae(transformer_only), ltxmps_test::Contains("no VAE"));
  const auto other = dir / "other.safetensors";
  save_safetensors(other, {{"weight", at::zeros({2})}}, {});
  REQUIRE_THROWS_WITH(inspect_lightricks_checkpoint(WeightStore::open_file(other)),
                      ltxmps_test::Contains("not an LTX-Video single file"));
  (void)remove_tree(dir);
}
