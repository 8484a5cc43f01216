// C++ AutoencoderKLLTXVideo against diffusers (tests/parity/vae_oracle.py writes the cases).
//
// 0.9.1's decoder noise injection uses diffusers' *global* torch RNG: the "091" cases run with the
// per_channel_scale* weights at zero (so the noise has no effect), and "091_noise_decode" reproduces the
// stream with non-zero scales: diffusers decodes right after torch.manual_seed(s), C++ with
// make_cpu_generator(s) as the noise generator.

#include "catch_compat.hpp"
#include "parity_support.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/vae.hpp"
#include "vae_cpu.hpp"

#include "ltxmps/random.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace {

const ltxmps_test::OracleCases oracle{"vae"};

fs::path data_dir() { return oracle.dir(); }

VaeTiling tiling_of(const nlohmann::json& c) {
  const auto& t = c.at("tiling");
  VaeTiling out;
  out.use_tiling = t.at("use_tiling");
  out.use_slicing = t.at("use_slicing");
  out.use_framewise_encoding = t.at("use_framewise_encoding");
  out.use_framewise_decoding = t.at("use_framewise_decoding");
  out.tile_sample_min_height = t.at("tile_sample_min_height");
  out.tile_sample_min_width = t.at("tile_sample_min_width");
  out.tile_sample_min_num_frames = t.at("tile_sample_min_num_frames");
  out.tile_sample_stride_height = t.at("tile_sample_stride_height");
  out.tile_sample_stride_width = t.at("tile_sample_stride_width");
  out.tile_sample_stride_num_frames = t.at("tile_sample_stride_num_frames");
  return out;
}

VaeModel load_case_model(const nlohmann::json& c) {
  auto model = load_vae(data_dir() / c.at("model").get<std::string>(), {});
  model.tiling = tiling_of(c);
  return model;
}

void check_case(const std::string& name) {
  INFO(name);
  const auto c = oracle.find_case(name);
  const auto model = load_case_model(c);
  auto in = oracle.tensors(c, "inputs");
  auto ref = oracle.tensors(c, "reference");
  const double bound = c.at("bound").get<double>();
  if (c.at("op") == "encode") {
    const auto posterior = model.encode(in.at("sample"));
    oracle.check_output(name, "mean", posterior.mean, ref.at("mean"), bound);
    oracle.check_output(name, "logvar", posterior.logvar, ref.at("logvar"), bound);
    if (!c.at("sample_seed").is_null()) {
      auto gen = ltxmps::make_cpu_generator(c.at("sample_seed").get<uint64_t>());
      oracle.check_output(name, "posterior sample", posterior.sample(gen), ref.at("posterior_sample"), bound);
    }
  } else {
    std::optional<at::Tensor> temb;
    if (in.count("temb")) temb = in.at("temb");
    std::optional<at::Generator> gen;
    if (!c.at("noise_seed").is_null()) gen = ltxmps::make_cpu_generator(c.at("noise_seed").get<uint64_t>());
    const auto sample = model.decode(in.at("latents"), temb, gen ? &*gen : nullptr);
    CHECK(sample.scalar_type() == at::kFloat);
    oracle.check_output(name, "sample", sample, ref.at("sample"), bound);
  }
}

}  // namespace

// The bound lives in vae_oracle.py (FP32_BOUND = 1e-4) and reaches the test through cases.json; it is
// checked here so that it is never loosened silently.
TEST_CASE("vae parity: bounds are the documented ones", "[parity][vae]") {
  for (const auto& c : read_json_file(data_dir() / "cases.json")) CHECK(c.at("bound").get<double>() == 1e-4);
}

