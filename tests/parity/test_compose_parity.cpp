// C++ OmnimatteZero composition (composition.hpp, `ltxmps compose`) against the Python oracle
// (tests/parity/removal_oracle.py, case "compose": the official foreground_composition script on diffusers 0.42.1
// components, CPU float32, a small random model). Bounds: float frames and latents max|C++ - oracle| <= 1e-4 *
// max(1, max|reference|); 8-bit frames within 2 levels.
//
// Note [Near-zero decoded mask values]
// The decoded masks are binarized with > 0 per channel. The oracle reports the values within 1e-5 of zero: there
// float32 rounding of two correct implementations may fall on either side of 0, and the pixel then takes the
// original's value instead of the decoded one (or the reverse), a large difference that says nothing about the
// implementation. Outputs that depend on a mask are compared everywhere except at those values (each exempted
// value is one channel of one pixel; the count is printed and must stay a tiny fraction); the decoded masks
// themselves are compared everywhere, and the refinement is also checked from the oracle's own latent addition.

#include "catch_compat.hpp"
#include "parity_support.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/composition.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include "ltxmps/diagnostics.hpp"
#include "ltxmps/plan.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace {

constexpr double kFp32Bound = 1e-4;
constexpr double kNearZero = 1e-5;  // Note [Near-zero decoded mask values]
constexpr int64_t kByteLevels = 2;

fs::path data_dir() { return ltxmps_test::parity_data_dir("removal"); }

using ltxmps_test::cpu_fp32_plan;

using ltxmps_test::read_tensors;

/// The oracle's compose case, its inputs as [F, 3, H, W] in [0, 1] and its reference.
struct ComposeCase {
  nlohmann::json json;
  std::map<std::string, at::Tensor> inputs, ref;
  LtxModel model;
};

ComposeCase load_case() {
  ComposeCase c;
  for (const auto& item : read_json_file(data_dir() / "cases.json"))
    if (item.at("kind") == "compose") c.json = item;
  REQUIRE(c.json.is_object());
  const auto folder = data_dir() / "cases" / c.json.at("name").get<std::string>();
  // uint8 [F, H, W, 3] as the oracle preprocesses it: v / 255 in float32 (the library maps it to 2x - 1).
  for (auto& [name, t] : read_tensors(folder / "inputs.safetensors"))
    c.inputs.emplace(name, t.permute({0, 3, 1, 2}).to(at::kFloat).div(255.0).contiguous());
  c.ref = read_tensors(folder / "reference.safetensors");
  c.model = load_ltx_model(data_dir() / c.json.at("model").get<std::string>(), cpu_fp32_plan());
  return c;
}

/// The official defaults, checked against the oracle's arguments (which are the official script's).
ForegroundRequest request_of(const ComposeCase& c, bool with_new_background = true) {
  const auto& a = c.json.at("args");
  ForegroundRequest r;
  CHECK(r.compose_timestep == a.at("temb").get<double>());
  CHECK(r.refinement.strength == a.at("denoise_strength").get<double>());
  CHECK(r.refinement.steps == a.at("num_inference_steps").get<int64_t>());
  CHECK(r.refinement.seed == a.at("seed").get<uint64_t>());
  CHECK(r.refinement.decode_timestep == a.at("decode_timestep").get<double>());
  CHECK(r.refinement.image_cond_noise_scale == a.at("image_cond_noise_scale").get<double>());
  CHECK(r.refinement.guidance_scale == a.at("guidance_scale").get<double>());
  CHECK(r.refinement.frame_rate == a.at("frame_rate").get<double>());
  CHECK(r.refinement.max_sequence_length == a.at("max_sequence_length").get<int64_t>());
  CHECK(r.refinement.prompt == a.at("prompt").get<std::string>());
  CHECK(r.refinement.negative_prompt == a.at("negative_prompt").get<std::string>());
  r.original = c.inputs.at("original");
  r.background = c.inputs.at("background");
  r.object_mask = c.inputs.at("object_mask");
  r.total_mask = c.inputs.at("total_mask");
  if (with_new_background) r.new_background = c.inputs.at("new_background");
  REQUIRE(r.original.size(2) == a.at("height").get<int64_t>());
  REQUIRE(r.original.size(3) == a.at("width").get<int64_t>());
  return r;
}

