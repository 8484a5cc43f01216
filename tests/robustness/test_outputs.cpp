// Outputs: validated before any work (empty, missing folder, unwritable, a FIFO, the same file as an input or as
// another output), written atomically (an existing output survives a failed, cancelled or interrupted run intact),
// concurrent writers that each finish with a complete file, and SIGINT/SIGTERM during the final write leaving no
// temporaries.
#include "robustness_support.hpp"

#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "catch_compat.hpp"

using namespace robustness;
using namespace ltxmps::pipeline;
using ltxmps_test::Contains;
using ltxmps_test::ContainsAll;

namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

const std::vector<std::string> kForwardArgs = {"--arg", "num_frames=2", "--arg", "height=2", "--arg", "width=2"};

std::vector<std::string> forward_transformer(const std::string& inputs, const std::string& output) {
  std::vector<std::string> args = {"forward", "transformer", "--model-dir", "transformer", "--inputs", inputs,
                                   "--output", output};
  args.insert(args.end(), kForwardArgs.begin(), kForwardArgs.end());
  return args;
}

}  // namespace

TEST_CASE("check_output_paths refuses bad outputs before any work, naming the option", "[robustness]") {
  const auto dir = fresh_dir("check_outputs");
  write_bytes(dir / "in.safetensors", "x");
  fs::create_symlink(dir / "in.safetensors", dir / "link.safetensors");
  fs::create_hard_link(dir / "in.safetensors", dir / "hard.safetensors");
  make_fifo(dir / "pipe.safetensors");
  fs::create_directories(dir / "folder");
  fs::create_directories(dir / "frames");
  write_bytes(dir / "frames" / "frame_00000.png", png_bytes(2, 2));
  write_bytes(dir / "frames" / "notes.txt", "keep");
  const std::vector<InputPath> inputs = {{"--inputs", dir / "in.safetensors"}, {"--image", ""}};
  const auto check = [&](const OutputPath& o) { return error_of([&] { check_output_paths({o}, inputs); }); };

  CHECK(check({"--output", dir / "new.safetensors"}).empty());
  CHECK_THAT(check({"--output", ""}), Contains("--output '': the path is empty"));
  CHECK_THAT(check({"--output", dir / "missing" / "x.safetensors"}), ContainsAll({"--output", "missing", "does not exist"}));
  CHECK_THAT(check({"--output", dir / "in.safetensors" / "x"}), ContainsAll({"--output", "not a folder"}));
  CHECK_THAT(check({"--output", "/proc/x.safetensors"}), ContainsAll({"--output /proc/x.safetensors", "cannot create files"}));
  CHECK_THAT(check({"--output", dir / "pipe.safetensors"}), ContainsAll({"--output", "FIFO"}));
  CHECK_THAT(check({"--output", dir / "folder"}), ContainsAll({"--output", "is a folder"}));
  CHECK_THAT(check({"--output", dir / "in.safetensors"}), ContainsAll({"--output", "is the same file as --inputs"}));
  CHECK_THAT(check({"--output", dir / "folder" / ".." / "in.safetensors"}), Contains("is the same file as --inputs"));
  CHECK_THAT(check({"--output", dir / "link.safetensors"}), Contains("is the same file as --inputs"));
  CHECK_THAT(check({"--output", dir / "hard.safetensors"}), Contains("is the same file as --inputs"));
  CHECK_THAT(check({"--output", dir / "frames", OutputKind::video}), ContainsAll({"--output", "notes.txt", "not replacing"}));
  CHECK_THAT(error_of([&] {
               check_output_paths({{"--output", dir / "a"}, {"--save-latents", dir / "." / "a"}});
             }),
             Contains("--save-latents " + (dir / "." / "a").string() + ": is the same file as --output"));
  fs::remove(dir / "frames" / "notes.txt");
  CHECK(check({"--output", dir / "frames", OutputKind::video}).empty());
  CHECK_THAT(error_of([&] {
               check_output_paths({{"--output", dir / "frames", OutputKind::video}},
                                  {{"--image", dir / "frames" / "frame_00000.png"}});
             }),
             ContainsAll({"--output", "holds --image"}));
  if (!video_io_has_ffmpeg())
    CHECK_THAT(check({"--output", dir / "x.mp4", OutputKind::video}), Contains("without FFmpeg"));
  CHECK(temporaries_in(dir).empty());
}