TEST_CASE("vae parity: 0.9.0 tiny config, encode (+ posterior sample) and decode", "[parity][vae]") {
  check_case("090_encode");
  check_case("090_decode");
}
TEST_CASE("vae parity: 0.9.0 spatial tiling (32 px tiles, stride 24)", "[parity][vae]") {
  check_case("090_encode_tiled");
  check_case("090_decode_tiled");
}
TEST_CASE("vae parity: 0.9.0 framewise (temporal) tiling with spatial tiles", "[parity][vae]") {
  check_case("090_encode_framewise");
  check_case("090_decode_framewise");
}
TEST_CASE("vae parity: 0.9.0 slicing", "[parity][vae]") {
  check_case("090_encode_sliced");
  check_case("090_decode_sliced");
}
TEST_CASE("vae parity: 0.9.0 with width changes (conv_out / conv_in resnets, patch 2)", "[parity][vae]") {
  check_case("090_wide_encode");
  check_case("090_wide_decode");
}
TEST_CASE("vae parity: 0.9.1 tiny config (timestep conditioning, per_channel_scale zeroed)", "[parity][vae]") {
  check_case("091_encode");
  check_case("091_decode");
  check_case("091_decode_tiled");
}
TEST_CASE("vae parity: 0.9.1 sliced decode with temb equals diffusers' unsliced decode", "[parity][vae]") {
  check_case("091_decode_unsliced");
  check_case("091_decode_sliced");
}
TEST_CASE("vae parity: 0.9.1 noise injection reproduces torch.manual_seed's stream", "[parity][vae]") {
  check_case("091_noise_decode");
}
TEST_CASE("vae parity: 0.9.5-style config (095 down blocks, residual upsamplers, temb)", "[parity][vae]") {
  check_case("095_encode");
  check_case("095_decode");
}
TEST_CASE("vae parity: 0.9.5-style spatial tiling", "[parity][vae]") {
  check_case("095_encode_tiled");
  check_case("095_decode_tiled");
}
TEST_CASE("vae parity: 0.9.5-style framewise tiling (empty last encode tile)", "[parity][vae]") {
  check_case("095_encode_framewise");
  check_case("095_decode_framewise");
}

// Note [Skinny CPU products] in vae_cpu.cpp: the AVX-512 product against at::addmm at the row counts it serves
// (1..16, padded to blocks of 8), weight widths that are and are not multiples of its 3 rows and reduction lengths
// that are and are not multiples of its 16 lanes. Float32 sums of up to 13824 products of N(0, 1) values in
// another order: 1e-4 relative to the sum of |products| bounds their rounding difference by far.
TEST_CASE("vae: the CPU skinny product equals at::addmm", "[vae]") {
  namespace d = ltxmps::pipeline::detail;
  if (!d::skinny_product_available()) {
    WARN("skinny product checks skipped: this CPU has no AVX-512 (the transposed product stays at::addmm)");
    return;
  }
  at::manual_seed(0);
  for (const auto& [n, k, m] : std::vector<std::array<int64_t, 3>>{
           {1, 16, 3}, {8, 3456, 512}, {5, 13824, 7}, {13, 1000, 100}, {16, 17, 4}, {16, 4321, 65}}) {
    CAPTURE(n, k, m);
    const auto x = at::randn({n, k}), w = at::randn({m, k}), b = at::randn({m});
    const auto bound = 1e-4 * (at::mm(x.abs(), w.abs().t()) + b.abs());
    CHECK(((d::skinny_product(x, w, b) - at::addmm(b, x, w.t())).abs() <= bound).all().item<bool>());
    CHECK(((d::skinny_product(x, w, at::Tensor()) - at::mm(x, w.t())).abs() <= bound).all().item<bool>());
  }
  CHECK_THROWS_WITH(d::skinny_product(at::randn({2, 5}), at::randn({3, 4}), at::Tensor()),
                    ltxmps_test::Contains("expected CPU float32 columns [N, K] and weight [M, K]"));
}

