// Readers against hostile files: a PNG header declaring 100000x100000 pixels, FIFOs and devices where files
// belong (an error, never a hang; a FIFO is not "no such file"), config.json values that are fractional or whose
// products overflow (a named error, never a truncation or a SIGFPE). Each case runs the library and the CLI.
#include "robustness_support.hpp"

#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/tokenizer.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include <cmath>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <future>
#include <thread>

#include "catch_compat.hpp"

using namespace robustness;
using namespace ltxmps::pipeline;
using ltxmps_test::Contains;
using ltxmps_test::ContainsAll;

namespace {

// The message of what `fn` throws, or "" when it returns. A call still blocked after 10 s fails the test; the
// FIFO `unblock` is then opened for writing so that the blocked reader returns and the suite goes on.
std::string error_within_10s(const std::function<void()>& fn, const fs::path& unblock = {}) {
  auto result = std::async(std::launch::async, [fn]() -> std::string {
    try {
      fn();
      return "";
    } catch (const std::exception& e) {
      return e.what();
    }
  });
  if (result.wait_for(std::chrono::seconds(10)) == std::future_status::timeout) {
    if (!unblock.empty()) {
      const int fd = ::open(unblock.c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) ::close(fd);
    }
    FAIL("the call blocked for more than 10 s");
  }
  return result.get();
}

void write_text(const fs::path& file, const nlohmann::json& json) { write_bytes(file, json.dump()); }

}  // namespace

TEST_CASE("a PNG header declaring 100000x100000 pixels is refused before anything is allocated", "[robustness]") {
  const auto dir = fresh_dir("png_header");
  write_bytes(dir / "small.png", png_bytes(3, 2));
  const auto small = read_png(dir / "small.png");
  REQUIRE(small.sizes() == at::IntArrayRef({3, 2, 3}));
  CHECK(std::abs(small[0][1][2].item<float>() - 14.0 / 255.0) < 1e-6);  // red = 7 x, at x = 2

  const auto huge = png_bytes(2, 2, 100000, 100000);
  CHECK(huge.size() < 100);
  write_bytes(dir / "huge.png", huge);
  for (const auto& read : std::vector<std::function<void()>>{[&] { read_png(dir / "huge.png"); },
                                                             [&] { read_image(dir / "huge.png"); },
                                                             [&] { read_video(dir / "huge.png"); }})
    CHECK_THAT(error_within_10s(read), ContainsAll({"huge.png", "100000x100000", "16384"}));
  fs::create_directories(dir / "frames");
  write_bytes(dir / "frames" / "frame_00000.png", huge);
  CHECK_THAT(error_within_10s([&] { read_video(dir / "frames"); }), ContainsAll({"frame_00000.png", "100000x100000"}));

  const auto before = snapshot(dir);
  const auto r = run_cli({"generate", "--image", "huge.png", "--output", "out"}, {dir});
  INFO(r.err);
  CHECK_FALSE(r.timed_out);
  CHECK(r.code == 1);
  CHECK_THAT(r.err, ContainsAll({"huge.png", "100000x100000"}));
  CHECK(snapshot(dir) == before);  // no output, no temporaries, the image unchanged
}

TEST_CASE("FIFOs and devices where files belong are refused without blocking", "[robustness]") {
  const auto dir = fresh_dir("fifo");
  const auto fifo = dir / "pipe";
  make_fifo(fifo);
  const std::vector<std::pair<std::string, std::function<void()>>> readers = {
      {"read_json_file", [&] { read_json_file(fifo); }},
      {"SafetensorsFile::open", [&] { SafetensorsFile::open(fifo); }},
      {"load_prompt_cache", [&] { load_prompt_cache(fifo); }},
      {"read_png", [&] { read_png(fifo); }},
      {"read_image", [&] { read_image(fifo); }},
      {"read_video", [&] { read_video(fifo); }},
      {"T5Tokenizer::from_model_file", [&] { T5Tokenizer::from_model_file(fifo); }},
  };
  for (const auto& [name, read] : readers) {
    INFO(name);
    const auto message = error_within_10s(read, fifo);
    CHECK_THAT(message, ContainsAll({"pipe", "FIFO"}));
    CHECK(message.find("no such file") == std::string::npos);
  }
  fs::create_directories(dir / "tokenizer");
  make_fifo(dir / "tokenizer" / "spiece.model");
  const auto tokenizer = error_within_10s([&] { T5Tokenizer::load(dir / "tokenizer"); }, dir / "tokenizer" / "spiece.model");
  CHECK_THAT(tokenizer, ContainsAll({"tokenizer model", "spiece.model", "FIFO"}));
  CHECK(tokenizer.find("no such file") == std::string::npos);
  CHECK_THAT(error_within_10s([] { T5Tokenizer::from_model_file("/dev/zero"); }), Contains("character device"));
  CHECK_THAT(error_within_10s([] { read_json_file("/dev/zero"); }), Contains("character device"));
  CHECK_THAT(error_within_10s([] { read_png("/dev/zero"); }), Contains("character device"));
  CHECK_THAT(error_within_10s([&] { read_png(dir); }), Contains("is a folder"));
  CHECK_THAT(error_within_10s([&] { read_png(dir / "absent.png"); }), Contains("no such file"));
}