/// [1, C, F, H, W] -> [F, C, H, W].
at::Tensor frames_of(const at::Tensor& video) { return video[0].permute({1, 0, 2, 3}).contiguous(); }

/// Where the oracle's decoded masks are within 1e-5 of 0 ([F, 3, H, W] bool).
struct NearZero {
  at::Tensor object, total, any;
};

NearZero near_zero(const ComposeCase& c) {
  NearZero n;
  n.object = frames_of(c.ref.at("decoded_object_mask")).abs() < kNearZero;
  n.total = frames_of(c.ref.at("decoded_total_mask")).abs() < kNearZero;
  n.any = n.object | n.total;
  return n;
}

/// scaled_error restricted to `keep`.
double kept_error(const at::Tensor& out, const at::Tensor& ref, const at::Tensor& keep) {
  REQUIRE(out.sizes() == ref.sizes());
  REQUIRE(keep.sizes() == ref.sizes());
  const auto r = ref.to(at::kFloat);
  const double scale = std::max(1.0, r.abs().max().item<double>());
  const auto diff = (out.to(at::kFloat) - r).abs();
  return at::where(keep, diff, at::zeros_like(diff)).max().item<double>() / scale;
}

void check_float(const std::string& what, double err) {
  std::cout << "compose parity " << what << ": max abs error / max(1, max|ref|) = " << err << " (bound " << kFp32Bound
            << ")\n";
  CHECK(err <= kFp32Bound);
}

/// 8-bit levels between `frames` [F, 3, H, W] in [0, 1] quantized by `quantize` and the oracle's uint8 [F, H, W, 3].
int64_t byte_levels(const at::Tensor& frames_u8, const at::Tensor& ref_u8, const at::Tensor& keep) {
  const auto diff = (frames_u8.to(at::kLong) - ref_u8.permute({0, 3, 1, 2}).to(at::kLong)).abs();
  return at::where(keep, diff, at::zeros_like(diff)).max().item<int64_t>();
}

at::Tensor truncated_u8(const at::Tensor& frames) { return (frames * 255).to(at::kLong); }  // (x * 255).long()
at::Tensor rounded_u8(const at::Tensor& frames) { return (frames * 255).round().to(at::kLong); }  // write_video

void check_bytes(const std::string& what, int64_t levels) {
  std::cout << "compose parity " << what << ": max 8-bit difference " << levels << " (bound " << kByteLevels << ")\n";
  CHECK(levels <= kByteLevels);
}

/// The decoded masks, their binarization and the mask-dependent layers of `result` against the oracle.
void check_layers(const ComposeCase& c, const CompositionResult& result, const NearZero& near) {
  const auto ref_object = frames_of(c.ref.at("decoded_object_mask"));
  const auto ref_total = frames_of(c.ref.at("decoded_total_mask"));
  check_float("decoded object mask", ltxmps_test::scaled_error(result.decoded_object_mask, ref_object));
  check_float("decoded total mask", ltxmps_test::scaled_error(result.decoded_total_mask, ref_total));
  // Binarization: identical wherever the value is clear of zero.
  CHECK((((result.decoded_object_mask > 0) != (ref_object > 0)) & ~near.object).sum().item<int64_t>() == 0);
  CHECK((((result.decoded_total_mask > 0) != (ref_total > 0)) & ~near.total).sum().item<int64_t>() == 0);
  const auto pixel_near = near.total.any(1, /*keepdim=*/true);
  const auto ref_alpha = (ref_total > 0).any(1, /*keepdim=*/true).to(at::kFloat);
  CHECK(kept_error(result.alpha, ref_alpha, ~pixel_near) == 0);
  CHECK(result.alpha.sum().item<double>() > 0);

  check_float("foreground", kept_error(result.foreground, c.ref.at("foreground"), ~near.any));
  check_bytes("foreground, truncated like the official",
              byte_levels(truncated_u8(result.foreground), c.ref.at("foreground_u8"), ~near.any));
  check_bytes("foreground, rounded like write_video",
              byte_levels(rounded_u8(result.foreground), c.ref.at("foreground_u8"), ~near.any));
  const auto rgba = result.foreground_rgba();
  CHECK(rgba.size(1) == 4);
  CHECK(at::equal(rgba.slice(1, 3), result.alpha));
  // Outside the total mask the layer is mid-grey (0 in model range), the part the alpha hides.
  CHECK(at::equal(at::where(result.alpha == 0, result.foreground, at::full_like(result.foreground, 0.5)),
                  at::full_like(result.foreground, 0.5)));
}

