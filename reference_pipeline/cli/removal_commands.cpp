// `ltxmps remove` (video object removal) and `ltxmps effects-mask` (the object's mask grown by its shadows and
// reflections): parse, check the inputs and outputs, call the library, write the results.

#include "cli_common.hpp"
#include "run_common.hpp"

#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/removal.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/synthetic_clip.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/plan.hpp"

#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace ltxmps::cli {

namespace {

using namespace ltxmps::pipeline;

/// Options both commands share.
struct MaskJobOptions {
  std::string model_dir, video, mask, output, fit = "trim";
  int64_t height = 0, width = 0, num_frames = 0;
  PlanFlags flags;
  CLI::Option *height_opt = nullptr, *width_opt = nullptr, *frames_opt = nullptr;
};

void add_mask_job_options(CLI::App* cmd, MaskJobOptions& o, const std::string& mask_help) {
  cmd->add_option("--model-dir", o.model_dir, "diffusers LTX-Video folder (model_index.json); none: the embedded default");
  cmd->add_option("--video", o.video, "input video (file or folder of PNG frames)")->required()->check(CLI::ExistingPath);
  cmd->add_option("--mask", o.mask, mask_help)->required()->check(CLI::ExistingPath);
  o.height_opt = cmd->add_option("--height", o.height, "resize/crop to this height (with --fit resize|crop)")->check(kPositiveInt);
  o.width_opt = cmd->add_option("--width", o.width, "resize/crop to this width (with --fit resize|crop)")->check(kPositiveInt);
  o.frames_opt = cmd->add_option("--num-frames", o.num_frames, "use at most this many frames (trimmed to 8k+1)")
                     ->check(kPositiveInt);
  cmd->add_option("--fit", o.fit, "adapt video and mask to the model: trim (frames to 8k+1, the official rule; "
                                  "default), crop, resize (bilinear), none")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "crop", "resize", "trim"}));
  add_plan_flags(cmd, o.flags);
  add_weight_check_option(cmd, o.flags.runtime);
  add_memory_check_option(cmd, o.flags);
  o.flags.vae_tiling = true;
  cmd->add_flag("--vae-tiling,!--no-vae-tiling", o.flags.vae_tiling,
                "VAE encode/decode in spatial tiles above 512 px (default on, as the official script)");
}

/// Video and mask, fitted the same way; the mask must then match the video.
std::pair<at::Tensor, at::Tensor> read_inputs(const MaskJobOptions& o, const FitRules& rules, Log& log) {
  const auto fit = parse_fit_mode(o.fit);
  FitTarget target;
  if (o.height_opt->count()) target.height = o.height;
  if (o.width_opt->count()) target.width = o.width;
  if (o.frames_opt->count()) target.num_frames = o.num_frames;
  const auto raw = read_video(o.video);
  auto video = fit_video(raw, rules, fit, target, o.video);
  auto mask = fit_video(read_video(o.mask), rules, fit, target, o.mask);
  if (video.size(0) != raw.size(0))
    log.line(c10::str(o.video, ": ", raw.size(0), " frames trimmed to ", video.size(0), " (8k+1, as the official code)"));
  if (mask.size(0) > video.size(0)) mask = mask.slice(0, 0, video.size(0));
  if (mask.size(0) != video.size(0) || mask.size(2) != video.size(2) || mask.size(3) != video.size(3))
    throw ltxmps::Error(c10::str("--mask ", o.mask, ": ", mask.size(0), " frames of ", mask.size(3), "x", mask.size(2),
                                 " do not match --video ", o.video, ": ", video.size(0), " frames of ", video.size(3), "x",
                                 video.size(2), " (after --fit ", o.fit, ")"));
  log.line(c10::str("video ", o.video, ": ", video.size(0), " frames of ", video.size(3), "x", video.size(2)));
  return {video, mask};
}

/// The inputs an output must not overwrite.
std::vector<InputPath> job_inputs(const MaskJobOptions& o) {
  return {{"--video", o.video}, {"--mask", o.mask}, {"--model-dir", o.model_dir}};
}

/// A 0/1 mask [T, H, W] as frames [T, 3, H, W] in [0, 1] (black and white).
at::Tensor mask_frames(const at::Tensor& mask) {
  return mask.to(at::kFloat).unsqueeze(1).expand({mask.size(0), 3, mask.size(1), mask.size(2)}).contiguous();
}

// ---------------------------------------------------------------------------------------------------
// ltxmps effects-mask

