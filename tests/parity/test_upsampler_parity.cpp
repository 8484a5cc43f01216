// C++ LTXLatentUpsamplerModel and LTXLatentUpsamplePipeline against diffusers (tests/parity/upsampler_oracle.py
// writes the cases), the two checkpoint formats, and the loading and input errors.

#include "catch_compat.hpp"
#include "parity_support.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/latent_upsample.hpp"
#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/vae.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <unistd.h>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace {

const ltxmps_test::OracleCases oracle{"upsampler"};

fs::path data_dir() { return oracle.dir(); }

LatentUpsamplerModel load_upsampler(const std::string& name) { return load_latent_upsampler(data_dir() / name, {}); }

LtxModel vae_model(const std::string& name) {
  LtxModel model;
  model.vae = load_vae(data_dir() / name, {});
  return model;
}

void check_forward_case(const std::string& name) {
  INFO(name);
  const auto c = oracle.find_case(name);
  const auto upsampler = load_upsampler(c.at("upsampler").get<std::string>());
  const auto out = upsampler.forward(oracle.tensors(c, "inputs").at("latents"));
  CHECK(out.scalar_type() == at::kFloat);
  oracle.check_output(name, "output", out, oracle.tensors(c, "reference").at("output"), c.at("bound").get<double>());
}

LatentUpsampleRequest request_of(const nlohmann::json& c, const std::map<std::string, at::Tensor>& in) {
  LatentUpsampleRequest r;
  if (in.count("latents")) r.latents = in.at("latents");
  if (in.count("video")) r.video = in.at("video");
  r.options.adain_factor = c.at("options").at("adain_factor").get<double>();
  r.options.tone_map_compression_ratio = c.at("options").at("tone_map_compression_ratio").get<double>();
  r.output_latents = c.at("output") == "latent";
  r.decode_timestep = c.at("decode_timestep").get<double>();
  if (!c.at("decode_noise_scale").is_null()) r.decode_noise_scale = c.at("decode_noise_scale").get<double>();
  r.seed = c.at("seed").get<uint64_t>();
  return r;
}

void check_pipeline_case(const std::string& name) {
  INFO(name);
  const auto c = oracle.find_case(name);
  auto model = vae_model(c.at("vae").get<std::string>());
  auto upsampler = load_upsampler(c.at("upsampler").get<std::string>());
  const auto in = oracle.tensors(c, "inputs");
  const auto ref = oracle.tensors(c, "reference");
  const double bound = c.at("bound").get<double>();
  const auto request = request_of(c, in);
  const auto result = latent_upsample(model, upsampler, request, ltxmps_test::cpu_fp32_plan());
  if (request.output_latents) {
    CHECK_FALSE(result.frames.defined());
    oracle.check_output(name, "latents", result.latents, ref.at("latents"), bound);
    if (request.latents) {
      // The agreed entry point of the two-pass flow gives the same normalized latents.
      const auto direct = upsample_latents(upsampler, model.vae, *request.latents, request.options);
      CHECK(direct.scalar_type() == at::kFloat);
      oracle.check_output(name, "upsample_latents", direct, ref.at("latents"), bound);
    }
  } else {
    oracle.check_output(name, "frames", result.frames, ref.at("frames"), bound);
  }
}

}  // namespace

// The bound lives in upsampler_oracle.py (FP32_BOUND = 1e-4) and reaches the test through cases.json; it is
// checked here so that it is never loosened silently.
TEST_CASE("upsampler parity: bounds are the documented ones", "[parity][upsampler]") {
  for (const auto& c : read_json_file(data_dir() / "cases.json")) CHECK(c.at("bound").get<double>() == 1e-4);
}

TEST_CASE("upsampler parity: forward of every config variant", "[parity][upsampler]") {
  check_forward_case("forward_spatial3d");   // dims 3, spatial: Conv2d upsampler frame by frame
  check_forward_case("forward_temporal3d");  // dims 3, temporal: F -> 2F - 1
  check_forward_case("forward_both3d");      // dims 3, spatial and temporal: PixelShuffle3D
  check_forward_case("forward_spatial2d");   // dims 2: every layer frame by frame
  check_forward_case("forward_noblocks");    // no res blocks
}

