// `ltxmps compose` (OmnimatteZero's foreground layer and composition): parse, check the inputs and outputs, call
// the library, write the layers.

#include "cli_common.hpp"
#include "run_common.hpp"

#include "ltxmps_pipeline/composition.hpp"
#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/plan.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

namespace fs = std::filesystem;

namespace ltxmps::cli {

namespace {

using namespace ltxmps::pipeline;

struct ComposeOptions {
  std::string model_dir, original, background, object_mask, total_mask, new_background, output_dir, fit = "trim";
  double refine_strength = 0.3, frame_rate = 25.0;
  int64_t refine_steps = 10;
  uint64_t seed = 0;
  bool png = false;
  PlanFlags flags;
};

/// The files of one run: a video (or PNG folder) per layer, and the RGBA layer as a PNG folder.
struct ComposeOutputs {
  fs::path foreground, foreground_rgba, latent_addition, refinement;
};

ComposeOutputs output_names(const ComposeOptions& o) {
  const fs::path dir(o.output_dir);
  const std::string ext = o.png ? "" : ".mp4";
  return {dir / ("foreground" + ext), dir / "foreground_rgba", dir / ("latent_addition" + ext),
          dir / ("refinement" + ext)};
}

/// Creates the output folder when its parent exists, then checks every output against the inputs.
void check_compose_outputs(const ComposeOptions& o, const ComposeOutputs& out) {
  const fs::path dir(o.output_dir);
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    const auto parent = dir.parent_path();
    if (!parent.empty() && !fs::is_directory(parent))
      throw UsageError("--output-dir " + o.output_dir + ": the folder '" + parent.string() + "' does not exist");
    if (!fs::create_directory(dir, ec) && ec)
      throw UsageError("--output-dir " + o.output_dir + ": cannot create the folder (" + ec.message() + ")");
  } else if (!fs::is_directory(dir)) {
    throw UsageError("--output-dir " + o.output_dir + ": is not a folder");
  }
  std::vector<OutputPath> outputs{{"--output-dir", out.foreground, OutputKind::video},
                                  {"--output-dir", out.foreground_rgba, OutputKind::video}};
  if (!o.new_background.empty()) {
    outputs.push_back({"--output-dir", out.latent_addition, OutputKind::video});
    outputs.push_back({"--output-dir", out.refinement, OutputKind::video});
  }
  check_outputs(outputs, {{"--original", o.original}, {"--background", o.background}, {"--object-mask", o.object_mask},
                          {"--total-mask", o.total_mask}, {"--new-background", o.new_background},
                          {"--model-dir", o.model_dir}});
}

/// The original fitted to the model (--fit), and each other input fitted the same way and cut to its frames.
ForegroundRequest read_request(const ComposeOptions& o, const FitRules& rules, Log& log) {
  const auto fit = parse_fit_mode(o.fit);
  const auto raw = read_video(o.original);
  const auto original = fit_video(raw, rules, fit, {}, o.original);
  if (original.size(0) != raw.size(0))
    log.line(c10::str(o.original, ": ", raw.size(0), " frames trimmed to ", original.size(0), " (8k+1)"));
  log.line(c10::str("original ", o.original, ": ", original.size(0), " frames of ", original.size(3), "x",
                    original.size(2)));
  auto like_original = [&](const std::string& option, const std::string& path) {
    auto v = fit_video(read_video(path), rules, fit, {}, path);
    if (v.size(0) > original.size(0)) v = v.slice(0, 0, original.size(0));  // the official common frame count
    if (v.size(0) != original.size(0) || v.size(2) != original.size(2) || v.size(3) != original.size(3))
      throw ltxmps::Error(c10::str(option, " ", path, ": ", v.size(0), " frames of ", v.size(3), "x", v.size(2),
                                   " do not match --original ", o.original, ": ", original.size(0), " frames of ",
                                   original.size(3), "x", original.size(2), " (after --fit ", o.fit, ")"));
    return v;
  };
  ForegroundRequest r;
  r.original = original;
  r.background = like_original("--background", o.background);
  r.object_mask = like_original("--object-mask", o.object_mask);
  r.total_mask = like_original("--total-mask", o.total_mask);
  if (!o.new_background.empty()) r.new_background = like_original("--new-background", o.new_background);
  r.refinement.strength = o.refine_strength;
  r.refinement.steps = o.refine_steps;
  r.refinement.seed = o.seed;
  return r;
}

void write_layer(const fs::path& path, const at::Tensor& frames, const std::string& what, double fps, Log& log) {
  VideoWriteOptions write;
  write.frame_rate = fps;
  const auto written = write_video(path, frames, write);
  for (const auto& note : written.notes) log.diagnostic(note);
  log.line(c10::str("wrote ", written.path.string(), ": ", what, ", ", written.frames, " frames of ", written.width,
                    "x", written.height, " (", written.codec, ")"));
  std::cout << written.path.string() << "\n";
}

int run_compose(const ComposeOptions& o) {
  Log log;
  if (o.refine_strength > 1)
    throw UsageError(c10::str("--refine-strength ", o.refine_strength, ": expected a number in (0, 1]"));
  const auto out = output_names(o);
  check_compose_outputs(o, out);
  const auto plan = job_plan(o.flags, log);
  const bool embedded = o.model_dir.empty();
  const auto info = inspect_model(o.model_dir);
  const auto& rules = info.rules;
  auto model = load_model(info, plan, o.flags, "the layers show the pipeline working, not a real result", log);
  auto request = read_request(o, rules, log);
  if (embedded) request.refinement.max_sequence_length = EmbeddedDefault::max_sequence_length;
  log.line(request.new_background
               ? c10::str("foreground layer, latent addition onto --new-background and refinement (strength ",
                          o.refine_strength, " of ", o.refine_steps, " steps, seed ", o.seed, ")")
               : std::string("no --new-background: the foreground layer alone"));
  const auto result = compose(model, request, plan, log.sink(), log.progress_callback());
  log.end_bar();
  const double covered = std::round(result.alpha.mean().item<double>() * 1000.0) / 10.0;  // percent, 1 decimal
  write_layer(out.foreground, result.foreground, "the foreground layer (mid-grey outside the total mask)", o.frame_rate,
              log);
  write_layer(out.foreground_rgba, result.foreground_rgba(),
              c10::str("the foreground with alpha = the decoded total mask (", covered, "% opaque)"), o.frame_rate,
              log);
  if (result.latent_addition)
    write_layer(out.latent_addition, *result.latent_addition, "the latent addition", o.frame_rate, log);
  if (result.refinement) write_layer(out.refinement, *result.refinement, "the refined composite", o.frame_rate, log);
  if (model.random_weights)
    log.line("reminder: random weights, so the layers are not a real composition; pass --model-dir for LTX-Video");
  return 0;
}

}  // namespace