void check_addition(const ComposeCase& c, const CompositionResult& result, const NearZero& near) {
  REQUIRE(result.latent_addition);
  REQUIRE(result.latent_addition_raw);
  check_float("latent addition", kept_error(*result.latent_addition, c.ref.at("latent_addition"), ~near.object));
  check_float("latent addition before post-processing",
              kept_error(*result.latent_addition_raw, c.ref.at("latent_addition_raw"),
                         near.object.permute({1, 0, 2, 3}).unsqueeze(0).logical_not()));
  check_bytes("latent addition, truncated like the official",
              byte_levels(truncated_u8(*result.latent_addition), c.ref.at("latent_addition_u8"), ~near.object));
  check_bytes("latent addition, rounded like write_video",
              byte_levels(rounded_u8(*result.latent_addition), c.ref.at("latent_addition_u8"), ~near.object));
}

std::string compose_error(LtxModel& model, const ForegroundRequest& r) {
  try {
    compose(model, r, cpu_fp32_plan());
  } catch (const ltxmps::Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("compose parity: foreground, latent addition and refinement against the official script",
          "[parity][compose]") {
  auto c = load_case();
  CHECK(c.json.at("bound").get<double>() == kFp32Bound);
  const auto near = near_zero(c);
  const int64_t exempt = near.any.sum().item<int64_t>();
  std::cout << "compose parity: " << exempt << " of " << near.any.numel()
            << " mask-dependent values exempted (decoded mask within " << kNearZero << " of 0; the oracle counts "
            << c.json.at("derived").at("near_zero_mask_values") << " such values over both masks)\n";
  CHECK(exempt <= c.json.at("derived").at("near_zero_mask_values").get<int64_t>());
  CHECK(exempt * 10000 <= near.any.numel());  // at most 0.01 % of the values

  std::vector<ltxmps::Diagnostic> diagnostics;
  std::map<std::string, int64_t> most;  // the largest total each stage reported
  int64_t steps = 0;
  const auto result = compose(c.model, request_of(c), cpu_fp32_plan(), ltxmps::collect_into(diagnostics),
                              [&](const Progress& p) {
                                most[p.stage] = std::max(most[p.stage], p.total);
                                if (p.stage == "denoise") steps = p.done;
                              });
  CHECK(most["vae encode"] == 5);  // the five inputs at once (the refinement's re-encode reports 1)
  CHECK(most["vae decode"] == 4);  // composite, foreground and the two masks
  CHECK(steps == c.json.at("derived").at("refinement_steps").get<int64_t>());
  CHECK_FALSE(ltxmps::has_rule(diagnostics, "compose.empty_decoded_mask"));
  check_layers(c, result, near);
  check_addition(c, result, near);

  // The refinement re-encodes the latent addition: a flipped near-zero mask value changes its input at that
  // value, so the end-to-end refinement is held to the bound only when no value flipped (the next test checks
  // the refinement from the oracle's own input unconditionally).
  const int64_t flips = ((result.decoded_object_mask > 0) != (frames_of(c.ref.at("decoded_object_mask")) > 0))
                            .sum()
                            .item<int64_t>();
  std::cout << "compose parity: " << flips << " object-mask values binarized differently from the oracle\n";
  REQUIRE(result.refinement);
  REQUIRE(result.refinement_latents);
  if (flips == 0) {
    check_float("refinement latents (end to end)",
                ltxmps_test::scaled_error(*result.refinement_latents, c.ref.at("refinement_latents")));
    check_float("refinement frames (end to end)", ltxmps_test::scaled_error(*result.refinement, c.ref.at("refinement")));
  }
  CHECK(ltxmps_test::scaled_error(*result.refinement, *result.latent_addition) > 1e-3);  // it changed something
}

TEST_CASE("compose parity: the refinement from the oracle's latent addition", "[parity][compose]") {
  auto c = load_case();
  const auto request = request_of(c);
  const auto refined = refine_composite(c.model, c.ref.at("latent_addition_raw"), request.refinement, cpu_fp32_plan());
  check_float("refinement latents (from the oracle's latent addition)",
              ltxmps_test::scaled_error(refined.latents, c.ref.at("refinement_latents")));
  check_float("refinement frames (from the oracle's latent addition)",
              ltxmps_test::scaled_error(refined.frames, c.ref.at("refinement")));
  // A different seed draws another posterior sample and other noise: the bound above is not met by chance.
  auto c2 = load_case();
  auto other = request.refinement;
  other.seed = request.refinement.seed + 1;
  const auto reseeded = refine_composite(c2.model, c.ref.at("latent_addition_raw"), other, cpu_fp32_plan());
  CHECK(ltxmps_test::scaled_error(reseeded.latents, c.ref.at("refinement_latents")) > 100 * kFp32Bound);
}

TEST_CASE("compose parity: the foreground layer alone (no new background)", "[parity][compose]") {
  auto c = load_case();
  const auto near = near_zero(c);
  const auto result = compose(c.model, request_of(c, /*with_new_background=*/false), cpu_fp32_plan());
  check_layers(c, result, near);
  CHECK_FALSE(result.latent_addition);
  CHECK_FALSE(result.latent_addition_raw);
  CHECK_FALSE(result.refinement);
  CHECK_FALSE(result.refinement_latents);
  CHECK(c.model.text_encoder->loaded());  // no refinement: the text encoder was never needed
}

TEST_CASE("compose rejects bad inputs before any model runs, naming them", "[parity][compose]") {
  using ltxmps_test::Contains;
  using ltxmps_test::ContainsAll;
  auto c = load_case();
  auto bad = [&](auto edit) {
    auto r = request_of(c);
    edit(r);
    return compose_error(c.model, r);
  };
  CHECK_THAT(bad([](ForegroundRequest& r) { r.background = r.background.slice(0, 0, 9); }),
             ContainsAll({"background has 9 frames", "the original 17 frames"}));
  CHECK_THAT(bad([](ForegroundRequest& r) { r.new_background = r.new_background->slice(3, 0, 64); }),
             ContainsAll({"new background", "64x64", "96x64"}));
  CHECK_THAT(bad([](ForegroundRequest& r) { r.object_mask = at::zeros_like(r.object_mask); }),
             Contains("the object mask is empty"));
  CHECK_THAT(bad([](ForegroundRequest& r) { r.total_mask = r.total_mask * 0.5; }),
             Contains("the total mask is empty"));
  CHECK_THAT(bad([](ForegroundRequest& r) { r.object_mask = r.object_mask.slice(1, 0, 2); }),
             ContainsAll({"object mask must be float frames [F, 1 or 3, H, W]", "[17, 2, 64, 96]"}));
  CHECK_THAT(bad([](ForegroundRequest& r) { r.original = r.original * 2; }),
             ContainsAll({"the original must be in [0, 1]", "got values in ["}));
  CHECK_THAT(bad([](ForegroundRequest& r) {
               for (auto* t : {&r.original, &r.background, &r.object_mask, &r.total_mask}) *t = t->slice(0, 0, 16);
               r.new_background = r.new_background->slice(0, 0, 16);
             }),
             Contains("compose: num_frames (16) must be 8k+1"));
  CHECK_THAT(bad([](ForegroundRequest& r) {
               for (auto* t : {&r.original, &r.background, &r.object_mask, &r.total_mask}) *t = t->slice(2, 0, 48);
               r.new_background = r.new_background->slice(2, 0, 48);
             }),
             Contains("compose: height and width (48x96) must be positive multiples of 32"));
  CHECK_THAT(bad([](ForegroundRequest& r) { r.refinement.strength = 0.05; }),
             ContainsAll({"compose refinement", "runs no step"}));
  CHECK_THAT(bad([](ForegroundRequest& r) { r.refinement.strength = 1.5; }),
             ContainsAll({"compose refinement", "strength must be in (0, 1]"}));
  CHECK_THAT(bad([](ForegroundRequest& r) { r.compose_timestep = -1; }), Contains("compose_timestep must be >= 0"));
  CHECK(c.model.text_encoder->loaded());  // nothing ran
  CHECK_THAT(bad([](ForegroundRequest&) {}), Contains("no error"));
  CHECK_FALSE(c.model.text_encoder->loaded());  // the refinement released it
  CHECK_THAT(bad([](ForegroundRequest&) {}), ContainsAll({"compose refinement", "no text encoder"}));
}

#ifdef LTXMPS_CLI_PATH
namespace {

/// Runs the CLI with stderr in `log`; returns its exit code.
int run_cli(const std::string& args, const fs::path& log) {
  const std::string command = std::string("\"") + LTXMPS_CLI_PATH + "\" " + args + " 2>\"" + log.string() + "\"";
  INFO(command);
  const int rc = std::system(command.c_str());
  REQUIRE(WIFEXITED(rc));
  return WEXITSTATUS(rc);
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

TEST_CASE("ltxmps compose writes the layers of the official script (PNG frames, RGBA)", "[parity][compose][cli]") {
  auto c = load_case();
  const auto near = near_zero(c);
  const auto dir = fs::temp_directory_path() / ("ltxmps_compose_" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  for (const auto& [name, frames] : c.inputs) write_video(dir / name, frames);  // 8-bit PNG: the inputs exactly
  auto args = [&](const std::string& out, const std::string& extra) {
    return "compose --model-dir \"" + (data_dir() / "model").string() + "\" --original \"" + (dir / "original").string() +
           "\" --background \"" + (dir / "background").string() + "\" --object-mask \"" +
           (dir / "object_mask").string() + "\" --total-mask \"" + (dir / "total_mask").string() +
           "\" --output-dir \"" + (dir / out).string() + "\" --png --device cpu --precision fp32 " + extra;
  };
  const auto log = dir / "stderr.txt";
  REQUIRE(run_cli(args("out", "--new-background \"" + (dir / "new_background").string() + "\" >/dev/null"), log) == 0);
  const auto out = dir / "out";
  const auto foreground = read_video(out / "foreground");
  check_bytes("CLI foreground PNG", byte_levels(rounded_u8(foreground), c.ref.at("foreground_u8"), ~near.any));
  const auto addition = read_video(out / "latent_addition");
  check_bytes("CLI latent addition PNG",
              byte_levels(rounded_u8(addition), c.ref.at("latent_addition_u8"), ~near.object));
  const auto refinement = read_video(out / "refinement");
  CHECK(refinement.sizes() == c.ref.at("refinement").sizes());
  CHECK((refinement - c.ref.at("refinement")).abs().max().item<double>() <= kByteLevels / 255.0 + 1e-6);
  // The RGBA frames: the reader composites onto black, so they read back as foreground x alpha.
  const auto rgba = read_video(out / "foreground_rgba");
  const auto alpha = (frames_of(c.ref.at("decoded_total_mask")) > 0).any(1, true).to(at::kFloat);
  const auto expected = c.ref.at("foreground") * alpha;
  const auto keep = ~(near.any | near.total.any(1, /*keepdim=*/true));
  CHECK(kept_error(rgba, expected, keep) <= kByteLevels / 255.0 + 1e-6);
  CHECK(rgba.sum().item<double>() < foreground.sum().item<double>());  // the transparent part reads as black

  // Without --new-background: the foreground layers only.
  REQUIRE(run_cli(args("alone", ">/dev/null"), log) == 0);
  CHECK(fs::is_directory(dir / "alone" / "foreground"));
  CHECK(fs::is_directory(dir / "alone" / "foreground_rgba"));
  CHECK_FALSE(fs::exists(dir / "alone" / "latent_addition"));
  CHECK_FALSE(fs::exists(dir / "alone" / "refinement"));

  // Bad inputs: a clear error naming the option, and nothing written.
  write_video(dir / "short_background", c.inputs.at("background").slice(0, 0, 9));
  auto mismatched = args("bad", ">/dev/null");
  mismatched.replace(mismatched.find(dir.string() + "/background"), (dir / "background").string().size(),
                     (dir / "short_background").string());
  CHECK(run_cli(mismatched, log) == 1);
  CHECK_THAT(read_text(log),
             ltxmps_test::ContainsAll({"--background", "short_background", "9 frames", "do not match --original"}));
  CHECK(fs::is_empty(dir / "bad"));
  CHECK(run_cli(args("bad", "--refine-strength 2 >/dev/null"), log) == 2);
  CHECK_THAT(read_text(log), ltxmps_test::Contains("--refine-strength"));
  remove_tree(dir);
}
#endif