TEST_CASE("an existing output survives a failed or cancelled write unchanged", "[robustness]") {
  const auto dir = fresh_dir("atomic");
  // A safetensors file: cancelled before it starts, and cancelled in the middle of a 512 MiB write.
  save_safetensors(dir / "out.safetensors", {{"x", at::arange(4)}});
  const auto before = snapshot(dir);
  request_cancellation(SIGINT);
  CHECK_THAT(error_of([&] { save_safetensors(dir / "out.safetensors", {{"x", at::zeros({4})}}); }),
             Contains("interrupted by SIGINT"));
  clear_cancellation();
  const auto big = at::ones({int64_t{128} << 20});
  std::string message;  // Catch2 assertions stay on the main thread
  std::thread writer([&] { message = error_of([&] { save_safetensors(dir / "out.safetensors", {{"x", big}}); }); });
  for (int i = 0; i < 100000 && temporaries_in(dir).empty(); ++i) std::this_thread::sleep_for(std::chrono::microseconds(20));
  request_cancellation(SIGTERM);
  writer.join();
  clear_cancellation();
  CHECK_THAT(message, Contains("interrupted by SIGTERM"));
  CHECK(snapshot(dir) == before);

  // A folder of PNG frames whose write fails at frame 3, over an existing one.
  auto g = at::detail::createCPUGenerator(5);
  write_video(dir / "frames", at::rand({4, 3, 32, 32}, g));
  const auto frames_before = snapshot(dir);
  VideoWriteOptions failing;
  failing.on_frame = [](int64_t frame, int64_t) {
    if (frame == 3) throw ltxmps::Error("disk full (simulated)");
  };
  CHECK_THAT(error_of([&] { write_video(dir / "frames", at::rand({6, 3, 32, 32}, g), failing); }), Contains("disk full"));
  CHECK(snapshot(dir) == frames_before);
  if (video_io_has_ffmpeg()) {
    write_video(dir / "clip.mp4", at::rand({3, 3, 32, 32}, g));
    const auto mp4_before = snapshot(dir);
    CHECK_THAT(error_of([&] { write_video(dir / "clip.mp4", at::rand({6, 3, 32, 32}, g), failing); }), Contains("disk full"));
    CHECK(snapshot(dir) == mp4_before);
  }
}

TEST_CASE("concurrent writers of one output each finish with a complete file", "[robustness]") {
  const auto dir = fresh_dir("concurrent");
  const auto file = dir / "shared.safetensors";
  constexpr int kWriters = 4, kRounds = 10;
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w)
    threads.emplace_back([&, w] {
      for (int i = 0; i < kRounds; ++i) save_safetensors(file, {{"x", at::full({1 << 16}, static_cast<float>(w))}});
    });
  for (auto& t : threads) t.join();
  const auto x = load_all(file).at(0).second;
  const float value = x[0].item<float>();
  CHECK(at::equal(x, at::full({1 << 16}, value)));  // one writer's complete tensor, not a mix
  CHECK(temporaries_in(dir).empty());

  // Two CLI runs writing the same PNG-frame folder: both succeed and the result is one run's video.
  const auto a = run_cli({"generate", "--output", "ref1", "--seed", "1"}, {dir});
  const auto b = run_cli({"generate", "--output", "ref2", "--seed", "2"}, {dir});
  REQUIRE(a.code == 0);
  REQUIRE(b.code == 0);
  Run first, second;
  std::thread other([&] { second = run_cli({"generate", "--output", "same", "--seed", "2"}, {dir}); });
  first = run_cli({"generate", "--output", "same", "--seed", "1"}, {dir});
  other.join();
  INFO(first.err << second.err);
  CHECK(first.code == 0);
  CHECK(second.code == 0);
  const auto video = read_video(dir / "same");
  CHECK((at::equal(video, read_video(dir / "ref1")) || at::equal(video, read_video(dir / "ref2"))));
  CHECK(temporaries_in(dir).empty());
}