struct EffectsOptions {
  MaskJobOptions job;
  std::string threshold = "0.07", layers = "all", save_scores, prompt;
  double sigma = 0.5;
  int64_t dilation = 3;
  uint64_t seed = 0;
  bool rope = false;
};

void parse_effects_options(const EffectsOptions& o, EffectsMaskOptions& out) {
  if (o.threshold != "adaptive") {
    try {
      size_t used = 0;
      out.threshold = std::stod(o.threshold, &used);
      if (used != o.threshold.size()) throw std::invalid_argument(o.threshold);
    } catch (const std::exception&) {
      throw UsageError("--threshold " + o.threshold + ": expected a number or 'adaptive'");
    }
  }
  out.dilation = o.dilation;
  out.apply_rope = o.rope;
  if (o.layers != "all") {
    std::stringstream list(o.layers);
    for (std::string item; std::getline(list, item, ',');) {
      try {
        out.layers.push_back(std::stoll(item));
      } catch (const std::exception&) {
        throw UsageError("--layers " + o.layers + ": expected 'all' or comma-separated layer indices");
      }
    }
  }
}

EffectsMaskRequest effects_request(const EffectsOptions& o, const at::Tensor& video, const at::Tensor& mask) {
  EffectsMaskRequest r;
  r.video = video;
  r.object_mask = mask;
  r.prompt = o.prompt;
  r.extraction_sigma = o.sigma;
  r.seed = o.seed;
  parse_effects_options(o, r.options);
  return r;
}

void write_mask_video(const std::string& path, const at::Tensor& mask, double fps, Log& log) {
  VideoWriteOptions write;
  write.frame_rate = fps;
  const auto written = write_video(path, mask_frames(mask), write);
  for (const auto& note : written.notes) log.diagnostic(note);
  log.line("wrote " + written.path.string());
}

