// C++ LTX-Video pipelines and scheduler against diffusers 0.42.1 (tests/parity/pipeline_oracle.py writes the
// folders, cases and references). Every pipeline case loads a folder written by `pipe.save_pretrained` with
// load_ltx_model and a CPU fp32 plan, runs generate() with the oracle's seed and arguments and compares the
// latents and the frames: max|C++ - diffusers| <= 1e-4 * max(1, max|reference|).

#include "catch_compat.hpp"
#include "parity_support.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/safetensors.hpp"

#include "ltxmps/plan.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <string>

#include <unistd.h>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace {

// The bound of every fp32 case (also written by the oracle into cases.json; checked equal below).
constexpr double kFp32Bound = 1e-4;

fs::path data_dir() { return ltxmps_test::parity_data_dir("pipeline"); }

using ltxmps_test::cpu_fp32_plan;

using ltxmps_test::read_tensors;

nlohmann::json find_case(const std::string& name) {
  for (const auto& c : read_json_file(data_dir() / "cases.json"))
    if (c.at("name") == name) return c;
  FAIL("no oracle case " << name);
  return {};
}

// max|out - ref| / max(1, max|ref|): the bound is relative to the output's scale.
using ltxmps_test::scaled_error;

void check_output(const std::string& name, const std::string& what, const at::Tensor& out, const at::Tensor& ref) {
  const double err = scaled_error(out, ref);
  std::cout << "pipeline parity " << name << " " << what << ": max abs error / max(1, max|ref|) = " << err
            << " (bound " << kFp32Bound << ")\n";
  CHECK(err <= kFp32Bound);
}

PipelineKind kind_of(const std::string& kind) {
  if (kind == "text_to_video") return PipelineKind::text_to_video;
  if (kind == "image_to_video") return PipelineKind::image_to_video;
  REQUIRE(kind == "condition");
  return PipelineKind::condition;
}

GenerateRequest request_of(const nlohmann::json& c) {
  const auto& a = c.at("args");
  GenerateRequest r;
  r.kind = kind_of(c.at("kind"));
  r.prompts.clear();
  if (a.at("prompt").is_array())
    for (const auto& p : a.at("prompt")) r.prompts.push_back(p);
  else
    r.prompts.push_back(a.at("prompt"));
  if (a.contains("negative_prompt")) r.negative_prompts = {a.at("negative_prompt").get<std::string>()};
  r.height = a.at("height");
  r.width = a.at("width");
  r.num_frames = a.at("num_frames");
  r.num_inference_steps = a.at("num_inference_steps");
  r.max_sequence_length = a.at("max_sequence_length").get<int64_t>();
  r.guidance_scale = a.value("guidance_scale", 3.0);
  r.guidance_rescale = a.value("guidance_rescale", 0.0);
  r.frame_rate = a.value("frame_rate", 25.0);
  r.decode_timestep = a.value("decode_timestep", 0.0);
  if (a.contains("decode_noise_scale")) r.decode_noise_scale = a.at("decode_noise_scale").get<double>();
  r.denoise_strength = a.value("denoise_strength", 1.0);
  r.seed = c.at("seed");
  std::map<std::string, at::Tensor> in;
  if (!c.at("inputs").empty()) in = read_tensors(data_dir() / "cases" / c.at("name").get<std::string>() / "inputs.safetensors");
  if (in.count("image")) r.image = in.at("image");
  if (in.count("latents")) r.latents = in.at("latents");
  if (a.contains("conditions")) {
    int i = 0;
    for (const auto& cond : a.at("conditions")) {
      VideoCondition vc;
      vc.frames = in.at("c" + std::to_string(i++));
      vc.frame_index = cond.at("frame_index");
      vc.strength = cond.at("strength");
      r.conditions.push_back(vc);
    }
  }
  return r;
}