TEST_CASE("the CLI refuses FIFOs as config.json, model_index.json, --video, --image, --inputs", "[robustness]") {
  const auto dir = fresh_dir("fifo_cli");
  fs::create_directories(dir / "transformer");
  make_fifo(dir / "transformer" / "config.json");
  make_fifo(dir / "clip.mp4");
  make_fifo(dir / "image.png");
  make_fifo(dir / "inputs.safetensors");
  for (const auto* sub : {"vae", "transformer", "scheduler", "text_encoder", "tokenizer"})
    fs::create_directories(dir / "model" / sub);
  make_fifo(dir / "model" / "model_index.json");
  write_transformer_inputs(dir / "in.safetensors");
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {{"forward", "transformer", "--model-dir", "transformer", "--inputs", "in.safetensors", "--output", "o.safetensors"},
       {"config.json", "FIFO"}},
      {{"forward", "transformer", "--model-dir", "transformer", "--inputs", "inputs.safetensors", "--output", "o.safetensors"},
       {"inputs.safetensors", "FIFO"}},
      {{"generate", "--video", "clip.mp4", "--output", "out"}, {"clip.mp4", "FIFO"}},
      {{"generate", "--image", "image.png", "--output", "out"}, {"image.png", "FIFO"}},
      {{"generate", "--model-dir", "model", "--prompt", "x", "--output", "out"}, {"model_index.json", "FIFO"}},
  };
  const auto before = snapshot(dir);
  for (const auto& c : cases) {
    const auto r = run_cli(c.args, {dir, {}, 60});
    INFO(c.args[0] << " " << c.args[1] << " " << c.args[2] << " -> " << r.err);
    CHECK_FALSE(r.timed_out);
    CHECK((r.code == 1 || r.code == 2));
    CHECK_THAT(r.err, ContainsAll(c.message));
    CHECK(r.err.find("no such file") == std::string::npos);
  }
  CHECK(snapshot(dir) == before);
}

TEST_CASE("config integers must be integers in range, and no size product overflows", "[robustness]") {
  auto transformer = tiny_transformer_config();
  const auto error = [](const std::function<void()>& fn) { return error_within_10s(fn); };
  SECTION("transformer") {
    auto c = transformer;
    c["patch_size"] = 1.9;
    CHECK_THAT(error([&] { TransformerConfig::from_json(c, "t/config.json"); }),
               ContainsAll({"t/config.json", "field 'patch_size' is 1.9, expected an integer"}));
    c["patch_size"] = 2.0;
    CHECK_THAT(error([&] { TransformerConfig::from_json(c); }), Contains("field 'patch_size' is 2.0, expected an integer"));
    c = transformer;
    c["patch_size_t"] = int64_t{1} << 62;
    CHECK_THAT(error([&] { TransformerConfig::from_json(c); }),
               Contains("patch_size_t = 4611686018427387904 is out of range (expected 1 to 64)"));
    c["patch_size_t"] = nlohmann::json::parse("18446744073709551616");
    CHECK_THAT(error([&] { TransformerConfig::from_json(c); }), ContainsAll({"'patch_size_t'", "expected an integer"}));
    c["patch_size_t"] = uint64_t{18446744073709551615ULL};
    CHECK_THAT(error([&] { TransformerConfig::from_json(c); }), ContainsAll({"'patch_size_t'", "expected an integer from"}));
    c = transformer;
    c["num_attention_heads"] = 1 << 20;
    c["attention_head_dim"] = 1 << 20;
    CHECK_THAT(error([&] { TransformerConfig::from_json(c); }), ContainsAll({"inner dim", "out of range"}));
    c = transformer;
    c["norm_eps"] = "small";
    CHECK_THAT(error([&] { TransformerConfig::from_json(c); }), Contains("field 'norm_eps' has the wrong type"));
  }
  SECTION("vae") {
    auto c = tiny_vae_config();
    c["spatial_compression_ratio"] = int64_t{1} << 62;
    CHECK_THAT(error([&] { VaeConfig::from_json(c); }), Contains("spatial_compression_ratio = 4611686018427387904 is out of range"));
    c = tiny_vae_config();
    c["spatio_temporal_scaling"] = std::vector<bool>(40, true);
    CHECK_THAT(error([&] { VaeConfig::from_json(c); }), ContainsAll({"spatial compression", "out of range"}));
    c = tiny_vae_config();
    c["layers_per_block"] = {1, 1.5, 1, 1, 1};
    CHECK_THAT(error([&] { VaeConfig::from_json(c); }), Contains("field 'layers_per_block' is 1.5, expected an integer"));
  }
  SECTION("t5") {
    auto c = tiny_t5_config();
    c["num_layers"] = 2.5;
    CHECK_THAT(error([&] { T5Config::from_json(c); }), Contains("field 'num_layers' is 2.5, expected an integer"));
    c = tiny_t5_config();
    c["d_kv"] = int64_t{1} << 62;
    CHECK_THAT(error([&] { T5Config::from_json(c, "te/config.json"); }),
               ContainsAll({"te/config.json", "d_kv = 4611686018427387904 is out of range (expected 1 to 1048576)"}));
    c = tiny_t5_config();
    c["num_heads"] = 1 << 20;
    c["d_kv"] = 1 << 20;
    CHECK_THAT(error([&] { T5Config::from_json(c, "te/config.json"); }),
               ContainsAll({"te/config.json", "inner dim num_heads * d_kv = 1099511627776 is out of range"}));
    c = tiny_t5_config();
    c["num_layers"] = int64_t{1} << 40;
    CHECK_THAT(error([&] { T5Config::from_json(c); }), Contains("num_layers = 1099511627776 is out of range"));
    c = tiny_t5_config();
    c["relative_attention_num_buckets"] = int64_t{1} << 40;
    CHECK_THAT(error([&] { T5Config::from_json(c); }),
               Contains("relative_attention_num_buckets = 1099511627776 is out of range (expected 4 to 1048576)"));
    const auto dir = fresh_dir("t5_config");
    c = tiny_t5_config();
    c["d_model"] = 0;
    write_text(dir / "config.json", c);
    CHECK_THAT(error([&] { T5Config::from_file(dir / "config.json"); }),
               ContainsAll({(dir / "config.json").string(), "d_model = 0 is out of range"}));
    T5Config built;  // a config built in code, checked by validate() alone
    built.num_heads = int64_t{1} << 32;
    CHECK_THAT(error([&] { built.validate(); }), Contains("T5Config: num_heads = 4294967296 is out of range"));
  }
  SECTION("fit rules of configs built in code") {
    VaeConfig vae = VaeConfig::from_json(tiny_vae_config());
    vae.spatial_compression_ratio = int64_t{1} << 40;
    TransformerConfig t = TransformerConfig::from_json(transformer);
    t.patch_size = int64_t{1} << 30;
    CHECK_THAT(error([&] { fit_rules(vae, t); }), Contains("not a positive size"));
  }
}

