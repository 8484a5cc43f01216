// C++ LTXVideoTransformer3DModel against diffusers (tests/parity/transformer_oracle.py writes the cases).

#include "catch_compat.hpp"
#include "parity_support.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace {

fs::path data_dir() { return ltxmps_test::parity_data_dir("transformer"); }

nlohmann::json cases() { return read_json_file(data_dir() / "cases.json"); }

nlohmann::json find_case(const std::string& name) {
  for (const auto& c : cases())
    if (c.at("name") == name) return c;
  FAIL("no oracle case " << name);
  return {};
}

at::ScalarType dtype_of(const std::string& name) {
  if (name == "bf16") return at::kBFloat16;
  if (name == "fp16") return at::kHalf;
  return at::kFloat;
}

TransformerRuntime runtime_of(const nlohmann::json& c) {
  TransformerRuntime rt;
  rt.dtype = dtype_of(c.at("dtype"));
  rt.attention.kernel = c.at("kernel") == "upcast" ? ltxmps::AttentionKernel::upcast : ltxmps::AttentionKernel::sdpa;
  return rt;
}

TransformerModel load_case_model(const nlohmann::json& c) {
  if (c.at("format") == "lightricks")
    return load_lightricks_transformer(data_dir() / c.at("model").get<std::string>(), runtime_of(c));
  std::optional<std::string> variant;
  if (!c.at("variant").is_null()) variant = c.at("variant").get<std::string>();
  return load_transformer(data_dir() / c.at("model").get<std::string>(), runtime_of(c), variant);
}

TransformerInputs inputs_of(const nlohmann::json& c) {
  TransformerInputs in;
  for (auto& [name, t] : load_all(data_dir() / c.at("inputs").get<std::string>())) {
    if (name == "hidden_states") in.hidden_states = t;
    else if (name == "encoder_hidden_states") in.encoder_hidden_states = t;
    else if (name == "timestep") in.timestep = t;
    else if (name == "encoder_attention_mask") in.encoder_attention_mask = t;
    else if (name == "video_coords") in.video_coords = t;
    else if (name == "rope_interpolation_scale")
      in.rope_interpolation_scale = {t[0].item<double>(), t[1].item<double>(), t[2].item<double>()};
    else FAIL("unknown input " << name);
  }
  const auto& args = c.at("args");
  if (args.contains("num_frames")) in.num_frames = args.at("num_frames").get<int64_t>();
  if (args.contains("height")) in.height = args.at("height").get<int64_t>();
  if (args.contains("width")) in.width = args.at("width").get<int64_t>();
  return in;
}

at::Tensor reference_of(const nlohmann::json& c) {
  return SafetensorsFile::open(data_dir() / c.at("reference").get<std::string>()).load("sample");
}

// max|out - ref| / max(1, max|ref|): the bound is relative to the output's scale.
using ltxmps_test::scaled_error;

void check_case(const std::string& name) {
  const auto c = find_case(name);
  const auto model = load_case_model(c);
  const auto out = model.forward(inputs_of(c));
  CHECK(out.scalar_type() == model.runtime.dtype);
  const double err = scaled_error(out, reference_of(c));
  const double bound = c.at("bound").get<double>();
  std::cout << "transformer parity " << name << ": max abs error / max(1, max|ref|) = " << err << " (bound " << bound
            << ")\n";
  CHECK(err <= bound);
}

}  // namespace

// The bounds live in transformer_oracle.py (FP32_BOUND = 1e-4, BF16_BOUND = 1.6e-2, FP16_BOUND = 2e-3, with
// the reasoning)
// and reach the test through cases.json; they are checked here to never be loosened silently.
TEST_CASE("transformer parity: bounds are the documented ones", "[parity][transformer]") {
  for (const auto& c : cases()) {
    INFO(c.at("name").get<std::string>());
    const auto dtype = c.at("dtype").get<std::string>();
    CHECK(c.at("bound").get<double>() == (dtype == "bf16" ? 1.6e-2 : dtype == "fp16" ? 2e-3 : 1e-4));
  }
}