void check_case(const std::string& name) {
  INFO(name);
  const auto c = find_case(name);
  CHECK(c.at("bound").get<double>() == kFp32Bound);
  const auto plan = cpu_fp32_plan();
  auto model = load_ltx_model(data_dir() / c.at("model").get<std::string>(), plan);
  const auto request = request_of(c);
  std::vector<ltxmps::Diagnostic> diagnostics;
  int64_t steps_seen = 0;
  const auto result = generate(model, request, plan, ltxmps::collect_into(diagnostics),
                               step_progress([&](int64_t step, int64_t total) {
                                 ++steps_seen;
                                 CHECK(step == steps_seen);
                                 CHECK(total >= step);
                               }));
  CHECK(steps_seen >= 1);
  CHECK(ltxmps::has_rule(diagnostics, "pipeline.text_encoder_released"));
  CHECK_FALSE(model.text_encoder->loaded());
  const auto ref = read_tensors(data_dir() / "cases" / name / "reference.safetensors");
  CHECK(result.frames.scalar_type() == at::kFloat);
  CHECK(result.frames.device().is_cpu());
  CHECK(result.latents.scalar_type() == at::kFloat);
  check_output(name, "latents", result.latents, ref.at("latents"));
  check_output(name, "frames", result.frames, ref.at("frames"));
}

GenerateRequest small_t2v_request() {
  GenerateRequest r;
  r.prompts = {"a cat"};
  r.height = 32;
  r.width = 32;
  r.num_frames = 9;
  r.num_inference_steps = 2;
  r.max_sequence_length = 16;
  return r;
}

fs::path scratch_copy(const std::string& model, const std::string& tag) {
  const auto dst = fs::temp_directory_path() / ("ltxmps_pipeline_" + tag + "_" + std::to_string(::getpid()));
  remove_tree(dst);
  copy_tree(data_dir() / model, dst);
  return dst;
}

std::string load_error(const fs::path& folder, const LoadOptions& options = {}) {
  try {
    load_ltx_model(folder, cpu_fp32_plan(), options);
  } catch (const ltxmps::Error& e) {
    return e.what();
  }
  return "no error";
}