TEST_CASE("the CLI refuses an output that is an input, and leaves inputs and outputs unchanged", "[robustness]") {
  const auto dir = fresh_dir("same_file");
  write_transformer(dir / "transformer");
  write_transformer_inputs(dir / "in.safetensors");
  write_transformer_inputs(dir / "nan.safetensors", std::numeric_limits<float>::quiet_NaN());
  fs::create_symlink("in.safetensors", dir / "alias.safetensors");
  save_safetensors(dir / "out.safetensors", {{"previous", at::arange(3)}});
  const auto before = snapshot(dir);
  for (const auto& output : {"in.safetensors", "alias.safetensors", "./in.safetensors"}) {
    const auto r = run_cli(forward_transformer("in.safetensors", output), {dir});
    INFO(r.err);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, ContainsAll({std::string("--output ") + output, "is the same file as --inputs in.safetensors"}));
  }
  // A run that fails after the outputs were checked (NaN input) leaves the existing output as it was.
  const auto failed = run_cli(forward_transformer("nan.safetensors", "out.safetensors"), {dir});
  CHECK(failed.code == 1);
  CHECK_THAT(failed.err, ContainsAll({"nan.safetensors", "hidden_states", "NaN"}));
  CHECK(snapshot(dir) == before);
  // And a good run replaces it.
  const auto ok = run_cli(forward_transformer("in.safetensors", "out.safetensors"), {dir});
  INFO(ok.err);
  REQUIRE(ok.code == 0);
  CHECK(load_all(dir / "out.safetensors").at(0).first == "sample");
  CHECK(temporaries_in(dir).empty());

  // generate: --output equal to --video, and --save-latents equal to --output.
  auto g = at::detail::createCPUGenerator(9);
  write_video(dir / "clip", at::rand({9, 3, 64, 64}, g));
  const auto with_clip = snapshot(dir);
  auto r = run_cli({"generate", "--video", "clip", "--output", "clip"}, {dir});
  INFO(r.err);
  CHECK(r.code == 2);
  CHECK_THAT(r.err, ContainsAll({"--output clip", "--video clip"}));
  r = run_cli({"generate", "--output", "out.safetensors", "--save-latents", "out.safetensors"}, {dir});
  INFO(r.err);
  CHECK(r.code == 2);
  CHECK_THAT(r.err, ContainsAll({"--save-latents", "--output"}));
  r = run_cli({"generate", "--output", "fresh", "--save-latents", "no_folder/latents.safetensors"}, {dir});
  CHECK(r.code == 2);
  CHECK_THAT(r.err, ContainsAll({"--save-latents", "no_folder"}));
  CHECK(snapshot(dir) == with_clip);
}

TEST_CASE("SIGINT/SIGTERM during the final write leave no temporaries and the old output intact", "[robustness]") {
  const auto dir = fresh_dir("signals");
  const std::vector<std::string> big = {"generate", "--num-frames", "97", "--height", "192", "--width", "192",
                                        "--steps", "1"};
  const auto run_signalled = [&](const std::string& output, std::vector<int> signals) {
    auto args = big;
    args.insert(args.end(), {"--output", output});
    bool sent = false;
    RunOptions options{dir};
    options.timeout_s = 300;
    options.while_running = [&](int pid) {
      if (temporaries_in(dir).empty()) return false;  // the final write has not started yet
      for (int s : signals) ::kill(pid, s);
      sent = true;
      return true;
    };
    const auto r = run_cli(args, options);
    INFO(r.err);
    REQUIRE(sent);  // else the write finished between two polls: make it longer
    return r;
  };
  auto g = at::detail::createCPUGenerator(3);
  write_video(dir / "frames", at::rand({2, 3, 32, 32}, g));
  const auto before = snapshot(dir);

  auto r = run_signalled("frames", {SIGINT});
  CHECK(r.code == 130);
  CHECK_THAT(r.err, Contains("interrupted by SIGINT"));
  CHECK(snapshot(dir) == before);

  r = run_signalled("frames", {SIGTERM});
  CHECK(r.code == 143);
  CHECK(snapshot(dir) == before);

  // A second signal exits at once; the handler removes the temporary folder itself.
  r = run_signalled("frames", {SIGTERM, SIGTERM});
  CHECK(r.code == 143);
  CHECK(snapshot(dir) == before);

  if (video_io_has_ffmpeg()) {
    r = run_signalled("clip.mp4", {SIGINT});
    CHECK(r.code == 130);
    CHECK(snapshot(dir) == before);
  }
}
