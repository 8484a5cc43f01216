// Video IO (video_io.hpp): PNG frame folders and images (exact 8-bit round trip), video files through FFmpeg
// (round trip within a tolerance; skipped with a message in a build without FFmpeg), the fit rules and every
// --fit mode, no partial output after a failed write, and errors that name a corrupt input.
#include "ltxmps/error.hpp"
#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include <ATen/ATen.h>

#include <cstdlib>
#include <fstream>
#include <stdexcept>

// Last: c10/util/Logging.h (reached through ltxmps/random.hpp) defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;
using ltxmps_test::Contains;
using ltxmps_test::ContainsAll;

namespace video_io_test {

// A fresh folder for one test under LTXMPS_TEST_DATA (set by CTest) or the temp folder.
fs::path fresh_dir(const std::string& sub) {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  const fs::path root = env && *env ? fs::path(env) : fs::temp_directory_path() / "ltxmps_test_data";
  const fs::path dir = root / "video_io" / sub;
  remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const fs::path& file, const std::string& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Random 8-bit values as floats k/255: exactly representable after a round trip.
at::Tensor random_8bit_frames(int64_t f, int64_t h, int64_t w, uint64_t seed) {
  auto g = at::detail::createCPUGenerator(seed);
  return at::randint(0, 256, {f, 3, h, w}, g, at::kLong).to(at::kFloat).div(255.0);
}

// A smooth moving colour pattern (video codecs keep it well).
at::Tensor smooth_frames(int64_t f, int64_t h, int64_t w) {
  auto t = at::arange(f, at::kFloat).view({f, 1, 1, 1});
  auto y = at::arange(h, at::kFloat).view({1, 1, h, 1}) / h;
  auto x = at::arange(w, at::kFloat).view({1, 1, 1, w}) / w;
  auto c = at::arange(3, at::kFloat).view({1, 3, 1, 1});
  return (0.5 + 0.4 * at::sin(6.0 * x + 4.0 * y + 0.3 * t + 2.0 * c)).expand({f, 3, h, w}).contiguous();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

size_t count_entries(const fs::path& dir) {
  size_t n = 0;
  for (auto it = fs::directory_iterator(dir); it != fs::directory_iterator(); ++it) ++n;
  return n;
}

}  // namespace video_io_test

using namespace video_io_test;

TEST_CASE("PNG frame folders and images round-trip exactly at 8 bits", "[video_io]") {
  const auto dir = fresh_dir("png_round_trip");
  const auto frames = random_8bit_frames(5, 24, 40, 1);
  const auto out = dir / "frames";
  const auto result = write_video(out, frames);
  CHECK(result.path == out);
  CHECK(result.frames == 5);
  CHECK(result.height == 24);
  CHECK(result.width == 40);
  CHECK(result.encoder == "png");
  CHECK(fs::is_regular_file(out / "frame_00000.png"));
  CHECK(fs::is_regular_file(out / "frame_00004.png"));
  CHECK(count_entries(out) == 5);
  CHECK_FALSE(fs::exists(dir / "frames.partial"));

  const auto back = read_video(out);
  REQUIRE(back.sizes() == frames.sizes());
  CHECK(back.scalar_type() == at::kFloat);
  CHECK(at::equal(back, frames));

  // Values are clamped and rounded to 8 bits.
  const auto off = frames * 1.2 - 0.1 + 0.3 / 255.0;
  write_video(out, off);  // replaces the earlier frames folder
  CHECK(at::equal(read_video(out), off.clamp(0.0, 1.0).mul(255.0).round().div(255.0)));

  const auto image = random_8bit_frames(1, 17, 9, 2)[0];
  write_png(dir / "image.png", image);
  CHECK(at::equal(read_png(dir / "image.png"), image));
  CHECK(at::equal(read_image(dir / "image.png"), image));
  CHECK(at::equal(read_video(dir / "image.png"), image.unsqueeze(0)));
}

TEST_CASE("video files round-trip through FFmpeg within tolerance", "[video_io]") {
  const auto dir = fresh_dir("ffmpeg_round_trip");
  const auto frames = smooth_frames(9, 64, 96);
  if (!video_io_has_ffmpeg()) {
    WARN("built without FFmpeg: the MP4 round trip is skipped; checking the error message instead");
    CHECK_THAT(error_of([&] { write_video(dir / "out.mp4", frames); }), ContainsAll({"out.mp4", "FFmpeg", "PNG"}));
    CHECK_FALSE(fs::exists(dir / "out.mp4"));
    CHECK_THAT(error_of([&] { read_image(dir / "photo.jpg"); }), Contains("photo.jpg"));
    return;
  }
  // Tolerance: 8-bit yuv420p (BT.601, chroma 4:2:0) with libx264 at CRF 18 or mpeg4 at q 2 keeps this smooth
  // pattern's mean absolute error under 1% of the range (measured 0.55%) and every value within 10% (measured 6.5%).
  const double mean_tol = 0.01, max_tol = 0.10;
  SECTION("H.264 (libx264 where present)") {
    VideoWriteOptions options;
    options.frame_rate = 12.0;
    const auto result = write_video(dir / "out.mp4", frames, options);
    CHECK(result.format == "mp4");
    CHECK((result.encoder == "libx264" || result.encoder == "mpeg4"));
    CHECK((result.encoder == "libx264") == result.notes.empty());
    CHECK_FALSE(fs::exists(dir / "out.mp4.partial"));
    const auto back = read_video(dir / "out.mp4");
    REQUIRE(back.sizes() == frames.sizes());
    const auto err = (back - frames).abs();
    CHECK(err.mean().item<double>() < mean_tol);
    CHECK(err.max().item<double>() < max_tol);
    // The first frame as an image (any file FFmpeg reads).
    CHECK(read_image(dir / "out.mp4").sizes() == at::IntArrayRef({3, 64, 96}));
  }
  SECTION("fallback encoder is used and reported") {
    VideoWriteOptions options;
    options.encoders = {"no_such_encoder", "mpeg4"};
    const auto result = write_video(dir / "fallback.mp4", frames, options);
    CHECK(result.encoder == "mpeg4");
    CHECK(result.codec == "MPEG-4 Part 2 (mpeg4)");
    REQUIRE(result.notes.size() == 1);
    CHECK_THAT(result.notes[0].message, ContainsAll({"no_such_encoder", "MPEG-4 Part 2"}));
    const auto back = read_video(dir / "fallback.mp4");
    REQUIRE(back.sizes() == frames.sizes());
    CHECK((back - frames).abs().mean().item<double>() < mean_tol);
  }
  SECTION("no usable encoder and odd sizes are errors") {
    VideoWriteOptions options;
    options.encoders = {"no_such_encoder"};
    CHECK_THAT(error_of([&] { write_video(dir / "none.mp4", frames, options); }),
               ContainsAll({"none.mp4", "no usable video encoder", "no_such_encoder"}));
    CHECK_THAT(error_of([&] { write_video(dir / "odd.mp4", smooth_frames(1, 33, 64)); }),
               ContainsAll({"odd.mp4", "even"}));
    CHECK(count_entries(dir) == 0);
  }
}

TEST_CASE("fit rules, messages and every --fit mode", "[video_io]") {
  const FitRules rules{32, 8};
  const auto embedded = fit_rules(EmbeddedDefault::vae_config(), EmbeddedDefault::transformer_config());
  CHECK(embedded.spatial_multiple == 32);
  CHECK(embedded.temporal_multiple == 8);
  CHECK(nearest_multiples(50, 32) == "32 or 64");
  CHECK(nearest_multiples(64, 32) == "64");
  CHECK(nearest_multiples(20, 32) == "32");
  CHECK(nearest_frame_counts(10, 8) == "9 or 17");
  CHECK(nearest_frame_counts(17, 8) == "17");
  CHECK(parse_fit_mode("crop") == FitMode::crop);
  CHECK_THROWS_AS(parse_fit_mode("bogus"), ltxmps::Error);

  SECTION("frame counts: error without --fit, trimmed by every mode") {
    const auto frames = random_8bit_frames(10, 32, 32, 3);
    CHECK_THAT(error_of([&] { fit_video(frames, rules, FitMode::none, {}, "clip.mp4"); }),
               ContainsAll({"clip.mp4", "10 frames", "9 or 17", "--fit trim", "10 -> 9"}));
    for (auto mode : {FitMode::trim, FitMode::crop, FitMode::resize}) {
      const auto fitted = fit_video(frames, rules, mode, {}, "clip.mp4");
      CHECK(fitted.sizes() == at::IntArrayRef({9, 3, 32, 32}));
      CHECK(at::equal(fitted, frames.narrow(0, 0, 9)));
    }
    // More frames than asked for.
    const auto long_clip = random_8bit_frames(17, 32, 32, 4);
    FitTarget target;
    target.num_frames = 9;
    CHECK_THAT(error_of([&] { fit_video(long_clip, rules, FitMode::none, target, "long.mp4"); }),
               ContainsAll({"long.mp4", "17 frames", "--num-frames", "--fit trim"}));
    CHECK(fit_video(long_clip, rules, FitMode::trim, target, "long.mp4").size(0) == 9);
    target.num_frames = 12;  // capped to 12, then 8k+1
    CHECK(fit_video(long_clip, rules, FitMode::trim, target, "long.mp4").size(0) == 9);
  }
  SECTION("sizes: error without --fit, crop and resize") {
    const auto frames = random_8bit_frames(1, 70, 100, 5);
    CHECK_THAT(error_of([&] { fit_video(frames, rules, FitMode::none, {}, "photo.png"); }),
               ContainsAll({"photo.png", "height 70", "width 100", "64 or 96", "96 or 128", "--fit crop",
                            "--fit resize"}));
    CHECK_THAT(error_of([&] { fit_video(frames, rules, FitMode::trim, {}, "photo.png"); }), Contains("--fit crop"));
    const auto cropped = fit_video(frames, rules, FitMode::crop, {}, "photo.png");
    REQUIRE(cropped.sizes() == at::IntArrayRef({1, 3, 64, 96}));
    CHECK(at::equal(cropped, frames.narrow(2, 3, 64).narrow(3, 2, 96)));
    const auto resized = fit_video(frames, rules, FitMode::resize, {}, "photo.png");
    CHECK(resized.sizes() == at::IntArrayRef({1, 3, 64, 96}));
    CHECK(resized.min().item<float>() >= 0.0f);
    CHECK(resized.max().item<float>() <= 1.0f);
    // Too small to crop.
    CHECK_THAT(error_of([&] { fit_video(random_8bit_frames(1, 20, 40, 6), rules, FitMode::crop, {}, "tiny.png"); }),
               ContainsAll({"tiny.png", "--fit resize"}));
    CHECK(fit_video(random_8bit_frames(1, 20, 40, 6), rules, FitMode::resize, {}, "tiny.png").sizes() ==
          at::IntArrayRef({1, 3, 32, 32}));
  }
  SECTION("a size asked for") {
    const auto frames = random_8bit_frames(1, 48, 64, 7);
    FitTarget target;
    target.height = 64;
    target.width = 64;
    CHECK_THAT(error_of([&] { fit_video(frames, rules, FitMode::none, target, "in.png"); }),
               ContainsAll({"in.png", "height 48", "--fit crop", "--fit resize"}));
    CHECK(fit_video(frames, rules, FitMode::resize, target, "in.png").sizes() == at::IntArrayRef({1, 3, 64, 64}));
    CHECK(fit_video(frames, rules, FitMode::crop, target, "in.png").sizes() == at::IntArrayRef({1, 3, 64, 64}));
    // A fitting input is unchanged.
    target.height = 48;
    CHECK_THAT(error_of([&] { fit_video(frames, rules, FitMode::resize, target, "in.png"); }),
               ContainsAll({"in.png", "multiples of 32", "32 or 64"}));
    target.height = 64;
    const auto fits = random_8bit_frames(9, 64, 64, 8);
    CHECK(at::equal(fit_video(fits, rules, FitMode::none, target, "ok.png"), fits));
  }
}

TEST_CASE("a failed write leaves no partial output", "[video_io]") {
  const auto dir = fresh_dir("partial");
  const auto frames = smooth_frames(4, 32, 32);
  VideoWriteOptions failing;
  failing.on_frame = [](int64_t frame, int64_t) {
    if (frame == 2) throw std::runtime_error("simulated failure after frame 2");
  };
  std::vector<fs::path> outputs{dir / "frames"};
  if (video_io_has_ffmpeg()) outputs.push_back(dir / "video.mp4");
  for (const auto& out : outputs) {
    INFO(out.string());
    CHECK_THAT(error_of([&] { write_video(out, frames, failing); }), Contains("simulated failure"));
    CHECK_FALSE(fs::exists(out));
    auto partial = out;
    partial += ".partial";
    CHECK_FALSE(fs::exists(partial));
    // An earlier complete output survives a failed overwrite.
    write_video(out, frames);
    const auto before = read_video(out);
    CHECK_THROWS(write_video(out, frames * 0.5, failing));
    CHECK(at::equal(read_video(out), before));
    CHECK_FALSE(fs::exists(partial));
  }
  // Unwritable destinations.
  CHECK_THAT(error_of([&] { write_video(dir / "missing" / "frames", frames); }), ContainsAll({"missing", "does not exist"}));
  if (video_io_has_ffmpeg())
    CHECK_THAT(error_of([&] { write_video(dir / "missing" / "video.mp4", frames); }),
               ContainsAll({"missing", "does not exist"}));
  CHECK_FALSE(fs::exists(dir / "missing"));
  // A folder holding other files is never replaced.
  fs::create_directories(dir / "mine");
  write_bytes(dir / "mine" / "notes.txt", "keep me");
  CHECK_THAT(error_of([&] { write_video(dir / "mine", frames); }), ContainsAll({"mine", "notes.txt", "not replacing"}));
  CHECK(read_bytes(dir / "mine" / "notes.txt") == "keep me");
}

TEST_CASE("corrupt or missing inputs are errors naming the file", "[video_io]") {
  const auto dir = fresh_dir("corrupt");
  write_bytes(dir / "corrupt.png", "\x89PNG\r\n\x1a\n this is not a PNG body");
  CHECK_THAT(error_of([&] { read_image(dir / "corrupt.png"); }), Contains("corrupt.png"));
  write_bytes(dir / "garbage.png", "GIF89a nonsense");
  CHECK_THAT(error_of([&] { read_image(dir / "garbage.png"); }), ContainsAll({"garbage.png", "PNG"}));
  CHECK_THAT(error_of([&] { read_video(dir / "absent.mp4"); }), ContainsAll({"absent.mp4", "no such file"}));
  CHECK_THAT(error_of([&] { read_image(dir); }), Contains("folder"));

  // A frame folder with one bad frame names that frame.
  write_video(dir / "frames", smooth_frames(3, 32, 32));
  write_bytes(dir / "frames" / "frame_00001.png", "broken");
  CHECK_THAT(error_of([&] { read_video(dir / "frames"); }), Contains("frame_00001.png"));
  fs::create_directories(dir / "empty");
  CHECK_THAT(error_of([&] { read_video(dir / "empty"); }), ContainsAll({"empty", "no .png frames"}));

  write_bytes(dir / "corrupt.mp4", std::string(4096, '\x42'));
  if (!video_io_has_ffmpeg()) {
    CHECK_THAT(error_of([&] { read_video(dir / "corrupt.mp4"); }), ContainsAll({"corrupt.mp4", "FFmpeg"}));
    return;
  }
  CHECK_THAT(error_of([&] { read_video(dir / "corrupt.mp4"); }), Contains("corrupt.mp4"));
  // A truncated file (the encoder's output cut in half).
  write_video(dir / "whole.mp4", smooth_frames(9, 32, 32));
  const auto bytes = read_bytes(dir / "whole.mp4");
  write_bytes(dir / "truncated.mp4", bytes.substr(0, bytes.size() / 2));
  CHECK_THAT(error_of([&] { read_video(dir / "truncated.mp4"); }), Contains("truncated.mp4"));
}