TEST_CASE("transformer parity: diffusers unit-test config (integer RoPE grid, D % 6 = 4)", "[parity][transformer]") {
  check_case("unit");
}
TEST_CASE("transformer parity: D % 6 = 0, 3 layers, sharded, rope_interpolation_scale", "[parity][transformer]") {
  check_case("d24_rope_scale");
}
TEST_CASE("transformer parity: padded text mask", "[parity][transformer]") { check_case("d24_text_mask"); }
TEST_CASE("transformer parity: per-token timesteps [B, S]", "[parity][transformer]") {
  check_case("d24_per_token_timestep");
}
TEST_CASE("transformer parity: timestep [B, 1]", "[parity][transformer]") { check_case("d24_timestep_b1"); }
TEST_CASE("transformer parity: explicit video_coords", "[parity][transformer]") { check_case("d24_video_coords"); }
// Note [RoPE once per batch]: one row of video_coords for the whole batch is the same forward, bit for bit, as that
// row repeated for every batch row.
TEST_CASE("transformer: one row of video_coords for the batch equals the row repeated", "[transformer]") {
  const auto c = find_case("d24_video_coords");
  const auto model = load_case_model(c);
  auto in = inputs_of(c);
  REQUIRE(in.video_coords);
  const int64_t B = in.hidden_states.size(0);
  REQUIRE(B > 1);
  const auto shared = in.video_coords->narrow(0, 0, 1).clone();
  auto repeated = in;
  repeated.video_coords = shared.expand({B, -1, -1}).contiguous();
  auto once = in;
  once.video_coords = shared;
  CHECK(at::equal(model.forward(once), model.forward(repeated)));
}
TEST_CASE("transformer parity: bf16 (bf16 variant file, bf16 inputs)", "[parity][transformer]") {
  check_case("d24_bf16");
}
TEST_CASE("transformer parity: fp16 (fp32 file converted at load, fp16 inputs)", "[parity][transformer]") {
  check_case("d24_fp16");
}
TEST_CASE("transformer parity: Lightricks single file, config inferred and given", "[parity][transformer]") {
  check_case("lightricks_single_file");
  const auto c = find_case("lightricks_single_file");
  const auto config = TransformerConfig::from_file(data_dir() / "lightricks_config.json");
  const auto inferred = load_case_model(c);
  CHECK(inferred.config.num_layers == config.num_layers);
  CHECK(inferred.config.attention_head_dim == config.attention_head_dim);
  CHECK(inferred.config.caption_channels == config.caption_channels);
  const auto given = load_lightricks_transformer(data_dir() / "lightricks_model.safetensors", {}, config);
  CHECK(at::equal(given.forward(inputs_of(c)), inferred.forward(inputs_of(c))));
}
TEST_CASE("transformer parity: float32 upcast attention kernel vs diffusers SDPA", "[parity][transformer]") {
  check_case("d24_upcast_kernel");
}
TEST_CASE("transformer parity: affine norms, bias-free attention, exact GELU, patch 2, out_channels null",
          "[parity][transformer]") {
  check_case("fields");
}