TEST_CASE("vae: pipeline helpers", "[vae]") {
  const auto model = load_vae(data_dir() / "095", {});
  const auto z = at::randn({2, 8, 2, 2, 2});
  const auto mean = model.latents_mean.view({1, -1, 1, 1, 1}), std = model.latents_std.view({1, -1, 1, 1, 1});
  CHECK(at::allclose(model.normalize_latents(z), (z - mean) / std));
  CHECK(at::allclose(model.denormalize_latents(model.normalize_latents(z)), z, 1e-5, 1e-6));
  const auto noise = at::randn_like(z);
  const auto mixed = mix_decode_noise(z, noise, at::tensor({0.025f, 0.5f}));
  CHECK(at::allclose(mixed.select(0, 1), 0.5 * z.select(0, 1) + 0.5 * noise.select(0, 1)));
  CHECK(at::allclose(mixed.select(0, 0), 0.975 * z.select(0, 0) + 0.025 * noise.select(0, 0)));
  CHECK(at::allclose(mix_decode_noise(z, noise, at::tensor({0.0f})), z));
  CHECK(model.config.spatial_compression() == 16);
  CHECK(model.config.temporal_compression() == 8);
}

TEST_CASE("vae: bad inputs", "[vae]") {
  const auto model = load_vae(data_dir() / "095", {});
  SECTION("wrong frame count") {
    CHECK_THROWS_WITH(model.encode(at::zeros({1, 3, 10, 32, 32})),
                      ltxmps_test::ContainsAll({"10 frames", "k*8+1", "9 or 17"}));
  }
  SECTION("wrong height/width") {
    CHECK_THROWS_WITH(model.encode(at::zeros({1, 3, 9, 40, 32})),
                      ltxmps_test::ContainsAll({"multiples of the spatial compression 16", "height 32 or 48"}));
  }
  SECTION("wrong channels") {
    CHECK_THROWS_WITH(model.encode(at::zeros({1, 4, 9, 32, 32})), ltxmps_test::Contains("in_channels = 3"));
    CHECK_THROWS_WITH(model.decode(at::zeros({1, 7, 2, 2, 2}), at::tensor({0.05f})),
                      ltxmps_test::Contains("latent_channels = 8"));
  }
  SECTION("missing temb for a timestep-conditioned decoder") {
    CHECK_THROWS_WITH(model.decode(at::zeros({1, 8, 2, 2, 2})), ltxmps_test::Contains("pass the decode timestep temb"));
    CHECK_THROWS_WITH(model.decode(at::zeros({2, 8, 2, 2, 2}), at::tensor({0.1f, 0.2f, 0.3f})),
                      ltxmps_test::Contains("temb has 3 values for a batch of 2"));
  }
  SECTION("NaN latents") {
    CHECK_THROWS_WITH(model.decode(at::full({1, 8, 2, 2, 2}, NAN), at::tensor({0.05f})),
                      ltxmps_test::ContainsAll({"vae decode: the input latents produced NaN/Inf", "vae_float32"}));
  }
  SECTION("NaN weights name the stage") {
    auto broken = model;
    broken.decoder.up_blocks[1].resnets[0].conv2.weight = broken.decoder.up_blocks[1].resnets[0].conv2.weight.clone();
    broken.decoder.up_blocks[1].resnets[0].conv2.weight[0][0][0][0][0] = NAN;
    CHECK_THROWS_WITH(broken.decode(at::zeros({1, 8, 2, 2, 2}), at::tensor({0.05f})),
                      ltxmps_test::ContainsAll({"vae decode: up_blocks.1 produced NaN/Inf", "decoded frames", "vae_float32"}));
    auto enc = model;
    enc.encoder.conv_out.bias = at::full_like(enc.encoder.conv_out.bias, INFINITY);
    CHECK_THROWS_WITH(enc.encode(at::zeros({1, 3, 9, 32, 32})),
                      ltxmps_test::Contains("vae encode: encoder.conv_out produced NaN/Inf"));
  }
  SECTION("tiling sizes") {
    auto tiled = model;
    tiled.tiling.enable_tiling(32, 32, std::nullopt, 48, 16);
    CHECK_THROWS_WITH(tiled.decode(at::zeros({1, 8, 2, 4, 4}), at::tensor({0.05f})),
                      ltxmps_test::Contains("a stride exceeds its tile size"));
    tiled.tiling.enable_tiling(32, 32, std::nullopt, 8, 16);
    CHECK_THROWS_WITH(tiled.decode(at::zeros({1, 8, 2, 4, 4}), at::tensor({0.05f})),
                      ltxmps_test::Contains("tile_sample_stride_height = 8 is smaller than the compression 16"));
  }
}

