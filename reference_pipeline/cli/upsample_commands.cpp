// `ltxmps upsample`: LTXLatentUpsamplePipeline on a video or on saved latents, to frames or to latents.

#include "cli_common.hpp"
#include "run_common.hpp"

#include "ltxmps_pipeline/latent_upsample.hpp"
#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <string>

namespace fs = std::filesystem;

namespace ltxmps::cli {

namespace {

using namespace ltxmps::pipeline;

struct UpsampleOptions {
  std::string model_dir, upscaler, video, latents, output, fit = "trim", latents_space = "auto", variant;
  int64_t height = 0, width = 0;
  double adain_factor = 0.0, tone_map_compression_ratio = 0.0, decode_timestep = 0.0, decode_noise_scale = 0.0,
         frame_rate = 25.0;
  uint64_t seed = 0;
  PlanFlags flags;
  CLI::Option *height_opt = nullptr, *width_opt = nullptr, *decode_noise_opt = nullptr;
};

bool writes_latents(const std::string& output) { return fs::path(output).extension() == ".safetensors"; }

// The VAE of an LTX-Video folder (model_index.json + vae/) or of a bare vae/ folder.
LtxModel load_vae_only(const UpsampleOptions& o, const ltxmps::ExecutionPlan& plan, Log& log) {
  LtxModel model;
  LoadOptions load;
  load.load_text_encoder = false;
  fs::path vae_dir = o.model_dir;
  if (fs::exists(fs::path(o.model_dir) / "model_index.json")) {
    const auto folder = inspect_ltx_folder(o.model_dir, load);
    model.root = folder.root;
    model.pipeline_class = folder.pipeline_class;
    vae_dir = folder.root / "vae";
  } else {
    LTXMPS_CHECK(fs::is_regular_file(vae_dir / "config.json"), "--model-dir ", o.model_dir,
                 ": neither an LTX-Video folder (model_index.json) nor a VAE folder (config.json)");
  }
  const WeightCheckGuard weight_check(!o.flags.runtime.skip_weight_check);
  Activity loading("loading the VAE from " + vae_dir.string());
  std::optional<std::string> variant;
  if (!o.variant.empty()) variant = o.variant;
  model.vae = load_vae(vae_dir, vae_runtime(plan), variant);
  if (plan.vae.tiling) model.vae.tiling.enable_tiling();
  model.vae.tiling.use_slicing = plan.vae.slicing;
  log.line("VAE " + vae_dir.string() + ": " + std::to_string(model.vae.config.latent_channels) + " latent channels");
  return model;
}

// --latents: the tensor 'latents' [B, C, F, H, W], as normalized latents for the pipeline.
at::Tensor read_latents(const UpsampleOptions& o, const VaeModel& vae, Log& log) {
  const auto file = SafetensorsFile::open(o.latents);
  LTXMPS_CHECK(file.find("latents") != nullptr, "--latents ", o.latents,
               ": no tensor 'latents' (expected [B, C, F, H, W])");
  auto latents = file.load("latents").to(at::kFloat);
  require_finite_input(latents, "--latents", o.latents, "latents");
  std::string space = o.latents_space;
  if (space == "auto") {
    const auto entry = file.metadata().find("latents");
    space = entry != file.metadata().end() ? entry->second : "raw";
    LTXMPS_CHECK(space == "normalized" || space == "raw", "--latents ", o.latents, ": metadata 'latents' is '", space,
                 "', expected 'normalized' or 'raw'");
  }
  log.line(c10::str("latents ", o.latents, ": ", latents.sizes(), " (", space, ")"));
  LTXMPS_CHECK(latents.dim() == 5, "--latents ", o.latents, ": expected [B, C, F, H, W], got ", latents.sizes());
  return space == "normalized" ? latents : vae.normalize_latents(latents);
}

LatentUpsampleRequest upsample_request(const UpsampleOptions& o) {
  LatentUpsampleRequest r;
  r.options.adain_factor = o.adain_factor;
  r.options.tone_map_compression_ratio = o.tone_map_compression_ratio;
  r.output_latents = writes_latents(o.output);
  r.decode_timestep = o.decode_timestep;
  if (o.decode_noise_opt->count()) r.decode_noise_scale = o.decode_noise_scale;
  r.seed = o.seed;
  return r;
}

void write_result(const UpsampleOptions& o, const LatentUpsampleResult& result, Log& log) {
  if (writes_latents(o.output)) {
    save_safetensors(o.output, {{"latents", result.latents}},
                     {{"latents", "normalized"}, {"seed", std::to_string(o.seed)}});
    log.line(c10::str("normalized latents ", result.latents.sizes(), " -> ", o.output));
    std::cout << o.output << "\n";
    return;
  }
  VideoWriteOptions write;
  write.frame_rate = o.frame_rate;
  const auto written = write_video(o.output, result.frames[0], write);
  for (const auto& note : written.notes) log.diagnostic(note);
  log.line(c10::str("wrote ", written.path.string(), ": ", written.frames, " frames of ", written.width, "x",
                    written.height));
  std::cout << written.path.string() << "\n";
}

int run_upsample(const UpsampleOptions& o) {
  Log log;
  if (o.video.empty() == o.latents.empty()) throw UsageError("give exactly one of --video and --latents");
  if (!writes_latents(o.output) && is_video_file_path(o.output) && !video_io_has_ffmpeg())
    throw UsageError("--output " + o.output + ": this ltxmps was built without FFmpeg; give a folder for PNG frames "
                     "or a .safetensors file for latents");
  check_given_outputs({{"--output", o.output, writes_latents(o.output) ? OutputKind::file : OutputKind::video}},
                      {{"--video", o.video}, {"--latents", o.latents}, {"--model-dir", o.model_dir},
                       {"--upscaler", o.upscaler}});
  auto request = upsample_request(o);
  try {
    request.options.validate("upsample");
  } catch (const ltxmps::Error& e) {
    throw UsageError(e.what());
  }
  const auto plan = job_plan(o.flags, log);
  auto model = load_vae_only(o, plan, log);
  const FitRules rules{model.vae.config.spatial_compression(), model.vae.config.temporal_compression()};
  if (!o.video.empty()) {
    FitTarget target;
    if (o.height_opt->count()) target.height = o.height;
    if (o.width_opt->count()) target.width = o.width;
    request.video = fit_video(read_video(o.video), rules, parse_fit_mode(o.fit), target, o.video);
    log.line(c10::str("video ", o.video, ": ", request.video->size(0), " frames of ", request.video->size(3), "x",
                      request.video->size(2)));
  } else {
    request.latents = read_latents(o, model.vae, log);
  }
  LatentUpsamplerModel upsampler = [&] {
    const WeightCheckGuard weight_check(!o.flags.runtime.skip_weight_check);
    Activity loading("loading the latent upsampler from " + o.upscaler);
    return load_latent_upsampler(o.upscaler, latent_upsampler_runtime(plan));
  }();
  const auto& c = upsampler.config;
  log.line(c10::str("latent upsampler ", o.upscaler, ": ", c.in_channels, " channels, mid ", c.mid_channels, ", ",
                    c.spatial_upsample ? "spatial" : "", c.spatial_upsample && c.temporal_upsample ? " + " : "",
                    c.temporal_upsample ? "temporal" : "", " x2, dims ", c.dims));
  const auto result = latent_upsample(model, upsampler, request, plan, log.sink(), log.progress_callback());
  log.end_bar();
  write_result(o, result, log);
  return 0;
}

}  // namespace

Runner setup_upsample(CLI::App* cmd) {
  auto o = std::make_shared<UpsampleOptions>();
  cmd->footer(
      "As diffusers' LTXLatentUpsamplePipeline: --latents (normalized as the denoising loop leaves them, or raw as "
      "'generate --save-latents' writes them) or --video (VAE-encoded first) are upsampled by the latent upsampler, "
      "optionally matched to the input's statistics (--adain-factor) and tone-mapped, then written as normalized "
      "latents (--output *.safetensors, for a second denoising pass) or decoded to frames.");
  cmd->add_option("--model-dir,--model", o->model_dir, "diffusers LTX-Video folder (its VAE is used) or a vae/ folder")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--upscaler", o->upscaler,
                  "latent upsampler: diffusers LTXLatentUpsamplerModel folder or ltxv-spatial-upscaler-*.safetensors")
      ->required()
      ->check(CLI::ExistingPath);
  auto* video = cmd->add_option("--video", o->video, "input video (file or folder of PNG frames)")
                    ->check(CLI::ExistingPath);
  auto* latents = cmd->add_option("--latents", o->latents, "input latents (safetensors with 'latents' [B, C, F, H, W])")
                      ->check(CLI::ExistingFile);
  video->excludes(latents);
  cmd->add_option("--latents-space", o->latents_space,
                  "--latents are 'normalized' or 'raw' (VAE space); auto: the file's metadata 'latents', else raw")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "normalized", "raw"}))
      ->needs(latents);
  cmd->add_option("--output", o->output,
                  "*.safetensors: the normalized upsampled latents; else a video file or a folder of PNG frames")
      ->required();
  cmd->add_option("--adain-factor", o->adain_factor, "AdaIN strength towards the input's statistics (0: off)")
      ->capture_default_str();
  cmd->add_option("--tone-map-compression-ratio", o->tone_map_compression_ratio, "tone-mapping strength in [0, 1]")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--fit", o->fit, "make --video fit the VAE: trim (frames to 8k+1, as diffusers), crop, resize, none")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "crop", "resize", "trim"}))
      ->needs(video);
  o->height_opt = cmd->add_option("--height", o->height, "with --video and --fit crop|resize: pixels")
                      ->check(kPositiveInt)
                      ->needs(video);
  o->width_opt = cmd->add_option("--width", o->width, "with --video and --fit crop|resize: pixels")
                     ->check(kPositiveInt)
                     ->needs(video);
  cmd->add_option("--seed", o->seed, "seed of the CPU generator (posterior sample, decode noise)")
      ->capture_default_str()
      ->check(seed_validator());
  cmd->add_option("--decode-timestep", o->decode_timestep, "VAE decode timestep (timestep-conditioned VAEs)")
      ->capture_default_str()
      ->check(kNonNegative);
  o->decode_noise_opt = cmd->add_option("--decode-noise-scale", o->decode_noise_scale,
                                        "decode noise mix (default: --decode-timestep)")
                            ->check(kNonNegative);
  cmd->add_option("--frame-rate", o->frame_rate, "frames per second of an output video file")
      ->capture_default_str()
      ->check(kPositive);
  cmd->add_option("--variant", o->variant, "VAE weight variant (e.g. bf16)");
  add_plan_flags(cmd, o->flags);
  add_weight_check_option(cmd, o->flags.runtime);
  cmd->add_flag("--vae-tiling", o->flags.vae_tiling, "VAE encode/decode in overlapping spatial tiles");
  return [o] { return run_upsample(*o); };
}

}  // namespace ltxmps::cli