TEST_CASE("transformer: attention capture reads probabilities and leaves the output unchanged", "[transformer]") {
  const auto c = find_case("d24_text_mask");
  const auto model = load_case_model(c);
  const auto in = inputs_of(c);
  const auto plain = model.forward(in);

  std::map<int64_t, double> worst_row_sum_error;
  std::map<int64_t, int64_t> rows_seen;
  AttentionCapture capture;
  capture.layers = {0, 2};
  capture.query_chunk = 17;  // not a divisor of S = 72: the last chunk is short
  capture.visit = [&](int64_t layer, int64_t begin, const at::Tensor& probs) {
    CHECK(probs.scalar_type() == at::kFloat);
    CHECK(probs.size(0) == 2);
    CHECK(probs.size(1) == 3);
    CHECK(probs.size(3) == 72);
    CHECK(begin == rows_seen[layer]);
    rows_seen[layer] += probs.size(2);
    const double e = (probs.sum(-1) - 1).abs().max().item<double>();
    worst_row_sum_error[layer] = std::max(worst_row_sum_error[layer], e);
  };
  const auto captured = model.forward(in, &capture);
  CHECK(at::equal(plain, captured));
  REQUIRE(rows_seen.size() == 2);
  CHECK(rows_seen[0] == 72);
  CHECK(rows_seen[2] == 72);
  CHECK(worst_row_sum_error[0] < 1e-5);
  CHECK(worst_row_sum_error[2] < 1e-5);

  std::map<int64_t, at::Tensor> maps;
  const auto head_mean = head_mean_capture({1}, {24, 48}, {0, 24}, maps, 10);
  model.forward(in, &head_mean);
  REQUIRE(maps.count(1) == 1);
  CHECK(maps[1].sizes() == at::IntArrayRef({2, 24, 24}));
  // Frame 1's queries over frame 0's keys: a part of each row, so the sums lie in (0, 1].
  const auto sums = maps[1].sum(-1);
  CHECK(sums.min().item<double>() > 0.0);
  CHECK(sums.max().item<double>() <= 1.0 + 1e-6);

  AttentionCapture bad = capture;
  bad.layers = {3};
  CHECK_THROWS_WITH(model.forward(in, &bad), ltxmps_test::Contains("layer 3 is out of range"));
}

TEST_CASE("transformer: forward input validation", "[transformer]") {
  const auto c = find_case("d24_rope_scale");
  const auto model = load_case_model(c);
  auto in = inputs_of(c);
  {
    auto bad = in;
    bad.num_frames = 2;
    CHECK_THROWS_WITH(model.forward(bad), ltxmps_test::Contains("num_frames * height * width"));
  }
  {
    auto bad = in;
    bad.timestep = at::zeros({2, 5});
    CHECK_THROWS_WITH(model.forward(bad), ltxmps_test::Contains("timestep must be [2], [2, 1] or [2, 72]"));
  }
  {
    auto bad = in;
    bad.num_frames.reset();
    CHECK_THROWS_WITH(model.forward(bad), ltxmps_test::Contains("video_coords or all of num_frames"));
  }
  {
    auto bad = in;
    bad.video_coords = at::zeros({2, 2, 72});
    CHECK_THROWS_WITH(model.forward(bad), ltxmps_test::Contains("video_coords must be [2, 3, 72] or [1, 3, 72]"));
  }
  {
    auto bad = in;
    bad.hidden_states = at::zeros({2, 72, 7});
    CHECK_THROWS_WITH(model.forward(bad), ltxmps_test::Contains("in_channels is 8"));
  }
  {
    auto bad = in;
    bad.encoder_attention_mask = at::ones({2, 9});
    CHECK_THROWS_WITH(model.forward(bad), ltxmps_test::Contains("encoder_attention_mask must be [2, 10]"));
  }
}