int run_effects_mask(const EffectsOptions& o) {
  Log log;
  check_given_outputs({{"--output", o.job.output, OutputKind::video}, {"--save-scores", o.save_scores}}, job_inputs(o.job));
  EffectsMaskOptions parsed;
  parse_effects_options(o, parsed);
  const auto job_settings = job_plan(o.job.flags, log);
  const auto info = inspect_model(o.job.model_dir);
  const auto [video, mask] = read_inputs(o.job, info.rules, log);
  MemoryRequest need;
  need.batch = 1, need.frames = video.size(0), need.height = video.size(2), need.width = video.size(3);
  need.text_tokens = 256, need.guidance = false, need.denoise = false, need.decode = false;
  need.encode_frames = video.size(0), need.effects_query_chunk = parsed.query_chunk;
  const auto plan = check_memory(info, job_settings, o.job.flags, need, "effects-mask", log);
  auto model = load_model(info, plan, o.job.flags, "the mask shows the pipeline working, not real effects", log);
  const auto result = compute_effects_mask(model, effects_request(o, video, mask), plan, log.sink(),
                                           log.progress_callback());
  log.end_bar();
  const double grown = result.total_mask.sum().item<double>() / std::max(1.0, result.object_mask.sum().item<double>());
  log.line(c10::str("threshold ", result.threshold, ": the total mask covers ", grown, "x the object's pixels"));
  write_mask_video(o.job.output, result.total_mask, 24.0, log);
  if (!o.save_scores.empty()) {
    save_safetensors(o.save_scores, {{"scores", result.scores.contiguous()}, {"object_tokens", result.object_tokens.contiguous()}},
                     {{"threshold", c10::str(result.threshold)}});
    log.line("scores " + c10::str(result.scores.sizes()) + " -> " + o.save_scores);
  }
  std::cout << o.job.output << "\n";
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// ltxmps remove

struct RemoveOptions {
  EffectsOptions effects;  // the effects pass of --effects auto (its own defaults)
  std::string effects_mode = "auto", prompt = "Empty", negative_prompt = kRemovalNegativePrompt, save_latents, save_mask;
  int64_t steps = 30;
  double guidance_scale = 3.0, frame_rate = 25.0, image_cond_noise_scale = 0.15, decode_timestep = 0.0;
  uint64_t seed = 1;
};

RemovalRequest removal_request(const RemoveOptions& o, const at::Tensor& video, const at::Tensor& mask) {
  RemovalRequest r;
  r.video = video;
  r.mask = mask;
  r.prompts = {o.prompt};
  r.negative_prompts = {o.negative_prompt};
  r.num_inference_steps = o.steps;
  r.guidance_scale = o.guidance_scale;
  r.frame_rate = o.frame_rate;
  r.image_cond_noise_scale = o.image_cond_noise_scale;
  r.decode_timestep = o.decode_timestep;
  r.seed = o.seed;
  return r;
}

int run_remove(const RemoveOptions& o) {
  Log log;
  const auto& job = o.effects.job;
  check_given_outputs({{"--output", job.output, OutputKind::video}, {"--save-latents", o.save_latents},
                 {"--save-mask", o.save_mask}},
                job_inputs(job));
  EffectsMaskOptions parsed;
  parse_effects_options(o.effects, parsed);
  const auto job_settings = job_plan(job.flags, log);
  const auto info = inspect_model(job.model_dir);
  const auto [video, mask] = read_inputs(job, info.rules, log);
  MemoryRequest need;
  need.batch = 1, need.frames = video.size(0), need.height = video.size(2), need.width = video.size(3);
  need.text_tokens = 256, need.guidance = o.guidance_scale > 1.0, need.release_text_encoder = false;
  need.encode_frames = video.size(0);  // the video, then the mask (one at a time)
  if (o.effects_mode == "auto") need.effects_query_chunk = parsed.query_chunk;
  const auto plan = check_memory(info, job_settings, job.flags, need, "remove", log);
  auto loaded_model = load_model(info, plan, job.flags, "the result shows the pipeline working, not a real inpainting",
                                 log);
  RemovalResult result;
  if (o.effects_mode == "auto") {
    log.line("--effects auto: the mask is the object's; its effects mask is computed first");
    auto both = remove_object_with_effects(loaded_model, effects_request(o.effects, video, mask),
                                           removal_request(o, video, mask), plan, log.sink(), log.progress_callback());
    log.end_bar();
    log.line(c10::str("effects mask: threshold ", both.effects.threshold, ", total mask ",
                      both.effects.total_mask.sum().item<double>() / std::max(1.0, both.effects.object_mask.sum().item<double>()),
                      "x the object's pixels"));
    result = std::move(both.removal);
  } else {
    log.line("--effects none: the mask is the total mask (object and effects)");
    result = remove_object(loaded_model, removal_request(o, video, mask), plan, log.sink(), log.progress_callback());
    log.end_bar();
  }
  VideoWriteOptions write;
  write.frame_rate = o.frame_rate;
  const auto written = write_video(job.output, result.frames, write);
  for (const auto& note : written.notes) log.diagnostic(note);
  if (!o.save_latents.empty())
    save_safetensors(o.save_latents, {{"latents", result.latents.contiguous()}},
                     {{"seed", std::to_string(o.seed)}, {"random_weights", loaded_model.random_weights ? "true" : "false"}});
  if (!o.save_mask.empty()) save_safetensors(o.save_mask, {{"token_mask", result.token_mask.contiguous()}});
  log.line(c10::str("wrote ", written.path.string(), ": the background, ", written.frames, " frames of ", written.width,
                    "x", written.height, ", ", result.token_mask.sum().item<double>(), " of ",
                    result.token_mask.numel(), " latent tokens regenerated"));
  if (loaded_model.random_weights)
    log.line("reminder: random weights, so the background is not a real inpainting; pass --model-dir for LTX-Video");
  std::cout << written.path.string() << "\n";
  return 0;
}

void add_effects_flags(CLI::App* cmd, EffectsOptions& o) {
  cmd->add_option("--extraction-sigma", o.sigma, "noise level of the attention forward")->capture_default_str();
  cmd->add_option("--threshold", o.threshold, "score threshold, or 'adaptive' (mean + 0.5 std)")->capture_default_str();
  cmd->add_option("--dilation", o.dilation, "per-frame dilation (odd kernel size; 1 = none)")->capture_default_str()
      ->check(kPositiveInt);
  cmd->add_option("--layers", o.layers, "'all' or comma-separated transformer layers")->capture_default_str();
  cmd->add_flag("--attention-rope", o.rope, "use the model's true attention (with RoPE) instead of the official maps");
}

// ---------------------------------------------------------------------------------------------------
// ltxmps synthetic-clip

struct ClipOptions {
  std::string output_dir;
  int64_t frames = 17, height = 128, width = 192;
  uint64_t seed = 0;
  double frame_rate = 24.0;
};

int run_synthetic_clip(const ClipOptions& o) {
  Log log;
  if (!fs::is_directory(o.output_dir)) throw UsageError("--output-dir " + o.output_dir + ": no such folder");
  const auto clip = make_synthetic_clip(o.frames, o.height, o.width, o.seed);
  const std::string ext = video_io_has_ffmpeg() ? ".mp4" : "";
  VideoWriteOptions write;
  write.frame_rate = o.frame_rate;
  auto three = [](const at::Tensor& m) { return m.expand({m.size(0), 3, m.size(2), m.size(3)}).contiguous(); };
  for (const auto& [name, frames] : {std::pair<std::string, at::Tensor>{"clip", clip.video},
                                     {"object_mask", three(clip.object_mask)}, {"true_total_mask", three(clip.total_mask)}}) {
    const auto written = write_video(fs::path(o.output_dir) / (name + ext), frames, write);
    for (const auto& note : written.notes) log.diagnostic(note);
    std::cout << written.path.string() << "\n";
  }
  return 0;
}

}  // namespace