TEST_CASE("upsampler parity: Lightricks single files, with and without the metadata config", "[parity][upsampler]") {
  check_forward_case("forward_file_tiny");
  check_forward_case("forward_file_nometa");
  for (const char* file : {"ltxv-spatial-upscaler-tiny.safetensors", "ltxv-spatial-upscaler-nometa.safetensors"}) {
    INFO(file);
    const auto c = lightricks_latent_upsampler_config(data_dir() / file);
    CHECK(c.in_channels == 8);
    CHECK(c.mid_channels == 32);
    CHECK(c.num_blocks_per_stage == 2);
    CHECK(c.dims == 3);
    CHECK(c.spatial_upsample);
    CHECK_FALSE(c.temporal_upsample);
  }
}

TEST_CASE("upsampler: the config read off the shapes of every variant", "[upsampler]") {
  // A bare state dict of each diffusers folder: the shapes alone must give its config.json back.
  const auto dir = fs::temp_directory_path() / ("ltxmps_upsampler_shapes_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const char* name : {"spatial3d", "temporal3d", "both3d", "spatial2d", "noblocks"}) {
    INFO(name);
    const auto file = dir / (std::string(name) + ".safetensors");
    save_safetensors(file, load_all(data_dir() / name / "diffusion_pytorch_model.safetensors"));
    const auto inferred = lightricks_latent_upsampler_config(file);
    const auto expected = LatentUpsamplerConfig::from_file(data_dir() / name / "config.json");
    CHECK(inferred.in_channels == expected.in_channels);
    CHECK(inferred.mid_channels == expected.mid_channels);
    CHECK(inferred.num_blocks_per_stage == expected.num_blocks_per_stage);
    CHECK(inferred.dims == expected.dims);
    CHECK(inferred.spatial_upsample == expected.spatial_upsample);
    CHECK(inferred.temporal_upsample == expected.temporal_upsample);
  }
  remove_tree(dir);
}

TEST_CASE("upsampler parity: LTXLatentUpsamplePipeline from latents to latents", "[parity][upsampler]") {
  check_pipeline_case("pipeline_latents");
  check_pipeline_case("pipeline_adain");           // adain_factor 0.7
  check_pipeline_case("pipeline_adain_full");      // adain_factor 1, dims 2
  check_pipeline_case("pipeline_tone_map");        // tone_map_compression_ratio 0.6
  check_pipeline_case("pipeline_adain_tone_map");  // both, spatial + temporal upsampler
}

TEST_CASE("upsampler parity: LTXLatentUpsamplePipeline to frames (decode noise, no timestep)", "[parity][upsampler]") {
  check_pipeline_case("pipeline_frames_095");
  check_pipeline_case("pipeline_frames_090");
}

TEST_CASE("upsampler parity: LTXLatentUpsamplePipeline from a video (truncated, encoded, sampled)",
          "[parity][upsampler]") {
  check_pipeline_case("pipeline_video_latents");
  check_pipeline_case("pipeline_video_frames");
}

TEST_CASE("upsampler: the runtime visitor reaches every loaded tensor", "[upsampler]") {
  for (const char* name : {"spatial3d", "both3d", "spatial2d"}) {
    INFO(name);
    auto model = load_upsampler(name);
    const auto stored = WeightStore::open_component(data_dir() / name).names().size();
    CHECK(count_tensors(model) == static_cast<int64_t>(stored));
    move_model(model, c10::Device(c10::kCPU));
    CHECK(model.runtime.device == c10::Device(c10::kCPU));
  }
}