TEST_CASE("transformer: config.json and strict loading errors", "[transformer]") {
  const auto src = data_dir() / "unit_model";
  const auto dir = fs::temp_directory_path() / ("ltxmps_tf_config_" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  auto config = read_json_file(src / "config.json");
  auto weights = load_all(src / "diffusion_pytorch_model.safetensors");
  auto write = [&](const nlohmann::json& cfg, const std::vector<std::pair<std::string, at::Tensor>>& w) {
    std::ofstream(dir / "config.json") << cfg.dump();
    save_safetensors(dir / "diffusion_pytorch_model.safetensors", w);
  };

  SECTION("defaults are diffusers'") {
    const auto d = TransformerConfig::from_json(nlohmann::json::object());
    CHECK(d.in_channels == 128);
    CHECK(d.out_channels == 128);
    CHECK(d.num_attention_heads == 32);
    CHECK(d.attention_head_dim == 64);
    CHECK(d.cross_attention_dim == 2048);
    CHECK(d.num_layers == 28);
    CHECK(d.caption_channels == 4096);
    CHECK(d.norm_eps == 1e-6);
    CHECK_FALSE(d.norm_elementwise_affine);
    CHECK(d.activation_fn == "gelu-approximate");
  }
  SECTION("unknown field") {
    auto cfg = config;
    cfg["num_heads"] = 2;
    write(cfg, weights);
    CHECK_THROWS_WITH(load_transformer(dir, {}), ltxmps_test::ContainsAll({"unknown field 'num_heads'", "config.json"}));
  }
  SECTION("unsupported qk_norm") {
    auto cfg = config;
    cfg["qk_norm"] = "rms_norm";
    CHECK_THROWS_WITH(TransformerConfig::from_json(cfg, "x/config.json"), ltxmps_test::Contains("x/config.json: qk_norm 'rms_norm'"));
  }
  SECTION("wrong type") {
    auto cfg = config;
    cfg["num_layers"] = "one";
    CHECK_THROWS_WITH(TransformerConfig::from_json(cfg), ltxmps_test::Contains("field 'num_layers' has the wrong type"));
  }
  SECTION("missing tensor") {
    auto w = weights;
    w.erase(std::remove_if(w.begin(), w.end(), [](const auto& p) { return p.first == "transformer_blocks.0.attn2.norm_k.weight"; }),
            w.end());
    write(config, w);
    CHECK_THROWS_WITH(load_transformer(dir, {}), ltxmps_test::Contains("transformer_blocks.0.attn2.norm_k.weight"));
  }
  SECTION("unexpected tensor") {
    auto w = weights;
    w.emplace_back("transformer_blocks.0.norm1.weight", at::ones({16}));
    write(config, w);
    CHECK_THROWS_WITH(load_transformer(dir, {}), ltxmps_test::Contains("transformer_blocks.0.norm1.weight"));
  }
  SECTION("shape mismatch") {
    auto cfg = config;
    cfg["caption_channels"] = 17;
    write(cfg, weights);
    CHECK_THROWS_WITH(load_transformer(dir, {}), ltxmps_test::Contains("caption_projection.linear_1.weight"));
  }
  remove_tree(dir);
}

#ifdef LTXMPS_CLI_PATH
TEST_CASE("ltxmps forward transformer CLI matches diffusers", "[parity][transformer][cli]") {
  const auto c = find_case("d24_rope_scale");
  const auto out = fs::temp_directory_path() / ("ltxmps_tf_cli_" + std::to_string(::getpid()) + ".safetensors");
  const auto& args = c.at("args");
  const std::string command = std::string("\"") + LTXMPS_CLI_PATH + "\" forward transformer --model-dir \"" +
                              (data_dir() / c.at("model").get<std::string>()).string() + "\" --inputs \"" +
                              (data_dir() / c.at("inputs").get<std::string>()).string() + "\" --output \"" +
                              out.string() + "\" --device cpu --precision fp32" +
                              " --arg num_frames=" + std::to_string(args.at("num_frames").get<int>()) +
                              " --arg height=" + std::to_string(args.at("height").get<int>()) +
                              " --arg width=" + std::to_string(args.at("width").get<int>());
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  const auto sample = SafetensorsFile::open(out).load("sample");
  CHECK(sample.scalar_type() == at::kFloat);
  const double err = scaled_error(sample, reference_of(c));
  std::cout << "transformer parity CLI d24_rope_scale: " << err << " (bound 1e-4)\n";
  CHECK(err <= 1e-4);
  fs::remove(out);

  // Usage errors exit with 2.
  const std::string bad = std::string("\"") + LTXMPS_CLI_PATH + "\" forward transformer --model-dir x --inputs y --output z --arg frames=3 2>/dev/null";
  const int rc = std::system(bad.c_str());
  CHECK(WIFEXITED(rc));
  CHECK(WEXITSTATUS(rc) == 2);
}
#endif
