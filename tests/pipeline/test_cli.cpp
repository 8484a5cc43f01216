// The `ltxmps` binary end to end (its path comes from CMake as LTXMPS_CLI_PATH): `plan`, `generate` with the
// embedded default (PNG folder and MP4, deterministic per seed, image- and video-to-video, --fit, the two-pass flow
// with --upscaler), exit codes (2 for usage errors naming the argument, 1 for other errors) and no partial outputs.
#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;
using ltxmps_test::Contains;
using ltxmps_test::ContainsAll;

namespace cli_test {

fs::path work_dir() {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  const fs::path root = env && *env ? fs::path(env) : fs::temp_directory_path() / "ltxmps_test_data";
  return root / "cli";
}

fs::path fresh_dir(const std::string& sub) {
  const auto dir = work_dir() / sub;
  remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

std::string slurp(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::string quote(const std::string& arg) {
  std::string out = "'";
  for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Run {
  int code = -1;
  std::string out, err;
};

// Runs `ltxmps args...` in `dir`, capturing stdout and stderr.
Run run_ltxmps(const std::vector<std::string>& args, const fs::path& dir = work_dir()) {
  fs::create_directories(dir);
  std::string command = "cd " + quote(dir.string()) + " && " + quote(LTXMPS_CLI_PATH);
  for (const auto& a : args) command += " " + quote(a);
  const auto out = dir / ".stdout", err = dir / ".stderr";
  command += " >" + quote(out.string()) + " 2>" + quote(err.string());
  const int status = std::system(command.c_str());
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

bool has_partial(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().string().find(".partial") != std::string::npos) return true;
  return false;
}

}  // namespace cli_test

using namespace cli_test;

TEST_CASE("ltxmps plan prints this or a simulated machine's plan", "[cli]") {
  const auto mps = run_ltxmps({"plan", "--json", "--simulate", "mps"});
  INFO(mps.err);
  REQUIRE(mps.code == 0);
  const auto json = nlohmann::json::parse(mps.out);
  CHECK(json["device"] == "mps");
  CHECK(json["precision"]["resolved"] == "fp16");
  CHECK(json["attention"] == "upcast");
  CHECK(json["precision"]["vae"]["compute"] == "float32");

  const auto vae16 = run_ltxmps({"plan", "--json", "--simulate", "cuda", "--no-vae-float32", "--precision", "fp16",
                             "--cpu-offload"});
  REQUIRE(vae16.code == 0);
  const auto cuda = nlohmann::json::parse(vae16.out);
  CHECK(cuda["precision"]["vae"]["compute"] == "float16");
  CHECK(cuda["offload"]["enabled"] == true);

  const auto here = run_ltxmps({"plan"});
  CHECK(here.code == 0);
  CHECK_THAT(here.out, ContainsAll({"device:", "precision:", "reasons:"}));

  const auto bad = run_ltxmps({"plan", "--simulate", "tpu"});
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Contains("--simulate"));

  // A planner refusal names the setting it refuses; the device is context, not the culprit.
  const auto fp8_cpu = run_ltxmps({"plan", "--device", "cpu", "--fp8-matmul"});
  CHECK(fp8_cpu.code == 2);
  CHECK_THAT(fp8_cpu.err, ContainsAll({"cannot plan the run on --device cpu: fp8_matmul (--fp8-matmul) needs"}));
  const auto fp8_attention_cpu = run_ltxmps({"plan", "--device", "cpu", "--fp8-attention"});
  CHECK(fp8_attention_cpu.code == 2);
  CHECK_THAT(fp8_attention_cpu.err,
             ContainsAll({"cannot plan the run on --device cpu: fp8_attention (--fp8-attention) needs"}));
  const auto fp8_attention_hopper = run_ltxmps({"plan", "--simulate", "cuda", "--precision", "bf16", "--fp8-attention"});
  CHECK(fp8_attention_hopper.code == 0);
  CHECK_THAT(fp8_attention_hopper.out, ContainsAll({"self-attention: fp8", "precision.attention.fp8"}));
  const auto bad_device = run_ltxmps({"plan", "--device", "cuda:x"});
  CHECK(bad_device.code == 2);
  CHECK_THAT(bad_device.err, ContainsAll({"--device", "cuda:x", "must be a number"}));
}

TEST_CASE("ltxmps plan --simulate with memory: the 13B model's weights per machine", "[cli]") {
  const auto card24 = run_ltxmps({"plan", "--simulate", "cuda-24gb"});
  INFO(card24.err);
  REQUIRE(card24.code == 0);
  CHECK_THAT(card24.out, ContainsAll({"weights planned for the LTX-Video 13B shapes", "budget 24.0 GiB",
                                      "transformer : streamed, 2 blocks ahead",
                                      "streamed from pinned host memory, 2 blocks ahead"}));
  const auto json = nlohmann::json::parse(run_ltxmps({"plan", "--json", "--simulate", "cuda-24gb", "--stream-weights",
                                                      "off"}).out);
  CHECK(json["weights"]["transformer"]["mode"] == "fp8");
  const auto mac = nlohmann::json::parse(run_ltxmps({"plan", "--json", "--simulate", "mac-64gb"}).out);
  CHECK(mac["weights"]["transformer"]["mode"] == "resident");
  const auto small = run_ltxmps({"plan", "--simulate", "cuda-8gb"});
  CHECK(small.code == 0);
  CHECK_THAT(small.out, ContainsAll({"OVER BUDGET", "(vae decode)", "decode in tiles (vae_tiling)"}));
  const auto budget = nlohmann::json::parse(
      run_ltxmps({"plan", "--json", "--simulate", "cuda-24gb", "--max-gpu-memory", "80 GiB"}).out);
  CHECK(budget["weights"]["budget_source"] == "max_device_memory");
  CHECK(budget["weights"]["transformer"]["mode"] == "resident");

  const auto parsecs = run_ltxmps({"plan", "--max-gpu-memory", "8 parsecs"});
  CHECK(parsecs.code == 2);
  CHECK_THAT(parsecs.err, ContainsAll({"--max-gpu-memory '8 parsecs'", "8GiB"}));
  const auto mps_stream = run_ltxmps({"plan", "--simulate", "mac-64gb", "--stream-weights", "on"});
  CHECK(mps_stream.code != 0);
  CHECK_THAT(mps_stream.err, ContainsAll({"stream_weights=on", "unified"}));
}

TEST_CASE("ltxmps generate with the embedded default writes a deterministic video", "[cli]") {
  const auto dir = fresh_dir("generate");
  const auto a = run_ltxmps({"generate", "--output", "a", "--seed", "7", "--save-latents", "a.safetensors"}, dir);
  INFO(a.err);
  REQUIRE(a.code == 0);
  CHECK_THAT(a.err, ContainsAll({"execution plan", "device:", "embedded default", "RANDOM", "noise-like", "step 4/4",
                                 "wrote a"}));
  CHECK(a.out == "a\n");
  const auto frames_a = read_video(dir / "a");
  CHECK(frames_a.sizes() == at::IntArrayRef({9, 3, 64, 64}));
  CHECK(frames_a.std().item<double>() > 0.01);  // noise-like, not blank
  const auto latents = load_all(dir / "a.safetensors");
  REQUIRE(latents.size() == 1);
  CHECK(latents[0].second.sizes() == at::IntArrayRef({1, 8, 2, 2, 2}));

  const auto again = run_ltxmps({"generate", "--output", "b", "--seed", "7"}, dir);
  REQUIRE(again.code == 0);
  CHECK(at::equal(read_video(dir / "b"), frames_a));

  const auto other = run_ltxmps({"generate", "--output", "c", "--seed", "8"}, dir);
  REQUIRE(other.code == 0);
  CHECK_FALSE(at::equal(read_video(dir / "c"), frames_a));

  // Sizes and steps from the options.
  const auto sized = run_ltxmps({"generate", "--output", "d", "--height", "64", "--width", "96", "--num-frames", "17",
                             "--steps", "2", "--guidance-scale", "1"},
                            dir);
  INFO(sized.err);
  REQUIRE(sized.code == 0);
  CHECK(read_video(dir / "d").sizes() == at::IntArrayRef({17, 3, 64, 96}));
  CHECK_THAT(sized.err, Contains("step 2/2"));
  CHECK_FALSE(has_partial(dir));
}

TEST_CASE("ltxmps generate writes MP4 through FFmpeg, or says it cannot", "[cli]") {
  const auto dir = fresh_dir("mp4");
  const auto r = run_ltxmps({"generate", "--output", "out.mp4", "--num-frames", "17"}, dir);
  INFO(r.err);
  if (!video_io_has_ffmpeg()) {
    WARN("built without FFmpeg: checking the MP4 refusal instead of the MP4 output");
    CHECK(r.code == 2);
    CHECK_THAT(r.err, ContainsAll({"--output out.mp4", "FFmpeg", "folder"}));
    CHECK_FALSE(fs::exists(dir / "out.mp4"));
    return;
  }
  REQUIRE(r.code == 0);
  CHECK_THAT(r.err, ContainsAll({"wrote out.mp4", "mp4"}));
  CHECK(read_video(dir / "out.mp4").sizes() == at::IntArrayRef({17, 3, 64, 64}));
  // The default output name.
  const auto d = run_ltxmps({"generate", "--steps", "1"}, dir);
  REQUIRE(d.code == 0);
  CHECK(read_video(dir / "ltxmps_default.mp4").size(0) == 9);
  // Video-to-video from the MP4.
  const auto v2v = run_ltxmps({"generate", "--video", "out.mp4", "--strength", "0.5", "--output", "v2v.mp4"}, dir);
  INFO(v2v.err);
  REQUIRE(v2v.code == 0);
  CHECK_THAT(v2v.err, ContainsAll({"video-to-video", "step 2/2"}));
  CHECK(read_video(dir / "v2v.mp4").sizes() == at::IntArrayRef({17, 3, 64, 64}));
  CHECK_FALSE(has_partial(dir));
}

TEST_CASE("ltxmps generate conditions on images and videos and fits them", "[cli]") {
  const auto dir = fresh_dir("inputs");
  auto g = at::detail::createCPUGenerator(3);
  write_png(dir / "odd.png", at::rand({3, 70, 100}, g));
  write_png(dir / "fits.png", at::rand({3, 64, 96}, g));

  const auto i2v = run_ltxmps({"generate", "--image", "fits.png", "--output", "i2v"}, dir);
  INFO(i2v.err);
  REQUIRE(i2v.code == 0);
  CHECK_THAT(i2v.err, Contains("image-to-video"));
  CHECK(read_video(dir / "i2v").sizes() == at::IntArrayRef({9, 3, 64, 96}));

  const auto odd = run_ltxmps({"generate", "--image", "odd.png", "--output", "odd"}, dir);
  CHECK(odd.code == 1);
  CHECK_THAT(odd.err, ContainsAll({"odd.png", "64 or 96", "96 or 128", "--fit crop", "--fit resize"}));
  CHECK_FALSE(fs::exists(dir / "odd"));
  const auto cropped = run_ltxmps({"generate", "--image", "odd.png", "--fit", "crop", "--output", "cropped"}, dir);
  REQUIRE(cropped.code == 0);
  CHECK(read_video(dir / "cropped").sizes() == at::IntArrayRef({9, 3, 64, 96}));
  const auto resized = run_ltxmps(
      {"generate", "--image", "odd.png", "--fit", "resize", "--height", "64", "--width", "64", "--output", "resized"}, dir);
  REQUIRE(resized.code == 0);
  CHECK(read_video(dir / "resized").sizes() == at::IntArrayRef({9, 3, 64, 64}));

  // A PNG frame folder of 10 frames: not 8k+1 without --fit, trimmed to 9 with it.
  write_video(dir / "clip", at::rand({10, 3, 64, 64}, g));
  const auto untrimmed = run_ltxmps({"generate", "--video", "clip", "--output", "v"}, dir);
  CHECK(untrimmed.code == 1);
  CHECK_THAT(untrimmed.err, ContainsAll({"clip", "10 frames", "9 or 17", "--fit trim"}));
  const auto trimmed = run_ltxmps({"generate", "--video", "clip", "--fit", "trim", "--output", "v"}, dir);
  INFO(trimmed.err);
  REQUIRE(trimmed.code == 0);
  CHECK(read_video(dir / "v").sizes() == at::IntArrayRef({9, 3, 64, 64}));
  CHECK_FALSE(has_partial(dir));
}

// A random LTXLatentUpsamplerModel folder (config.json + weights) for the embedded default's 8 latent channels.
static void write_upsampler_folder(const fs::path& dir) {
  fs::create_directories(dir);
  LatentUpsamplerConfig config;
  config.in_channels = 8, config.mid_channels = 32, config.num_blocks_per_stage = 1;
  std::ofstream(dir / "config.json") << nlohmann::json{{"_class_name", "LTXLatentUpsamplerModel"},
                                                       {"in_channels", config.in_channels},
                                                       {"mid_channels", config.mid_channels},
                                                       {"num_blocks_per_stage", config.num_blocks_per_stage},
                                                       {"dims", config.dims},
                                                       {"spatial_upsample", true},
                                                       {"temporal_upsample", false}}
                                           .dump();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  auto g = at::detail::createCPUGenerator(5);
  (void)LatentUpsamplerModel::from_weights(config, {}, [&](const std::string& name, const std::vector<int64_t>& shape) {
    tensors.emplace_back(name, at::randn(shape, g).mul_(0.1));
    return tensors.back().second;
  });
  save_safetensors(dir / "diffusion_pytorch_model.safetensors", tensors);
}

TEST_CASE("ltxmps generate --upscaler: the two passes, their sizes said once", "[cli][multi_scale]") {
  const auto dir = fresh_dir("two_pass");
  write_upsampler_folder(dir / "upsampler");
  const auto r = run_ltxmps({"generate", "--upscaler", "upsampler", "--height", "96", "--width", "96", "--steps", "1",
                             "--second-pass-steps", "3", "--guidance-scale", "1", "--output", "out"},
                            dir);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(read_video(dir / "out").sizes() == at::IntArrayRef({9, 3, 96, 96}));
  // The library's pipeline.multi_scale_sizes diagnostic is the only sizes line (the CLI prints its sink).
  const std::string sizes = "first pass 64x64 (96x96 x 0.666667), second pass 128x128";
  CHECK_THAT(r.err, Contains("pipeline: " + sizes));
  const auto first = r.err.find(sizes);
  CHECK((first != std::string::npos && r.err.find(sizes, first + 1) == std::string::npos));
  CHECK_FALSE(has_partial(dir));
}

TEST_CASE("ltxmps generate: usage errors exit 2 naming the argument, other errors 1", "[cli]") {
  const auto dir = fresh_dir("errors");
  struct Case {
    std::vector<std::string> args;
    int code;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {{"--steps", "abc"}, 2, {"--steps", "positive integer", "abc"}},
      {{"--height", "50"}, 2, {"--height 50", "32 or 64"}},
      {{"--width", "100"}, 2, {"--width 100", "96 or 128"}},
      {{"--num-frames", "10"}, 2, {"--num-frames 10", "9 or 17"}},
      {{"--fit", "bogus"}, 2, {"--fit", "bogus"}},
      {{"--strength", "0.5"}, 2, {"--strength", "--video"}},
      {{"--guidance-scale", "-1"}, 2, {"--guidance-scale", "-1"}},
      {{"--image", "missing.png"}, 2, {"--image", "missing.png"}},
      {{"--bogus-option"}, 2, {"--bogus-option"}},
      {{"--model-dir", "no_such_model", "--prompt", "x"}, 1, {"--model-dir", "no_such_model", "no such folder"}},
      {{"--model-dir", "."}, 2, {"--prompt"}},
      {{"--output", "missing_folder/out"}, 2, {"--output", "missing_folder"}},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args{"generate"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto r = run_ltxmps(args, dir);
    INFO(args[1] << " -> " << r.err);
    CHECK(r.code == c.code);
    CHECK_THAT(r.err, ContainsAll(c.message));
  }
  CHECK_FALSE(fs::exists(dir / "ltxmps_default.mp4"));
  CHECK_FALSE(fs::exists(dir / "ltxmps_default"));
}