std::string generate_error(LtxModel& model, const GenerateRequest& r) {
  try {
    generate(model, r, cpu_fp32_plan());
  } catch (const ltxmps::Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Scheduler

TEST_CASE("scheduler parity: set_timesteps against FlowMatchEulerDiscreteScheduler", "[parity][pipeline][scheduler]") {
  const auto cases = read_json_file(data_dir() / "scheduler_cases.json");
  const auto ref = read_tensors(data_dir() / "scheduler.safetensors");
  for (const auto& c : cases.at("set_timesteps")) {
    const std::string name = c.at("name");
    INFO(name);
    FlowMatchEulerScheduler s(FlowMatchSchedulerConfig::from_json(c.at("config"), name));
    const int64_t steps = c.at("num_inference_steps").is_null() ? 0 : c.at("num_inference_steps").get<int64_t>();
    std::optional<std::vector<double>> sigmas, timesteps;
    std::optional<double> mu;
    if (!c.at("ltx_sigmas").is_null()) {
      const int64_t n = c.at("ltx_sigmas");
      sigmas = numpy_linspace(1.0, 1.0 / static_cast<double>(n), n);
    }
    if (!c.at("sigmas").is_null()) sigmas = c.at("sigmas").get<std::vector<double>>();
    if (!c.at("timesteps").is_null()) timesteps = c.at("timesteps").get<std::vector<double>>();
    if (!c.at("mu").is_null()) mu = c.at("mu").get<double>();
    s.set_timesteps(steps, sigmas, mu, timesteps);
    const auto& rt = ref.at(name + ".timesteps");
    const auto& rs = ref.at(name + ".sigmas");
    REQUIRE(s.timesteps().sizes() == rt.sizes());
    REQUIRE(s.sigmas().sizes() == rs.sizes());
    // numpy float32/float64 arithmetic reproduced operation by operation: bit-exact.
    const double et = (s.timesteps() - rt).abs().max().item<double>();
    const double es = (s.sigmas() - rs).abs().max().item<double>();
    std::cout << "scheduler parity " << name << ": max abs error timesteps " << et << ", sigmas " << es << "\n";
    CHECK(et == 0.0);
    CHECK(es == 0.0);
  }
}

TEST_CASE("scheduler parity: calculate_shift and linear_quadratic_schedule", "[parity][pipeline][scheduler]") {
  const auto cases = read_json_file(data_dir() / "scheduler_cases.json");
  const auto ref = read_tensors(data_dir() / "scheduler.safetensors");
  for (const auto& c : cases.at("calculate_shift")) {
    const double mu = calculate_shift(c.at("seq_len"), c.at("base"), c.at("max_len"), c.at("base_shift"),
                                      c.at("max_shift"));
    CHECK(mu == c.at("mu").get<double>());
  }
  for (const auto& n : cases.at("linear_quadratic")) {
    const int64_t steps = n.get<int64_t>();
    INFO("N = " << steps);
    const auto sigmas = linear_quadratic_schedule(steps);
    const auto mine = at::tensor(sigmas, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
    const auto& r = ref.at("lq_" + std::to_string(steps));
    REQUIRE(mine.sizes() == r.sizes());
    CHECK((mine - r).abs().max().item<double>() == 0.0);
    // As the condition pipeline uses it: sigmas * 1000 as custom timesteps.
    FlowMatchEulerScheduler s;
    const auto ts = mine * 1000;
    std::vector<double> custom(ts.data_ptr<float>(), ts.data_ptr<float>() + ts.numel());
    s.set_timesteps(0, std::nullopt, std::nullopt, custom);
    CHECK((s.timesteps() - ref.at("lq_" + std::to_string(steps) + ".timesteps")).abs().max().item<double>() == 0.0);
    CHECK((s.sigmas() - ref.at("lq_" + std::to_string(steps) + ".sigmas")).abs().max().item<double>() == 0.0);
  }
  const auto two = linear_quadratic_schedule(2);  // diffusers' condition pipeline test: N = 2 gives [1.0, 0.975]
  REQUIRE(two.size() == 2);
  CHECK(two[0] == 1.0);
  CHECK(static_cast<float>(two[1]) == 0.975f);
}

TEST_CASE("scheduler: config errors name the field and the file", "[pipeline][scheduler]") {
  REQUIRE_THROWS_WITH(FlowMatchSchedulerConfig::from_json(nlohmann::json{{"shift", 1.0}, {"foo_bar", 2}}, "x.json"),
                      ltxmps_test::ContainsAll({"x.json", "unknown field 'foo_bar'"}));
  REQUIRE_THROWS_WITH(FlowMatchSchedulerConfig::from_json(nlohmann::json{{"shift", "big"}}, "x.json"),
                      ltxmps_test::ContainsAll({"x.json", "'shift'"}));
  REQUIRE_THROWS_WITH(FlowMatchSchedulerConfig::from_json(nlohmann::json{{"_class_name", "DDIMScheduler"}}, "x.json"),
                      ltxmps_test::Contains("DDIMScheduler"));
  FlowMatchSchedulerConfig dynamic;
  dynamic.use_dynamic_shifting = true;
  FlowMatchEulerScheduler s(dynamic);
  REQUIRE_THROWS_WITH(s.set_timesteps(4), ltxmps_test::Contains("mu"));
}

// ---------------------------------------------------------------------------------------------------
// Pipelines

TEST_CASE("pipeline parity: text-to-video, guidance 3 and off", "[parity][pipeline]") {
  check_case("t2v_cfg");
  check_case("t2v_no_cfg");
}
TEST_CASE("pipeline parity: text-to-video, guidance rescale, two prompts, negative prompt", "[parity][pipeline]") {
  check_case("t2v_rescale_batch2");
}
TEST_CASE("pipeline parity: text-to-video, timestep-conditioned VAE, decode timestep and noise", "[parity][pipeline]") {
  check_case("t2v_decode_noise");
  check_case("t2v_decode_timestep");
}
TEST_CASE("pipeline parity: image-to-video", "[parity][pipeline]") {
  check_case("i2v_cfg");
  check_case("i2v_no_cfg_signed");
}
TEST_CASE("pipeline parity: condition, image at frame 0 with guidance", "[parity][pipeline]") {
  check_case("cond_image_cfg");
}
TEST_CASE("pipeline parity: condition, video at frame 0 and an image at frame 8", "[parity][pipeline]") {
  check_case("cond_video_and_late_image");
}
TEST_CASE("pipeline parity: condition, video at frame 4 (prefix tokens), guidance rescale", "[parity][pipeline]") {
  check_case("cond_video_prefix_cfg");
}
TEST_CASE("pipeline parity: condition without conditioning", "[parity][pipeline]") { check_case("cond_none_cfg"); }
TEST_CASE("pipeline parity: condition, video-to-video (denoise_strength with latents)", "[parity][pipeline]") {
  check_case("cond_v2v");
  check_case("cond_v2v_image_cfg");
}

TEST_CASE("pipeline parity: a prompt cache instead of the text encoder gives the same video", "[parity][pipeline]") {
  const auto c = find_case("t2v_cfg");
  const auto plan = cpu_fp32_plan();
  const auto folder = data_dir() / "t2v";
  auto with_encoder = load_ltx_model(folder, plan);
  auto request = request_of(c);
  EncodePromptOptions options;
  options.prompts = request.prompts;
  options.negative_prompts = request.negative_prompts;
  options.max_sequence_length = *request.max_sequence_length;
  request.prompt_embeddings = encode_prompt(*with_encoder.tokenizer, *with_encoder.text_encoder, options);
  LoadOptions no_encoder;
  no_encoder.load_text_encoder = false;
  auto model = load_ltx_model(folder, plan, no_encoder);
  CHECK_FALSE(model.text_encoder.has_value());
  const auto result = generate(model, request, plan);
  const auto ref = read_tensors(data_dir() / "cases" / "t2v_cfg" / "reference.safetensors");
  check_output("t2v_cfg (prompt cache)", "frames", result.frames, ref.at("frames"));
  // Without a cache the released encoder cannot be used again.
  request.prompt_embeddings.reset();
  REQUIRE_THROWS_WITH(generate(model, request, plan), ltxmps_test::ContainsAll({"text encoder", "prompt"}));
}

// ---------------------------------------------------------------------------------------------------
// Bad inputs

TEST_CASE("pipeline: load errors name the missing subfolder, file or class", "[pipeline][errors]") {
  SECTION("missing subfolder") {
    const auto folder = scratch_copy("t2v", "novae");
    remove_tree(folder / "vae");
    CHECK_THAT(load_error(folder), ltxmps_test::ContainsAll({"missing subfolder", "vae"}));
    remove_tree(folder);
  }
  SECTION("missing text encoder is fine without it") {
    const auto folder = scratch_copy("t2v", "note");
    remove_tree(folder / "text_encoder");
    CHECK_THAT(load_error(folder), ltxmps_test::ContainsAll({"missing subfolder", "text_encoder"}));
    LoadOptions options;
    options.load_text_encoder = false;
    CHECK(load_error(folder, options) == "no error");
    remove_tree(folder);
  }
  SECTION("missing file") {
    const auto folder = scratch_copy("t2v", "nosched");
    fs::remove(folder / "scheduler" / "scheduler_config.json");
    CHECK_THAT(load_error(folder), ltxmps_test::ContainsAll({"missing file", "scheduler_config.json"}));
    fs::remove(folder / "model_index.json");
    CHECK_THAT(load_error(folder), ltxmps_test::ContainsAll({"missing file", "model_index.json"}));
    remove_tree(folder);
  }
  SECTION("unknown pipeline class") {
    const auto folder = scratch_copy("t2v", "badclass");
    std::ofstream(folder / "model_index.json") << R"({"_class_name": "StableDiffusionPipeline"})";
    CHECK_THAT(load_error(folder), ltxmps_test::ContainsAll({"StableDiffusionPipeline", "LTXPipeline"}));
    remove_tree(folder);
  }
  SECTION("unknown scheduler config field") {
    const auto folder = scratch_copy("t2v", "badsched");
    auto config = read_json_file(folder / "scheduler" / "scheduler_config.json");
    config["mystery_knob"] = 3;
    std::ofstream(folder / "scheduler" / "scheduler_config.json") << config.dump();
    CHECK_THAT(load_error(folder), ltxmps_test::ContainsAll({"scheduler_config.json", "unknown field 'mystery_knob'"}));
    remove_tree(folder);
  }
}

TEST_CASE("pipeline: impossible sizes and arguments are errors that say how to fit", "[pipeline][errors]") {
  const auto plan = cpu_fp32_plan();
  LoadOptions options;
  options.load_text_encoder = false;
  auto model = load_ltx_model(data_dir() / "t2v", plan, options);
  auto r = small_t2v_request();
  // Embeddings stand in for the released text encoder.
  r.prompt_embeddings = PromptEmbeddings{at::randn({1, 16, 32}), at::ones({1, 16}, at::kBool), at::randn({1, 16, 32}),
                                         at::ones({1, 16}, at::kBool)};
  SECTION("height") {
    r.height = 30;
    CHECK_THAT(generate_error(model, r), ltxmps_test::ContainsAll({"multiples of 4", "32 for the released models"}));
  }
  SECTION("frames") {
    r.num_frames = 10;
    CHECK_THAT(generate_error(model, r), ltxmps_test::ContainsAll({"num_frames (10)", "4k+1", "9"}));
  }
  SECTION("steps") {
    r.num_inference_steps = 0;
    CHECK_THAT(generate_error(model, r), ltxmps_test::Contains("num_inference_steps"));
  }
  SECTION("guidance") {
    r.guidance_scale = -1;
    CHECK_THAT(generate_error(model, r), ltxmps_test::Contains("guidance_scale"));
  }
  SECTION("image shape") {
    r.kind = PipelineKind::image_to_video;
    r.image = at::rand({3, 16, 32});
    CHECK_THAT(generate_error(model, r), ltxmps_test::ContainsAll({"image", "[3, 32, 32]"}));
  }
  SECTION("condition shape") {
    r.kind = PipelineKind::condition;
    r.conditions.push_back(VideoCondition{at::rand({2, 32, 32}), 0, 1.0});
    CHECK_THAT(generate_error(model, r), ltxmps_test::ContainsAll({"condition 0", "[F, 3, 32, 32]"}));
  }
  SECTION("embedding width") {
    r.prompt_embeddings->prompt_embeds = at::randn({1, 16, 7});
    CHECK_THAT(generate_error(model, r), ltxmps_test::Contains("caption_channels"));
  }
}

TEST_CASE("pipeline: NaN in the loop is an error naming the step", "[pipeline][errors]") {
  const auto plan = cpu_fp32_plan();
  LoadOptions options;
  options.load_text_encoder = false;
  auto model = load_ltx_model(data_dir() / "t2v", plan, options);
  model.transformer.proj_out.weight.fill_(std::numeric_limits<float>::quiet_NaN());
  auto r = small_t2v_request();
  r.prompt_embeddings = PromptEmbeddings{at::randn({1, 16, 32}), at::ones({1, 16}, at::kBool), at::randn({1, 16, 32}),
                                         at::ones({1, 16}, at::kBool)};
  int64_t steps = 0;
  try {
    generate(model, r, plan, ltxmps::null_sink(), step_progress([&](int64_t, int64_t) { ++steps; }));
    FAIL("no error");
  } catch (const ltxmps::Error& e) {
    CHECK_THAT(std::string(e.what()), ltxmps_test::ContainsAll({"NaN", "step 1 of 2"}));
  }
  CHECK(steps == 0);
}
