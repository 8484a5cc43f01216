// `ltxmps generate` (the LTX-Video pipelines end to end, video files in and out) and `ltxmps plan` (the execution
// plan this machine, or a simulated one, would get).
//
// Logging: everything the run says goes to stderr as "ltxmps: ..." lines: the plan first, then the diagnostics the
// library reports through its sink, then progress: a bar redrawn with \r on a terminal, one line per step
// otherwise. stdout gets only the result (the written file for generate, the plan for plan).

#include "cli_common.hpp"
#include "run_common.hpp"

#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/multi_scale.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/plan.hpp"

#include <ATen/ATen.h>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>

namespace fs = std::filesystem;

namespace ltxmps::cli {

namespace {

// ---------------------------------------------------------------------------------------------------
// ltxmps plan

struct PlanOptions {
  PlanFlags flags;
  bool json = false;
  std::string simulate;
  std::string model_dir;
};

int run_plan(const PlanOptions& o) {
  ltxmps::Capabilities caps = ltxmps::current_capabilities();
  if (o.simulate == "cpu") caps = ltxmps::Capabilities::cpu_only();
  else if (o.simulate == "cuda") caps = ltxmps::Capabilities::cuda(1, 9, 0);
  else if (o.simulate == "mps") caps = ltxmps::Capabilities::mps(15, 0);
  else if (o.simulate == "mps13") caps = ltxmps::Capabilities::mps(13, 0);
  else if (!o.simulate.empty()) caps = memory_preset(o.simulate);
  auto plan = resolve_plan(o.flags.runtime, loader_settings(o.flags), caps);
  const auto info = o.model_dir.empty() ? ltx_13b_shapes() : inspect_model(o.model_dir);
  const ltxmps::pipeline::MemoryRequest request;  // the CLI's default request
  ltxmps::pipeline::plan_model_weights(plan, info.transformer, info.vae, info.text_encoder, request);
  if (!o.json)
    std::cout << "weights planned for " << (o.model_dir.empty() ? "the LTX-Video 13B shapes (no --model-dir)" : o.model_dir)
              << ", " << request.frames << " frames of " << request.width << "x" << request.height
              << " with guidance\n";
  std::cout << (o.json ? ltxmps::to_json(plan) + "\n" : ltxmps::to_text(plan) + kernels_text(plan));
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// ltxmps generate

struct GenerateOptions {
  std::string model_dir, prompt, prompt_cache, negative_prompt, image, video, output, save_latents, fit = "none";
  int64_t height = 0, width = 0, num_frames = 0, steps = 0;
  double strength = 0.8, guidance_scale = 3.0, guidance_rescale = 0.0, frame_rate = 25.0, decode_timestep = 0.0,
         decode_noise_scale = 0.0;
  uint64_t seed = 0;
  PlanFlags flags;
  // Distilled checkpoints and the two-pass flow (docs/pipelines.md, "Distilled checkpoints and the two-pass flow").
  std::vector<double> timesteps;
  bool distilled = false;
  double image_cond_noise_scale = 0.15;
  std::string upscaler, first_pass_scale = "2/3";
  int64_t second_pass_steps = 10;
  double second_pass_strength = 0.4, adain_factor = 0.0, tone_map_compression_ratio = 0.0;
  // Which options were given (CLI11 keeps the Option objects alive with the App).
  CLI::Option *height_opt = nullptr, *width_opt = nullptr, *frames_opt = nullptr, *steps_opt = nullptr,
              *prompt_opt = nullptr, *output_opt = nullptr, *decode_noise_opt = nullptr, *timesteps_opt = nullptr,
              *guidance_opt = nullptr, *rescale_opt = nullptr, *decode_timestep_opt = nullptr,
              *cond_noise_opt = nullptr, *second_steps_opt = nullptr, *second_strength_opt = nullptr,
              *adain_opt = nullptr;
};

// The default output: an MP4 where FFmpeg is built in, else a folder of PNG frames.
std::string default_output() {
  return ltxmps::pipeline::video_io_has_ffmpeg() ? "ltxmps_default.mp4" : "ltxmps_default";
}

void check_multiple(const char* option, int64_t value, int64_t multiple) {
  if (value % multiple != 0)
    throw UsageError(c10::str(option, " ", value, ": the model takes multiples of ", multiple,
                              " (its VAE's spatial compression): use ", ltxmps::pipeline::nearest_multiples(value, multiple)));
}

void check_frame_count(int64_t frames, int64_t multiple) {
  if ((frames - 1) % multiple != 0)
    throw UsageError(c10::str("--num-frames ", frames, ": the model takes ", multiple, "k+1 frames (its VAE's temporal "
                              "compression is ", multiple, "): use ",
                              ltxmps::pipeline::nearest_frame_counts(frames, multiple)));
}

std::string describe_size(int64_t frames, int64_t height, int64_t width) {
  return c10::str(frames, frames == 1 ? " frame of " : " frames of ", width, "x", height);
}

/// What generate knows before any model loads: checked arguments, the model folder's configs, the plan.
struct GenerateSetup {
  bool embedded = true;
  std::string output;
  ltxmps::pipeline::FitMode fit = ltxmps::pipeline::FitMode::none;
  ltxmps::pipeline::LoadOptions load;
  ModelInfo info;
  ltxmps::ExecutionPlan plan;
  ltxmps::pipeline::FitRules rules;
  ltxmps::pipeline::FitTarget target;
};

GenerateSetup check_generate(const GenerateOptions& o, Log& log) {
  using namespace ltxmps::pipeline;
  GenerateSetup s;
  s.embedded = o.model_dir.empty();
  if (!s.embedded && o.prompt_opt->count() == 0 && o.prompt_cache.empty())
    throw UsageError("--prompt or --prompt-cache is required with --model-dir");
  s.output = o.output_opt->count() ? o.output : default_output();
  if (is_video_file_path(s.output) && !video_io_has_ffmpeg())
    throw UsageError("--output " + s.output +
                     ": this ltxmps was built without FFmpeg and cannot write video files; give a folder name to get PNG "
                     "frames (for example --output " + fs::path(s.output).replace_extension().string() + ")");
  check_given_outputs({{"--output", s.output, OutputKind::video}, {"--save-latents", o.save_latents}},
                {{"--video", o.video}, {"--image", o.image}, {"--prompt-cache", o.prompt_cache}, {"--model-dir", o.model_dir}});
  s.fit = parse_fit_mode(o.fit);
  if (!s.embedded)
    LTXMPS_CHECK(fs::is_directory(o.model_dir), "--model-dir ", o.model_dir, ": no such folder (expected a diffusers "
                                                "LTX-Video folder with model_index.json)");
  s.load.load_text_encoder = o.prompt_cache.empty();
  s.info = inspect_model(o.model_dir, s.load);
  s.plan = job_plan(o.flags, log);
  s.rules = s.info.rules;
  // The two-pass flow rounds its first pass itself and resizes the result to any requested size.
  const bool any_size = !o.upscaler.empty();
  if (o.height_opt->count()) {
    if (!any_size) check_multiple("--height", o.height, s.rules.spatial_multiple);
    s.target.height = o.height;
  }
  if (o.width_opt->count()) {
    if (!any_size) check_multiple("--width", o.width, s.rules.spatial_multiple);
    s.target.width = o.width;
  }
  if (o.frames_opt->count()) check_frame_count(o.num_frames, s.rules.temporal_multiple), s.target.num_frames = o.num_frames;
  return s;
}

/// The --image or --video input fitted to the model: frames [F, 3, H, W] in [0, 1] (undefined without one).
at::Tensor read_generate_input(const GenerateOptions& o, const GenerateSetup& s, Log& log) {
  using namespace ltxmps::pipeline;
  at::Tensor input;
  if (!o.image.empty()) {
    input = fit_video(read_image(o.image).unsqueeze(0), s.rules, s.fit, {s.target.height, s.target.width, std::nullopt},
                      o.image);
    log.line(c10::str("image ", o.image, ": ", describe_size(1, input.size(2), input.size(3))));
  } else if (!o.video.empty()) {
    input = fit_video(read_video(o.video), s.rules, s.fit, s.target, o.video);
    if (s.target.num_frames && input.size(0) < *s.target.num_frames)
      throw ltxmps::Error(c10::str(o.video, ": has ", input.size(0), " usable frames, fewer than --num-frames ",
                                   *s.target.num_frames, " (video-to-video keeps the video's length)"));
    log.line(c10::str("video ", o.video, ": ", describe_size(input.size(0), input.size(2), input.size(3))));
  }
  return input;
}

/// The request: sizes from the options, else the input's, else the defaults; the prompt or its cache.
ltxmps::pipeline::GenerateRequest generate_request(const GenerateOptions& o, const GenerateSetup& s,
                                                   const at::Tensor& input) {
  using namespace ltxmps::pipeline;
  GenerateRequest r;
  const bool embedded = s.embedded;
  r.height = input.defined() ? input.size(2) : s.target.height.value_or(embedded ? EmbeddedDefault::height : r.height);
  r.width = input.defined() ? input.size(3) : s.target.width.value_or(embedded ? EmbeddedDefault::width : r.width);
  r.num_frames = !o.video.empty() ? input.size(0)
                                  : s.target.num_frames.value_or(embedded ? EmbeddedDefault::num_frames : r.num_frames);
  r.num_inference_steps =
      o.steps_opt->count() ? o.steps : (embedded ? EmbeddedDefault::num_inference_steps : r.num_inference_steps);
  r.guidance_scale = o.distilled && !o.guidance_opt->count() ? 1.0 : o.guidance_scale;
  r.guidance_rescale = o.guidance_rescale;
  r.image_cond_noise_scale = o.image_cond_noise_scale;
  if (o.timesteps_opt->count()) r.timesteps = o.timesteps;
  else if (o.distilled) r.timesteps = DistilledSchedule::first_pass();
  r.frame_rate = o.frame_rate;
  r.decode_timestep = o.decode_timestep;
  if (o.decode_noise_opt->count()) r.decode_noise_scale = o.decode_noise_scale;
  r.seed = o.seed;
  r.prompts = {o.prompt_opt->count() ? o.prompt : std::string(EmbeddedDefault::prompt)};
  r.negative_prompts = {o.negative_prompt};
  if (!o.prompt_cache.empty()) r.prompt_embeddings = load_prompt_cache(o.prompt_cache);
  else if (embedded) r.max_sequence_length = EmbeddedDefault::max_sequence_length;
  if (!o.video.empty()) {
    r.video = input;
    r.denoise_strength = o.strength;
  } else if (!o.image.empty()) {
    r.image = input[0];
  }
  return r;
}

/// Says whether classifier-free guidance runs, and why (diffusers' rule).
void log_guidance(double guidance_scale, bool distilled, Log& log) {
  if (guidance_scale > 1.0) return;
  log.line(c10::str("classifier-free guidance off: guidance scale ", guidance_scale,
                    " is not above 1 (diffusers' do_classifier_free_guidance = guidance_scale > 1), so each step runs ",
                    "the transformer once, without the negative prompt",
                    distilled ? "; --distilled: the distilled checkpoints are guidance-distilled" : ""));
}

void log_pipeline(const GenerateOptions& o, const ltxmps::pipeline::GenerateRequest& r, Log& log) {
  using namespace ltxmps::pipeline;
  if (!o.video.empty())
    log.line(c10::str("video-to-video: the video's latents, denoised from strength ", o.strength,
                      " (LTXConditionPipeline's denoise_strength)"));
  else if (!o.image.empty())
    log.line(r.kind == PipelineKind::condition ? "image condition at frame 0 (LTXConditionPipeline)"
                                               : "image-to-video (LTXImageToVideoPipeline)");
  if (!o.prompt_cache.empty()) log.line("prompt embeddings from the cache " + o.prompt_cache);
  else if (o.model_dir.empty())
    log.line("prompt \"" + r.prompts.front() + "\" is encoded by the embedded T5 (byte tokens, random weights)");
  const int64_t steps = r.timesteps ? static_cast<int64_t>(r.timesteps->size()) : r.num_inference_steps;
  log.line(c10::str("generating ", describe_size(r.num_frames, r.height, r.width), " at ", r.frame_rate, " fps, ",
                    steps, steps == 1 ? " step" : " steps", r.timesteps ? " (custom timesteps)" : "", ", guidance ",
                    r.guidance_scale, ", seed ", r.seed));
  log_guidance(r.guidance_scale, o.distilled, log);
}

/// "2/3" or "0.5": the first pass scale (a fraction as diffusers' example writes it, in the same double arithmetic).
double parse_scale(const std::string& text) {
  const auto slash = text.find('/');
  try {
    size_t used = 0;
    if (slash == std::string::npos) {
      const double v = std::stod(text, &used);
      if (used == text.size()) return v;
    } else {
      const double num = std::stod(text.substr(0, slash), &used);
      size_t used_den = 0;
      const double den = std::stod(text.substr(slash + 1), &used_den);
      if (used == slash && used_den == text.size() - slash - 1 && den != 0) return num / den;
    }
  } catch (const std::exception&) {
  }
  throw UsageError("--first-pass-scale " + text + ": expected a number or a fraction such as 2/3");
}

/// The two-pass request from the options: the documented example's defaults unless an option is given.
ltxmps::pipeline::MultiScaleRequest multi_scale_request(const GenerateOptions& o,
                                                        const ltxmps::pipeline::GenerateRequest& g) {
  using namespace ltxmps::pipeline;
  MultiScaleRequest r;
  if (o.distilled) r.use_distilled_defaults();
  const GenerationSettings& shared = g;
  const MultiScaleRequest defaults = r;
  static_cast<GenerationSettings&>(r) = shared;
  // Options not given keep the two-pass defaults instead of generate's.
  if (!o.steps_opt->count()) r.num_inference_steps = defaults.num_inference_steps;
  if (!o.guidance_opt->count()) r.guidance_scale = defaults.guidance_scale;
  if (!o.rescale_opt->count()) r.guidance_rescale = defaults.guidance_rescale;
  if (!o.decode_timestep_opt->count()) r.decode_timestep = defaults.decode_timestep;
  if (!o.decode_noise_opt->count() && !o.decode_timestep_opt->count()) r.decode_noise_scale = defaults.decode_noise_scale;
  r.image_cond_noise_scale = o.cond_noise_opt->count() ? o.image_cond_noise_scale : defaults.image_cond_noise_scale;
  r.first_pass_scale = parse_scale(o.first_pass_scale);
  r.first_pass_timesteps = o.timesteps_opt->count() ? std::optional(o.timesteps) : defaults.first_pass_timesteps;
  if (o.second_steps_opt->count()) r.second_pass_steps = o.second_pass_steps, r.second_pass_timesteps.reset();
  if (o.second_strength_opt->count()) r.second_pass_strength = o.second_pass_strength;
  if (o.adain_opt->count()) r.upsample.adain_factor = o.adain_factor;
  r.upsample.tone_map_compression_ratio = o.tone_map_compression_ratio;
  if (g.image) r.image = g.image;
  return r;
}

ltxmps::pipeline::LatentUpsamplerConfig upscaler_config(const std::string& path) {
  using namespace ltxmps::pipeline;
  if (fs::is_directory(path)) return LatentUpsamplerConfig::from_file(fs::path(path) / "config.json");
  return lightricks_latent_upsampler_config(path);
}

/// `generate --upscaler`: the two passes around the latent upsampler (multi_scale.hpp).
int run_multi_scale(const GenerateOptions& o, const GenerateSetup& setup, const at::Tensor& input,
                    const ltxmps::pipeline::GenerateRequest& g, Log& log) {
  using namespace ltxmps::pipeline;
  if (!o.video.empty())
    throw UsageError("--upscaler runs the two-pass text/image-to-video flow; it takes no --video (video-to-video is "
                     "one pass: leave out --upscaler)");
  const auto request = multi_scale_request(o, g);
  const auto up_config = upscaler_config(o.upscaler);
  // Checked before any weight loads; the sizes line itself comes from multi_scale()'s pipeline.multi_scale_sizes
  // diagnostic, which the sink prints.
  const auto sizes = request.check(setup.info.vae, setup.info.transformer, up_config);
  MemoryRequest need;
  need.batch = 1, need.frames = request.num_frames, need.height = sizes.second_height, need.width = sizes.second_width;
  need.text_tokens = 256, need.guidance = request.guidance_scale > 1.0, need.encode_text = !request.prompt_embeddings;
  need.encode_frames = request.image ? 1 : 0;
  const auto plan = check_memory(setup.info, setup.plan, o.flags, need, "generate (second pass)", log);
  auto model = load_model(setup.info, plan, o.flags, "the video will be noise-like, not a picture of the prompt", log,
                          setup.load);
  auto upsampler = load_latent_upsampler(o.upscaler, latent_upsampler_runtime(plan));
  log.line(c10::str("latent upsampler ", o.upscaler, ": ", up_config.in_channels, " channels, x",
                    up_config.spatial_factor(), " spatially"));
  const auto steps = [](const std::optional<std::vector<double>>& t, int64_t n) {
    return t ? c10::str(t->size(), " custom timesteps") : c10::str(n, " steps");
  };
  log.line(c10::str("first pass: ", steps(request.first_pass_timesteps, request.num_inference_steps),
                    "; upsample: AdaIN ", request.upsample.adain_factor, ", tone map ",
                    request.upsample.tone_map_compression_ratio, "; second pass: ",
                    steps(request.second_pass_timesteps, request.second_pass_steps), " from denoise strength ",
                    request.second_pass_strength, "; guidance ", request.guidance_scale, ", seed ", request.seed));
  log_guidance(request.guidance_scale, o.distilled, log);
  (void)input;
  const auto result = multi_scale(model, upsampler, request, plan, log.sink(), log.progress_callback());
  log.end_bar();
  const auto& frames = result.resized_frames.defined() ? result.resized_frames : result.frames;
  VideoWriteOptions write;
  write.frame_rate = request.frame_rate;
  const auto written = write_video(setup.output, frames[0], write);
  for (const auto& note : written.notes) log.diagnostic(note);
  if (!o.save_latents.empty()) {
    save_safetensors(o.save_latents, {{"latents", result.latents.contiguous()}},
                     {{"seed", std::to_string(request.seed)}, {"random_weights", model.random_weights ? "true" : "false"}});
    log.line("latents " + c10::str(result.latents.sizes()) + " -> " + o.save_latents);
  }
  log.line(c10::str("wrote ", written.path.string(), ": ", describe_size(written.frames, written.height, written.width)));
  std::cout << written.path.string() << "\n";
  return 0;
}

int run_generate(const GenerateOptions& o) {
  using namespace ltxmps::pipeline;
  const auto wall_start = std::chrono::steady_clock::now();
  Log log;
  const auto setup = check_generate(o, log);
  const auto input = read_generate_input(o, setup, log);
  auto request = generate_request(o, setup, input);
  if (!o.upscaler.empty()) return run_multi_scale(o, setup, input, request, log);

  MemoryRequest need;
  need.batch = static_cast<int64_t>(request.prompts.size()), need.frames = request.num_frames;
  need.height = request.height, need.width = request.width;
  need.text_tokens = request.max_sequence_length.value_or(256), need.guidance = request.guidance_scale > 1.0;
  need.encode_text = !request.prompt_embeddings;
  need.encode_frames = request.video ? request.num_frames : (request.image ? 1 : 0);
  const auto plan = check_memory(setup.info, setup.plan, o.flags, need, "generate", log);
  auto model = load_model(setup.info, plan, o.flags, "the video will be noise-like, not a picture of the prompt", log,
                          setup.load);
  request.kind = choose_pipeline(model, request.image.has_value(), request.video.has_value());
  if (request.kind == PipelineKind::condition && request.image) {
    request.conditions.push_back({request.image->unsqueeze(0), 0, 1.0});
    request.image.reset();
  }
  log_pipeline(o, request, log);
  const auto result = generate(model, request, plan, log.sink(), log.progress_callback());
  log.end_bar();

  VideoWriteOptions write;
  write.frame_rate = request.frame_rate;
  const auto written = write_video(setup.output, result.frames[0], write);
  for (const auto& note : written.notes) log.diagnostic(note);
  if (!o.save_latents.empty()) {
    save_safetensors(o.save_latents, {{"latents", result.latents.contiguous()}},
                     {{"seed", std::to_string(request.seed)}, {"random_weights", model.random_weights ? "true" : "false"}});
    log.line("latents " + c10::str(result.latents.sizes()) + " -> " + o.save_latents);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  log.line(c10::str("wrote ", written.path.string(), ": ", describe_size(written.frames, written.height, written.width),
                    ", ", written.codec, written.format == "png" ? " frames" : ", " + written.format, ", ",
                    request.frame_rate, " fps (", std::fixed, std::setprecision(1), seconds, " s in all)"));
  if (model.random_weights)
    log.line("reminder: random weights, so the video is noise-like; pass --model-dir for a real LTX-Video model");
  std::cout << written.path.string() << "\n";
  return 0;
}

}  // namespace

Runner setup_generate(CLI::App* cmd) {
  auto o = std::make_shared<GenerateOptions>();
  cmd->footer(
      "Without --model-dir a tiny embedded model with random weights runs (64x64, 9 frames, 4 steps by default): the "
      "pipeline works end to end, the video is noise-like.\n"
      "--image: image-to-video (LTXImageToVideoPipeline; with an LTXConditionPipeline folder, an image condition at "
      "frame 0). --video: video-to-video as diffusers' LTXConditionPipeline(latents=<the video's latents>, "
      "denoise_strength=--strength): the video is encoded by the VAE and denoised from --strength (1 ignores it, "
      "smaller keeps more of it; 0.8 as diffusers' video-to-video pipelines).\n"
      "Inputs must fit the model (H, W multiples of 32 for the released models; 8k+1 frames): otherwise the error "
      "says how, or --fit crop|resize|trim fits them.");
  cmd->add_option("--model-dir", o->model_dir, "diffusers LTX-Video folder (model_index.json); none: the embedded default");
  o->prompt_opt = cmd->add_option("--prompt", o->prompt, "the prompt (embedded default: \"" +
                                                             std::string(ltxmps::pipeline::EmbeddedDefault::prompt) + "\")");
  auto* cache = cmd->add_option("--prompt-cache", o->prompt_cache,
                                "prompt cache from 'ltxmps encode-prompt' instead of --prompt (the text encoder is not "
                                "loaded)")
                    ->check(CLI::ExistingFile);
  o->prompt_opt->excludes(cache);
  cmd->add_option("--negative-prompt", o->negative_prompt, "negative prompt (default \"\", as diffusers)");
  auto* image = cmd->add_option("--image", o->image, "first frame: image-to-video (PNG; JPEG etc. with FFmpeg)")
                    ->check(CLI::ExistingPath);
  auto* video = cmd->add_option("--video", o->video, "input video (file or folder of PNG frames): video-to-video")
                    ->check(CLI::ExistingPath);
  image->excludes(video);
  cmd->add_option("--strength", o->strength, "with --video: denoise strength in (0, 1]")
      ->capture_default_str()
      ->check(CLI::Range(1e-6, 1.0))
      ->needs(video);
  o->height_opt = cmd->add_option("--height", o->height, "pixels (default: the input's, else 64 embedded / 512)")
                      ->check(kPositiveInt);
  o->width_opt = cmd->add_option("--width", o->width, "pixels (default: the input's, else 64 embedded / 704)")
                     ->check(kPositiveInt);
  o->frames_opt = cmd->add_option("--num-frames", o->num_frames, "frames, 8k+1 (default: 9 embedded / 161)")
                      ->check(kPositiveInt);
  o->steps_opt = cmd->add_option("--steps", o->steps,
                                 "denoising steps (default: 4 embedded / 50; --upscaler: the first pass's, 30)")
                     ->check(kPositiveInt);
  o->guidance_opt = cmd->add_option("--guidance-scale", o->guidance_scale,
                                    "classifier-free guidance (on above 1; --distilled: 1; --upscaler: 5)")
                        ->capture_default_str()
                        ->check(kNonNegative);
  o->rescale_opt = cmd->add_option("--guidance-rescale", o->guidance_rescale,
                                   "rescale_noise_cfg's phi in [0, 1] (--upscaler: 0.7)")
                       ->capture_default_str()
                       ->check(CLI::Range(0.0, 1.0));
  o->timesteps_opt = cmd->add_option("--timesteps", o->timesteps,
                                     "custom timesteps, comma-separated (condition pipeline, e.g. a distilled "
                                     "checkpoint); with --upscaler: the first pass's")
                         ->delimiter(',')
                         ->expected(1, 1 << 16);
  cmd->add_flag("--distilled", o->distilled,
                "the documented settings of the distilled 0.9.7/0.9.8 checkpoints: guidance 1 and the timesteps "
                "1000,993,987,981,975,909,725,0.03 (with --upscaler also 1000,909,725,421,0 from strength 0.999 and "
                "AdaIN 1 for the second pass); given options win");
  o->cond_noise_opt = cmd->add_option("--image-cond-noise-scale", o->image_cond_noise_scale,
                                      "re-noise of conditioning tokens per step (condition pipeline; --upscaler: 0)")
                          ->capture_default_str()
                          ->check(kNonNegative);
  cmd->add_option("--upscaler", o->upscaler,
                  "latent upsampler (diffusers folder or Lightricks file): the two-pass flow, first pass at "
                  "--first-pass-scale of the size, upsampled, refined by a second pass")
      ->check(CLI::ExistingPath);
  cmd->add_option("--first-pass-scale", o->first_pass_scale, "with --upscaler: first pass size / size, e.g. 2/3")
      ->capture_default_str();
  o->second_steps_opt = cmd->add_option("--second-pass-steps", o->second_pass_steps,
                                        "with --upscaler: steps of the second pass's schedule")
                            ->capture_default_str()
                            ->check(kPositiveInt);
  o->second_strength_opt = cmd->add_option("--second-pass-strength", o->second_pass_strength,
                                           "with --upscaler: denoise strength of the second pass in (0, 1]")
                               ->capture_default_str()
                               ->check(CLI::Range(1e-6, 1.0));
  o->adain_opt = cmd->add_option("--adain-factor", o->adain_factor, "with --upscaler: AdaIN of the upsampled latents")
                     ->capture_default_str();
  cmd->add_option("--tone-map-compression-ratio", o->tone_map_compression_ratio,
                  "with --upscaler: tone mapping of the upsampled latents in [0, 1] (0.6 for 0.9.8)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", o->seed, "seed of the CPU generator (same video on every device)")
      ->capture_default_str()
      ->check(seed_validator());
  cmd->add_option("--frame-rate", o->frame_rate, "frames per second (RoPE scale and the output file)")
      ->capture_default_str()
      ->check(kPositive);
  o->decode_timestep_opt = cmd->add_option("--decode-timestep", o->decode_timestep,
                                           "VAE decode timestep (timestep-conditioned VAEs; --upscaler: 0.05 with "
                                           "noise 0.025)")
                               ->capture_default_str()
                               ->check(kNonNegative);
  o->decode_noise_opt = cmd->add_option("--decode-noise-scale", o->decode_noise_scale,
                                        "decode noise mix (default: --decode-timestep)")
                            ->check(kNonNegative);
  o->output_opt = cmd->add_option("--output", o->output,
                                  "*.mp4 (also .mov/.mkv/.webm/.avi; needs FFmpeg) or a folder for PNG frames (default "
                                  "ltxmps_default.mp4, or the folder ltxmps_default without FFmpeg)");
  cmd->add_option("--save-latents", o->save_latents, "also write the final latents (safetensors, 'latents')");
  cmd->add_option("--fit", o->fit, "make --image/--video fit: crop (center), resize (bilinear), trim (frames only)")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "crop", "resize", "trim"}));
  add_plan_flags(cmd, o->flags);
  add_weight_check_option(cmd, o->flags.runtime);
  add_memory_check_option(cmd, o->flags);
  cmd->add_flag("--vae-tiling", o->flags.vae_tiling, "decode in overlapping spatial tiles");
  cmd->add_flag("--vae-slicing", o->flags.vae_slicing, "decode one batch item at a time");
  return [o] { return run_generate(*o); };
}

Runner setup_plan(CLI::App* cmd) {
  auto o = std::make_shared<PlanOptions>();
  cmd->add_flag("--json", o->json, "print the plan as JSON");
  cmd->add_option("--simulate", o->simulate,
                  "resolve for a simulated machine instead of this one (cuda-24gb, cuda-8gb, mac-64gb: with their memory)")
      ->check(CLI::IsMember({"cpu", "cuda", "mps", "mps13", "cuda-24gb", "cuda-8gb", "mac-64gb"}));
  cmd->add_option("--model-dir", o->model_dir,
                  "plan the weights for this diffusers LTX-Video folder (default: the 13B model's shapes)");
  add_plan_flags(cmd, o->flags);
  return [o] { return run_plan(*o); };
}

}  // namespace ltxmps::cli