TEST_CASE("the CLI names an overflowing or fractional config.json and exits 1 (no SIGFPE)", "[robustness]") {
  const auto dir = fresh_dir("config_cli");
  write_transformer(dir / "transformer");
  write_transformer_inputs(dir / "in.safetensors");
  auto config = tiny_transformer_config();
  config["patch_size_t"] = int64_t{1} << 62;
  write_text(dir / "transformer" / "config.json", config);
  const std::vector<std::string> forward = {"forward", "transformer", "--model-dir", "transformer", "--inputs",
                                            "in.safetensors", "--output", "o.safetensors", "--arg", "num_frames=2",
                                            "--arg", "height=2", "--arg", "width=2"};
  auto r = run_cli(forward, {dir});
  INFO(r.err);
  CHECK(r.code == 1);
  CHECK_THAT(r.err, ContainsAll({"config.json", "patch_size_t = 4611686018427387904 is out of range"}));
  config["patch_size_t"] = 1;
  config["patch_size"] = 1.9;
  write_text(dir / "transformer" / "config.json", config);
  r = run_cli(forward, {dir});
  CHECK(r.code == 1);
  CHECK_THAT(r.err, ContainsAll({"config.json", "field 'patch_size' is 1.9, expected an integer"}));
  CHECK_FALSE(fs::exists(dir / "o.safetensors"));

  // generate reads every config before anything loads: the size rules' product used to overflow to 0 there.
  for (const auto* sub : {"vae", "transformer", "scheduler", "text_encoder", "tokenizer"})
    fs::create_directories(dir / "ltx" / sub);
  write_text(dir / "ltx" / "model_index.json", {{"_class_name", "LTXPipeline"}});
  write_text(dir / "ltx" / "vae" / "config.json", tiny_vae_config());
  write_text(dir / "ltx" / "text_encoder" / "config.json", tiny_t5_config());
  write_text(dir / "ltx" / "scheduler" / "scheduler_config.json", {{"_class_name", "FlowMatchEulerDiscreteScheduler"}});
  config["patch_size"] = 1;
  config["patch_size_t"] = int64_t{1} << 62;
  write_text(dir / "ltx" / "transformer" / "config.json", config);
  r = run_cli({"generate", "--model-dir", "ltx", "--prompt", "x", "--output", "out"}, {dir});
  INFO(r.err);
  CHECK(r.code == 1);
  CHECK_THAT(r.err, ContainsAll({"config.json", "patch_size_t", "out of range"}));
  CHECK_FALSE(fs::exists(dir / "out"));
}