// The checks are read once per encode/decode (Note [Deferred VAE finiteness checks] in vae.cpp); the message must
// still name the first stage, in execution order, whose output holds a NaN or Inf, in every tiling mode.
TEST_CASE("vae: a NaN/Inf is named by the stage where it first appears, untiled, tiled and framewise",
          "[vae][check_finite]") {
  const auto base = load_vae(data_dir() / "095", {});
  auto g = ltxmps::make_cpu_generator(7);
  const auto latents = ltxmps::randn({1, 8, 4, 4, 4}, g);  // 4 latent frames > 16/8: framewise tiles over time
  const auto video = ltxmps::randn({1, 3, 17, 48, 48}, g);
  const auto temb = at::tensor({0.05f});
  const auto set_bias = [](VaeConv3dWeights& c, double value) { c.bias = at::full_like(c.bias, value); };
  // Each decoder stage's last convolution, by the stage name decode reports.
  const std::vector<std::pair<std::string, std::function<VaeConv3dWeights&(VaeModel&)>>> decoder_stages = {
      {"mid_block", [](VaeModel& m) -> VaeConv3dWeights& { return m.decoder.mid_block.resnets.back().conv2; }},
      {"up_blocks.0", [](VaeModel& m) -> VaeConv3dWeights& { return m.decoder.up_blocks[0].resnets.back().conv2; }},
      {"up_blocks.1", [](VaeModel& m) -> VaeConv3dWeights& { return m.decoder.up_blocks[1].resnets.back().conv2; }},
      {"up_blocks.2", [](VaeModel& m) -> VaeConv3dWeights& { return m.decoder.up_blocks[2].resnets.back().conv2; }},
      {"conv_out", [](VaeModel& m) -> VaeConv3dWeights& { return m.decoder.conv_out; }}};
  REQUIRE(base.decoder.up_blocks.size() == 3);
  for (const char* mode : {"untiled", "tiled", "framewise"}) {
    INFO(mode);
    auto model = base;
    if (std::string(mode) != "untiled") model.tiling.enable_tiling(32, 32, 16, 16, 16, 8);
    model.tiling.use_framewise_decoding = std::string(mode) == "framewise";
    CHECK(at::isfinite(model.decode(latents, temb)).all().item<bool>());
    CHECK(at::isfinite(model.encode(video).mean).all().item<bool>());
    for (const auto& [stage, conv] : decoder_stages) {
      INFO(stage);
      auto broken = model;
      set_bias(conv(broken), NAN);
      CHECK_THROWS_WITH(broken.decode(latents, temb),
                        ltxmps_test::ContainsAll({"vae decode: " + stage + " produced NaN/Inf", "decoded frames"}));
    }
    for (const double inf : {INFINITY, -INFINITY}) {  // an Inf alone, in either direction, fails too
      auto broken = model;
      set_bias(broken.decoder.conv_out, inf);
      CHECK_THROWS_WITH(broken.decode(latents, temb), ltxmps_test::Contains("vae decode: conv_out produced NaN/Inf"));
    }
    for (const size_t block : {size_t{0}, size_t{2}}) {
      auto broken = model;
      set_bias(broken.encoder.down_blocks[block].resnets.back().conv2, NAN);
      CHECK_THROWS_WITH(broken.encode(video), ltxmps_test::Contains("vae encode: encoder.down_blocks." +
                                                                    std::to_string(block) + " produced NaN/Inf"));
    }
    // check_finite off: no check at all, the NaN reaches the frames.
    auto unchecked = model;
    set_bias(unchecked.decoder.mid_block.resnets.back().conv2, NAN);
    unchecked.runtime.check_finite = false;
    CHECK(at::isnan(unchecked.decode(latents, temb)).any().item<bool>());
  }
}