TEST_CASE("upsampler: config and strict loading errors", "[upsampler]") {
  const auto src = data_dir() / "spatial3d";
  const auto dir = fs::temp_directory_path() / ("ltxmps_upsampler_load_" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  const auto config = read_json_file(src / "config.json");
  std::map<std::string, at::Tensor> weights;
  for (auto& [name, t] : load_all(src / "diffusion_pytorch_model.safetensors")) weights.emplace(name, t);
  const auto weights_file = dir / "diffusion_pytorch_model.safetensors";
  auto write = [&](const nlohmann::json& cfg, const std::map<std::string, at::Tensor>& w) {
    std::ofstream(dir / "config.json") << cfg.dump();
    save_safetensors(weights_file, std::vector<std::pair<std::string, at::Tensor>>(w.begin(), w.end()));
  };
  using ltxmps_test::Contains;

  SECTION("defaults are diffusers'") {
    const auto d = LatentUpsamplerConfig::from_json(nlohmann::json::object());
    CHECK(d.in_channels == 128);
    CHECK(d.mid_channels == 512);
    CHECK(d.num_blocks_per_stage == 4);
    CHECK(d.dims == 3);
    CHECK(d.spatial_upsample);
    CHECK_FALSE(d.temporal_upsample);
    CHECK_NOTHROW(d.validate());
  }
  SECTION("a missing tensor names the file and the tensor") {
    auto w = weights;
    w.erase("res_blocks.1.norm2.bias");
    write(config, w);
    CHECK_THROWS_WITH(load_latent_upsampler(dir, {}),
                      ltxmps_test::ContainsAll({"res_blocks.1.norm2.bias", weights_file.string()}));
  }
  SECTION("an unexpected tensor is an error") {
    auto w = weights;
    w.emplace("res_blocks.2.conv1.weight", weights.at("res_blocks.1.conv1.weight"));
    write(config, w);
    CHECK_THROWS_WITH(load_latent_upsampler(dir, {}), Contains("res_blocks.2.conv1.weight"));
  }
  SECTION("a mis-shaped tensor names the tensor") {
    auto cfg = config;
    cfg["mid_channels"] = 64;
    write(cfg, weights);
    CHECK_THROWS_WITH(load_latent_upsampler(dir, {}), Contains("initial_conv.weight"));
  }
  SECTION("unknown config fields and impossible configs are refused") {
    auto cfg = config;
    cfg["rational_resampler"] = false;
    write(cfg, weights);
    CHECK_THROWS_WITH(load_latent_upsampler(dir, {}), Contains("unknown LTXLatentUpsamplerModel config field "
                                                               "'rational_resampler'"));
    cfg = config;
    cfg["dims"] = 2;
    cfg["temporal_upsample"] = true;
    write(cfg, weights);
    CHECK_THROWS_WITH(load_latent_upsampler(dir, {}), Contains("temporal_upsample needs dims = 3"));
    cfg = config;
    cfg["mid_channels"] = 48;
    CHECK_THROWS_WITH(LatentUpsamplerConfig::from_json(cfg).validate(), Contains("multiple of 32"));
    cfg = config;
    cfg["spatial_upsample"] = false;
    CHECK_THROWS_WITH(LatentUpsamplerConfig::from_json(cfg).validate(), Contains("either spatial_upsample"));
  }
  SECTION("a single file whose metadata config disagrees with its tensors, or asks for a rational resampler") {
    const auto file = dir / "ltxv-spatial-upscaler-bad.safetensors";
    const std::vector<std::pair<std::string, at::Tensor>> w(weights.begin(), weights.end());
    auto meta = config;
    meta.erase("_class_name");
    meta.erase("_diffusers_version");
    meta["num_blocks_per_stage"] = 3;
    save_safetensors(file, w, {{"config", meta.dump()}});
    CHECK_THROWS_WITH(load_latent_upsampler(file, {}),
                      ltxmps_test::ContainsAll({"res_blocks.2.conv1.weight", file.string()}));
    meta["num_blocks_per_stage"] = 2;
    meta["rational_resampler"] = true;
    save_safetensors(file, w, {{"config", meta.dump()}});
    CHECK_THROWS_WITH(load_latent_upsampler(file, {}), Contains("rational_resampler = true is not supported"));
  }
  SECTION("a path that is neither a folder nor a safetensors file") {
    CHECK_THROWS_WITH(load_latent_upsampler(dir / "absent", {}), Contains("neither a folder nor a file"));
    std::ofstream(dir / "weights.bin") << "x";
    CHECK_THROWS_WITH(load_latent_upsampler(dir / "weights.bin", {}), Contains("is not a .safetensors file"));
  }
  remove_tree(dir);
}

TEST_CASE("upsampler: input errors before any work", "[upsampler]") {
  using ltxmps_test::Contains;
  auto model = vae_model("vae095");
  auto upsampler = load_upsampler("spatial3d");
  auto other = load_upsampler("channels4");
  const auto latents = at::randn({1, 8, 2, 3, 4});
  const LatentUpsampleOptions off;
  const auto plan = ltxmps_test::cpu_fp32_plan();

  CHECK_THROWS_WITH(upsample_latents(other, model.vae, latents, off),
                    Contains("takes 4 channels but the VAE's latents have 8"));
  CHECK_THROWS_WITH(upsample_latents(upsampler, model.vae, latents.squeeze(0), off),
                    Contains("expected latents [B, C, F, H, W]"));
  CHECK_THROWS_WITH(upsample_latents(upsampler, model.vae, at::randn({1, 4, 2, 3, 4}), off),
                    Contains("have 4 channels"));
  CHECK_THROWS_WITH(upsampler.forward(at::randn({1, 4, 2, 3, 4})), Contains("upsampler's in_channels is 8"));
  LatentUpsampleOptions bad;
  bad.tone_map_compression_ratio = 1.5;
  CHECK_THROWS_WITH(upsample_latents(upsampler, model.vae, latents, bad), Contains("tone_map_compression_ratio"));

  LatentUpsampleRequest r;
  CHECK_THROWS_WITH(latent_upsample(model, upsampler, r, plan),
                    Contains("exactly one of latents and video (got neither"));
  r.latents = latents;
  r.video = at::rand({9, 3, 32, 48});
  CHECK_THROWS_WITH(latent_upsample(model, upsampler, r, plan), Contains("got both"));
  r.latents.reset();
  r.video = at::rand({9, 3, 40, 48});
  CHECK_THROWS_WITH(latent_upsample(model, upsampler, r, plan), Contains("multiples of 16"));
  r.video = at::rand({9, 32, 48});
  CHECK_THROWS_WITH(latent_upsample(model, upsampler, r, plan), Contains("expected the video as frames [F, 3, H, W]"));
  r.video.reset();
  r.latents = latents;
  CHECK_THROWS_WITH(latent_upsample(model, other, r, plan), Contains("the upsampler belongs to another model"));
}

TEST_CASE("upsampler: AdaIN and tone mapping on their own", "[upsampler]") {
  const auto x = at::randn({2, 3, 2, 4, 5}) * 2.0 + 0.5;
  const auto ref = at::randn({2, 3, 1, 2, 2}) * 0.5 - 1.0;
  // factor 0 is the identity; factor 1 gives the reference's per-(sample, channel) mean and unbiased std.
  CHECK(at::allclose(adain_filter_latent(x, ref, 0.0), x));
  const auto matched = adain_filter_latent(x, ref, 1.0);
  const auto [m_sd, m_mean] = at::std_mean(matched, {2, 3, 4}, true);
  const auto [r_sd, r_mean] = at::std_mean(ref, {2, 3, 4}, true);
  CHECK(at::allclose(m_mean, r_mean, 1e-5, 1e-5));
  CHECK(at::allclose(m_sd, r_sd, 1e-5, 1e-5));
  // Tone mapping: the identity at 0; at 1 (s = 0.75), |x| >> 1 is scaled by 1 - 0.8·s = 0.4, and 0.01 by
  // 1 - 0.6·sigmoid(3·(0.01 - 1)) (about 0.97).
  CHECK(at::equal(tone_map_latents(x, 0.0), x));
  const auto big = at::full({1}, 100.0);
  CHECK(std::abs(tone_map_latents(big, 1.0).item<double>() - 40.0) < 1e-4);
  const auto small = at::full({1}, 0.01);
  const double expected = 0.01 * (1.0 - 0.6 / (1.0 + std::exp(-3.0 * (0.01 - 1.0))));
  CHECK(std::abs(tone_map_latents(small, 1.0).item<double>() - expected) < 1e-8);
}

#ifdef LTXMPS_CLI_PATH
using ltxmps_test::cli;
using ltxmps_test::exit_code;
using ltxmps_test::quoted;

TEST_CASE("ltxmps upsample CLI matches diffusers", "[parity][upsampler][cli]") {
  const auto tmp = fs::temp_directory_path() / ("ltxmps_upsample_cli_" + std::to_string(::getpid()));
  remove_tree(tmp);
  fs::create_directories(tmp);
  const auto common = " --device cpu --precision fp32 2>/dev/null";
  {
    // Normalized latents in and out, the single file, both filters.
    const auto c = oracle.find_case("pipeline_adain_tone_map");
    const auto out = tmp / "latents.safetensors";
    const auto command = cli("upsample --model " + quoted(data_dir() / "vae095") + " --upscaler " +
                             quoted(data_dir() / "both3d") + " --latents " +
                             quoted(data_dir() / c.at("inputs").get<std::string>()) +
                             " --latents-space normalized --adain-factor 0.5 --tone-map-compression-ratio 1 --output " +
                             quoted(out) + common);
    INFO(command);
    REQUIRE(exit_code(command) == 0);
    const auto file = SafetensorsFile::open(out);
    CHECK(file.metadata().at("latents") == "normalized");
    oracle.check_output("CLI pipeline_adain_tone_map", "latents", file.load("latents"),
                        oracle.tensors(c, "reference").at("latents"), 1e-4);
  }
  {
    // Raw latents (as generate --save-latents writes them, no metadata) are normalized first.
    const auto c = oracle.find_case("pipeline_latents");
    const auto vae = load_vae(data_dir() / "vae095", {});
    const auto raw = vae.denormalize_latents(oracle.tensors(c, "inputs").at("latents"));
    const auto in = tmp / "raw.safetensors";
    save_safetensors(in, {{"latents", raw}});
    const auto out = tmp / "from_raw.safetensors";
    const auto command = cli("upsample --model-dir " + quoted(data_dir() / "vae095") + " --upscaler " +
                             quoted(data_dir() / "ltxv-spatial-upscaler-tiny.safetensors") + " --latents " +
                             quoted(in) + " --output " + quoted(out) + common);
    INFO(command);
    REQUIRE(exit_code(command) == 0);
    oracle.check_output("CLI pipeline_latents (raw input)", "latents", SafetensorsFile::open(out).load("latents"),
                        oracle.tensors(c, "reference").at("latents"), 1e-4);
  }
  {
    // Frames out as PNG: 8-bit rounding bounds the difference by half a level (plus the float32 bound).
    const auto c = oracle.find_case("pipeline_frames_095");
    const auto out = tmp / "frames";
    const auto command = cli("upsample --model-dir " + quoted(data_dir() / "vae095") + " --upscaler " +
                             quoted(data_dir() / "spatial3d") + " --latents " +
                             quoted(data_dir() / c.at("inputs").get<std::string>()) +
                             " --latents-space normalized --adain-factor 0.3 --decode-timestep 0.05 "
                             "--decode-noise-scale 0.025 --seed 5 --output " + quoted(out) + common);
    INFO(command);
    REQUIRE(exit_code(command) == 0);
    const auto frames = read_video(out);
    const auto ref = oracle.tensors(c, "reference").at("frames")[0];
    REQUIRE(frames.sizes() == ref.sizes());
    CHECK((frames - ref).abs().max().item<double>() <= 0.5 / 255 + 1e-4);
  }
  // Usage errors exit 2, an upsampler of another VAE 1.
  const auto latents = quoted(data_dir() / oracle.find_case("pipeline_latents").at("inputs").get<std::string>());
  const auto base = "upsample --model-dir " + quoted(data_dir() / "vae095") + " --output " +
                    quoted(tmp / "x.safetensors") + " --latents " + latents;
  CHECK(exit_code(cli(base + " --upscaler " + quoted(data_dir() / "spatial3d") + " --tone-map-compression-ratio 1.5" +
                      common)) == 2);
  CHECK(exit_code(cli(base + " --upscaler " + quoted(data_dir() / "spatial3d") + " --video " + latents + common)) == 2);
  CHECK(exit_code(cli(base + " --upscaler " + quoted(data_dir() / "channels4") + common)) == 1);
  remove_tree(tmp);
}
#endif