Runner setup_compose(CLI::App* cmd) {
  auto o = std::make_shared<ComposeOptions>();
  cmd->add_option("--model-dir", o->model_dir,
                  "diffusers LTX-Video folder (model_index.json); none: the embedded default");
  cmd->add_option("--original", o->original, "the video with the object (file or PNG folder)")->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--background", o->background, "the same video without the object (ltxmps remove's output)")
      ->required()->check(CLI::ExistingPath);
  cmd->add_option("--object-mask", o->object_mask, "the object's mask (white = object)")->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--total-mask", o->total_mask, "the object and its effects (ltxmps effects-mask's output)")
      ->required()->check(CLI::ExistingPath);
  cmd->add_option("--new-background", o->new_background, "a video to put the foreground onto (then also the latent "
                                                         "addition and its refinement)")
      ->check(CLI::ExistingPath);
  cmd->add_option("--output-dir", o->output_dir, "folder for foreground, foreground_rgba (PNG frames with alpha), "
                                                 "latent_addition, refinement (created when missing)")
      ->required();
  cmd->add_option("--refine-strength", o->refine_strength,
                  "denoise strength of the refinement, in (0, 1] (lower keeps more detail)")
      ->capture_default_str()->check(kPositive);
  cmd->add_option("--refine-steps", o->refine_steps, "steps of the refinement's whole schedule")->capture_default_str()
      ->check(kPositiveInt);
  cmd->add_option("--seed", o->seed, "CPU generator seed of the refinement")->capture_default_str()
      ->check(seed_validator());
  cmd->add_option("--frame-rate", o->frame_rate, "frame rate of the written videos")->capture_default_str()
      ->check(kPositive);
  cmd->add_option("--fit", o->fit, "adapt the inputs to the model: trim (frames to 8k+1, the official rule; default), "
                                   "crop, resize (bilinear), none")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "crop", "resize", "trim"}));
  cmd->add_flag("--png", o->png, "write PNG frame folders instead of mp4 videos");
  add_plan_flags(cmd, o->flags);
  add_weight_check_option(cmd, o->flags.runtime);
  cmd->add_flag("--vae-tiling,!--no-vae-tiling", o->flags.vae_tiling,
                "VAE encode/decode in spatial tiles above 512 px (default off, as the official composition)");
  return [o] { return run_compose(*o); };
}

}  // namespace ltxmps::cli