Runner setup_synthetic_clip(CLI::App* cmd) {
  auto o = std::make_shared<ClipOptions>();
  cmd->add_option("--output-dir", o->output_dir, "folder for clip, object_mask and true_total_mask")->required();
  cmd->add_option("--frames", o->frames, "frames")->capture_default_str()->check(kPositiveInt);
  cmd->add_option("--height", o->height, "pixels")->capture_default_str()->check(kPositiveInt);
  cmd->add_option("--width", o->width, "pixels")->capture_default_str()->check(kPositiveInt);
  cmd->add_option("--seed", o->seed, "texture noise seed")->capture_default_str()->check(seed_validator());
  return [o] { return run_synthetic_clip(*o); };
}

Runner setup_effects_mask(CLI::App* cmd) {
  auto o = std::make_shared<EffectsOptions>();
  add_mask_job_options(cmd, o->job, "the object's mask (video or PNG folder; white = object)");
  cmd->add_option("--output", o->job.output, "the total mask (0/255 video, or a PNG folder)")->required();
  cmd->add_option("--seed", o->seed, "CPU generator seed of the posterior sample and the noise")->capture_default_str()->check(seed_validator());
  cmd->add_option("--prompt", o->prompt, "prompt of the attention forward (official: empty)");
  cmd->add_option("--save-scores", o->save_scores, "also write 'scores' and 'object_tokens' [F', H', W'] (safetensors)");
  add_effects_flags(cmd, *o);
  return [o] { return run_effects_mask(*o); };
}

Runner setup_remove(CLI::App* cmd) {
  auto o = std::make_shared<RemoveOptions>();
  add_mask_job_options(cmd, o->effects.job, "the mask (video or PNG folder; white = remove): the object's with "
                                            "--effects auto, the total mask with --effects none");
  cmd->add_option("--output", o->effects.job.output, "the background video (*.mp4, or a folder for PNG frames)")
      ->required();
  cmd->add_option("--effects", o->effects_mode, "auto: grow the mask by the object's effects first; none: the mask "
                                                "is the total mask")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "none"}));
  cmd->add_option("--steps", o->steps, "denoising steps")->capture_default_str()->check(kPositiveInt);
  cmd->add_option("--guidance-scale", o->guidance_scale, "classifier-free guidance")->capture_default_str()
      ->check(kNonNegative);
  cmd->add_option("--seed", o->seed, "CPU generator seed")->capture_default_str()->check(seed_validator());
  cmd->add_option("--prompt", o->prompt, "prompt")->capture_default_str();
  cmd->add_option("--negative-prompt", o->negative_prompt, "negative prompt")->capture_default_str();
  cmd->add_option("--frame-rate", o->frame_rate, "RoPE time scale and output frame rate")->capture_default_str()
      ->check(kPositive);
  cmd->add_option("--image-cond-noise-scale", o->image_cond_noise_scale, "re-noise of kept tokens per step")
      ->capture_default_str()
      ->check(kNonNegative);
  cmd->add_option("--decode-timestep", o->decode_timestep, "VAE decode timestep")->capture_default_str()
      ->check(kNonNegative);
  cmd->add_option("--save-latents", o->save_latents, "also write 'latents' [1, C, F', H', W'] (safetensors)");
  cmd->add_option("--save-mask", o->save_mask, "also write 'token_mask' [1, 1, F', H', W'] (safetensors)");
  cmd->add_option("--effects-seed", o->effects.seed, "seed of the effects pass (--effects auto)")->capture_default_str()->check(seed_validator());
  add_effects_flags(cmd, o->effects);
  return [o] { return run_remove(*o); };
}

}  // namespace ltxmps::cli