TEST_CASE("vae: config.json and strict loading errors", "[vae]") {
  const auto src = data_dir() / "091";
  const auto dir = fs::temp_directory_path() / ("ltxmps_vae_config_" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  auto config = read_json_file(src / "config.json");
  std::map<std::string, at::Tensor> weights;
  for (auto& [name, t] : load_all(src / "diffusion_pytorch_model.safetensors")) weights.emplace(name, t);
  auto write = [&](const nlohmann::json& cfg, const std::map<std::string, at::Tensor>& w) {
    std::ofstream(dir / "config.json") << cfg.dump();
    save_safetensors(dir / "diffusion_pytorch_model.safetensors",
                     std::vector<std::pair<std::string, at::Tensor>>(w.begin(), w.end()));
  };

  SECTION("defaults are diffusers' (0.9.0)") {
    const auto d = VaeConfig::from_json(nlohmann::json::object());
    CHECK(d.latent_channels == 128);
    CHECK(d.block_out_channels == std::vector<int64_t>{128, 256, 512, 512});
    CHECK(d.decoder_layers_per_block == std::vector<int64_t>{4, 3, 3, 3, 4});
    CHECK(d.decoder_inject_noise == std::vector<bool>(5, false));
    CHECK(d.patch_size == 4);
    CHECK_FALSE(d.timestep_conditioning);
    CHECK(d.spatial_compression() == 32);
    CHECK(d.temporal_compression() == 8);
  }
  SECTION("an older config without the newer fields keeps the constructor defaults") {
    auto cfg = config;
    for (const char* key : {"downsample_type", "down_block_types", "spatial_compression_ratio",
                            "temporal_compression_ratio", "decoder_causal"})
      cfg.erase(key);
    const auto c = VaeConfig::from_json(cfg, "old/config.json");
    CHECK(c.downsample_type == std::vector<std::string>(4, "conv"));
    CHECK_FALSE(c.decoder_causal);
    CHECK(c.spatial_compression() == 8);
    write(cfg, weights);
    CHECK_NOTHROW(load_vae(dir, {}));
  }
  SECTION("unknown field") {
    auto cfg = config;
    cfg["decoder_blocks"] = 3;
    write(cfg, weights);
    CHECK_THROWS_WITH(load_vae(dir, {}),
                      ltxmps_test::ContainsAll({"unknown field 'decoder_blocks'", "config.json"}));
  }
  SECTION("wrong type and bad values") {
    auto cfg = config;
    cfg["layers_per_block"] = 1;
    CHECK_THROWS_WITH(VaeConfig::from_json(cfg), ltxmps_test::Contains("'layers_per_block' must be a list"));
    cfg = config;
    cfg["down_block_types"] = {"LTXVideoDownBlock3D", "Nope", "LTXVideoDownBlock3D", "LTXVideoDownBlock3D"};
    CHECK_THROWS_WITH(VaeConfig::from_json(cfg), ltxmps_test::Contains("down_block_types[1] = 'Nope'"));
    cfg = config;
    cfg["patch_size_t"] = 2;
    CHECK_THROWS_WITH(VaeConfig::from_json(cfg), ltxmps_test::Contains("patch_size_t = 2 is not supported"));
    cfg = config;
    cfg["decoder_inject_noise"] = {true, false};
    CHECK_THROWS_WITH(VaeConfig::from_json(cfg), ltxmps_test::Contains("decoder_inject_noise has 2 entries"));
  }
  SECTION("missing tensor") {
    auto w = weights;
    w.erase("decoder.up_blocks.0.upsamplers.0.conv.conv.weight");
    write(config, w);
    CHECK_THROWS_WITH(load_vae(dir, {}), ltxmps_test::Contains("decoder.up_blocks.0.upsamplers.0.conv.conv.weight"));
  }
  SECTION("unexpected tensor") {
    auto w = weights;
    w.emplace("decoder.mid_block.resnets.0.per_channel_scale1", at::zeros({64, 1, 1}));
    write(config, w);
    CHECK_THROWS_WITH(load_vae(dir, {}), ltxmps_test::Contains("decoder.mid_block.resnets.0.per_channel_scale1"));
  }
  remove_tree(dir);
}

#ifdef LTXMPS_CLI_PATH
using ltxmps_test::cli;
using ltxmps_test::exit_code;

TEST_CASE("ltxmps forward vae-encode / vae-decode CLI match diffusers", "[parity][vae][cli]") {
  const auto tmp = fs::temp_directory_path() / ("ltxmps_vae_cli_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  {
    const auto c = oracle.find_case("095_decode_tiled");
    const auto out = tmp / "decode.safetensors";
    const auto command = cli("forward vae-decode --model-dir \"" + (data_dir() / "095").string() + "\" --inputs \"" +
                             (data_dir() / c.at("inputs").get<std::string>()).string() + "\" --output \"" +
                             out.string() + "\" --device cpu --precision fp32 --tiling --arg tile_sample_min_height=32 "
                             "--arg tile_sample_min_width=32 --arg tile_sample_stride_height=16 "
                             "--arg tile_sample_stride_width=16");
    INFO(command);
    REQUIRE(exit_code(command) == 0);
    oracle.check_output("CLI 095_decode_tiled", "sample", SafetensorsFile::open(out).load("sample"),
                        oracle.tensors(c, "reference").at("sample"), 1e-4);
  }
  {
    const auto c = oracle.find_case("090_encode_framewise");
    const auto out = tmp / "encode.safetensors";
    const auto command = cli("forward vae-encode --model-dir \"" + (data_dir() / "090").string() + "\" --inputs \"" +
                             (data_dir() / c.at("inputs").get<std::string>()).string() + "\" --output \"" +
                             out.string() + "\" --device cpu --tiling --framewise --arg tile_sample_min_height=32 "
                             "--arg tile_sample_min_width=32 --arg tile_sample_stride_height=24 "
                             "--arg tile_sample_stride_width=24 --arg tile_sample_min_num_frames=8 "
                             "--arg tile_sample_stride_num_frames=4");
    INFO(command);
    REQUIRE(exit_code(command) == 0);
    const auto file = SafetensorsFile::open(out);
    const auto ref = oracle.tensors(c, "reference");
    oracle.check_output("CLI 090_encode_framewise", "mean", file.load("mean"), ref.at("mean"), 1e-4);
    oracle.check_output("CLI 090_encode_framewise", "logvar", file.load("logvar"), ref.at("logvar"), 1e-4);
  }
  {
    // A missing input tensor is an error naming it (exit 1); a bad --arg is a usage error (exit 2).
    const auto c = oracle.find_case("090_encode");
    const auto inputs = (data_dir() / c.at("inputs").get<std::string>()).string();
    CHECK(exit_code(cli("forward vae-decode --model-dir \"" + (data_dir() / "090").string() + "\" --inputs \"" +
                        inputs + "\" --output \"" + (tmp / "x.safetensors").string() + "\" 2>/dev/null")) == 1);
    CHECK(exit_code(cli("forward vae-decode --model-dir x --inputs y --output z --arg tile=3 2>/dev/null")) == 2);
  }
  remove_tree(tmp);
}
#endif
