// One LTX-Video text-to-video generation (--job t2v), image-to-video generation (--job i2v: a random image as the
// first frame), object removal (--job remove: the official loop, VAE tiling on) or the two-pass 0.9.7 flow (--job
// two-pass) with the C++ pipeline: the counterpart of pipeline_bench.py.
//
// Same defaults: the 2B transformer (28 layers, 32 heads x 64, caption 4096, in/out 128) and the 0.9.0 VAE
// config (diffusers' AutoencoderKLLTXVideo() defaults), random weights generated in memory (no file), random
// prompt embeddings [1, 128, 4096] instead of T5-XXL, 768x512x121, 30 steps, guidance 3 (CFG on), seed 0.
// Prints one JSON line: seconds per denoising step (mean over the steps after the first), total seconds of
// generate() (loop + decode), the split of that total at the last step's end (t2v, i2v, remove: "loop_seconds",
// "decode_seconds"), and the peak CUDA memory, also per phase (PhasePeaks). --repeat N runs the job N times in the
// process and reports the fastest run (the first pays one-time costs: allocator growth, kernel selection, oneDNN
// primitive creation).
//
// --job two-pass: multi_scale() as diffusers' documented 0.9.7-dev example runs it (docs/pipelines.md, "The
// two-pass flow"): the 0.9.7 VAE config (bench_configs.hpp) and an LTXLatentUpsamplerModel() (mid 512, 4 blocks
// per stage, spatial), random weights; VAE tiling on and the VAE and upsampler in the model dtype, as the example
// (enable_tiling(), torch_dtype for every component); 256-token prompt embeddings (LTXConditionPipeline). First
// pass --steps (default 8) at ⌊size · --first-pass-scale⌋ rounded down to 32, second pass --second-pass-steps
// (default 10) from --second-pass-strength (default 0.4), which runs int(10 · 0.4) = 4 steps, rescale 0.7, decode
// timestep 0.05 / noise 0.025. The JSON line adds per-pass sizes, executed steps and seconds; its
// "seconds_per_step" is the second pass's.
//
//   pipeline_bench [--device cuda] [--precision bf16|fp16|fp32] [--height N] [--width N] [--frames N]
//                  [--steps N] [--guidance X] [--layers N] [--heads N] [--head-dim N]
//                  [--job t2v|i2v|remove|two-pass]
//                  [--first-pass-scale X|A/B] [--second-pass-steps N] [--second-pass-strength X] [--smoke]
//                  [--repeat N] [--cuda-graphs 0|1] [--vae-channels-last 0|1] [--profile PATH]
//                  [--model random|embedded] [--prompt-tokens N]
// --prompt-tokens N: the prompt embeddings' first N tokens are the prompt (mask 1), the rest padding (mask 0), as
// T5 pads a short prompt (default: every token is the prompt); the official removal's two prompts take 16 of 256.
// --cuda-graphs 0 runs every denoising step op by op (the plan's default on CUDA replays a CUDA graph; Note [CUDA
// graphs in the plan]). --vae-channels-last 0 keeps the VAE channels-first (the plan's default on CUDA is
// channels-last; Note [VAE layout in the plan]).
// --model embedded runs the CLI's embedded default model (make_embedded_default_model: the tiny transformer, VAE and
// T5 with its byte tokenizer) on the CLI's sizes instead: t2v 64x64x9 with 4 steps and its default prompt (32
// tokens), remove a 192x128 clip of 17 frames (the synthetic clip's size) with 30 steps and the official prompts
// (256 tokens); the prompts are encoded by its T5 in every run, as the CLI does. embedded_bench.py is its
// counterpart. --layers, --heads and --head-dim do not apply to it.
// --profile PATH records the last run's (first) denoising loop from its first step's end to its last step's end
// (steps 2 to N: no encode, no decode) into a Chrome trace (Note [Kernel profile] in kineto.hpp); the JSON line adds
// "profile_steps", the steps it holds, so that benchmarks/kernel_profile.py can tabulate a step's GPU time beside a
// forward's.
// --smoke: a 2-layer, 4-head transformer, the same VAE at 64x64x9 and 2 steps (any device; for CI and CPU);
// two-pass: 96x96x9 (passes 64x64 and 128x128), 2 + int(5 · 0.4) = 2 steps, the 0.9.7 VAE with narrow blocks
// and an upsampler of width 32 with one block per stage.
// Built as ltxmps_pipeline_bench (benchmarks/CMakeLists.txt).

#include "bench_configs.hpp"
#include "bench_support.hpp"
#include "kineto.hpp"

#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/multi_scale.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/removal.hpp"
#include "ltxmps_pipeline/runtime.hpp"

#include "ltxmps/memory.hpp"
#include "ltxmps/plan.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace ltxmps::pipeline;
using Json = nlohmann::ordered_json;

struct Args {
  ltxmps::bench::Options opt;
  bool smoke = false;
  bool two_pass() const { return opt.at("job") == "two-pass"; }
  bool embedded() const { return opt.at("model") == "embedded"; }
  int64_t num(const char* key) const { return std::stoll(opt.at(key)); }
  double real(const char* key) const {  // a number or a fraction such as 2/3
    const auto& text = opt.at(key);
    const auto slash = text.find('/');
    if (slash == std::string::npos) return std::stod(text);
    return std::stod(text.substr(0, slash)) / std::stod(text.substr(slash + 1));
  }
};

/// The options, with the job's defaults where none was given. --smoke's sizes depend on the job: its blank
/// height and width are filled below.
Args parse_args(int argc, char** argv) {
  Args a;
  a.opt = ltxmps::bench::parse_options(
      argc, argv,
      {{"device", "cuda"}, {"precision", "bf16"}, {"height", ""}, {"width", ""}, {"frames", ""},
       {"steps", ""}, {"guidance", "3.0"}, {"layers", "28"}, {"heads", "32"}, {"head-dim", "64"}, {"job", "t2v"},
       {"repeat", "1"}, {"first-pass-scale", "2/3"}, {"second-pass-steps", "10"}, {"second-pass-strength", "0.4"},
       {"cuda-graphs", "1"}, {"vae-channels-last", "1"}, {"profile", ""}, {"model", "random"}, {"prompt-tokens", ""}},
      {{"layers", "2"}, {"heads", "4"}, {"height", ""}, {"width", ""}, {"frames", "9"}, {"steps", "2"},
       {"second-pass-steps", "5"}, {"smoke", "1"}},
      "pipeline_bench.cpp");
  a.smoke = a.opt.count("smoke") > 0;
  const auto& job = a.opt.at("job");
  if (job != "t2v" && job != "i2v" && job != "remove" && job != "two-pass")
    throw ltxmps::bench::BadArgument("--job " + job + ": expected t2v, i2v, remove or two-pass");
  if (!a.opt.at("prompt-tokens").empty() && a.num("prompt-tokens") < 1)
    throw ltxmps::bench::BadArgument("--prompt-tokens " + a.opt.at("prompt-tokens") + ": expected 1 or more");
  if (a.opt.at("cuda-graphs") != "0" && a.opt.at("cuda-graphs") != "1")
    throw ltxmps::bench::BadArgument("--cuda-graphs " + a.opt.at("cuda-graphs") + ": expected 0 or 1");
  if (a.opt.at("vae-channels-last") != "0" && a.opt.at("vae-channels-last") != "1")
    throw ltxmps::bench::BadArgument("--vae-channels-last " + a.opt.at("vae-channels-last") + ": expected 0 or 1");
  const auto& model = a.opt.at("model");
  if (model != "random" && model != "embedded")
    throw ltxmps::bench::BadArgument("--model " + model + ": expected random or embedded");
  const auto fill = [&a](const char* key, const char* value) {
    if (a.opt.at(key).empty()) a.opt[key] = value;
  };
  if (a.embedded()) {
    if (a.two_pass() || a.smoke || job == "i2v")
      throw ltxmps::bench::BadArgument("--model embedded: the t2v and remove jobs at its own sizes (no --smoke)");
    const bool remove = job == "remove";
    fill("frames", remove ? "17" : "9"), fill("height", remove ? "128" : "64"), fill("width", remove ? "192" : "64");
    fill("steps", remove ? "30" : "4");
  }
  fill("steps", a.two_pass() ? "8" : "30");
  fill("frames", "121");
  fill("height", !a.smoke ? "512" : a.two_pass() ? "96" : "64");
  fill("width", !a.smoke ? "768" : a.two_pass() ? "96" : "64");
  return a;
}

/// Random weights on `device`: matrices ~ N(0, 1/fan_in), vectors (biases, norms, tables) ~ N(0, 1/64).
auto random_source(c10::Device device, at::ScalarType dtype) {
  return [device, dtype](const std::string&, const std::vector<int64_t>& shape) {
    int64_t fan_in = 1;
    for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
    if (shape.size() < 2) fan_in = 64;
    return at::randn(shape, at::TensorOptions().dtype(dtype).device(device))
        .mul_(1.0 / std::sqrt(static_cast<double>(fan_in)));
  };
}

VaeConfig vae_config(const Args& a) {
  if (!a.two_pass()) return VaeConfig{};  // 0.9.0 defaults: compression 32 / 8
  return a.smoke ? ltxmps::bench::vae_097_smoke_config(128) : ltxmps::pipeline::ltx_097_vae_config();
}

LtxModel random_model(const Args& a, const ltxmps::ExecutionPlan& plan) {
  TransformerConfig tc;  // 2B defaults
  tc.num_layers = a.num("layers");
  tc.num_attention_heads = a.num("heads");
  tc.attention_head_dim = a.num("head-dim");
  tc.cross_attention_dim = tc.inner_dim();
  const TransformerRuntime tr = transformer_runtime(plan);
  const VaeConfig vc = vae_config(a);
  const VaeRuntime vr = vae_runtime(plan);
  LtxModel model;
  model.transformer = TransformerModel::from_weights(tc, tr, random_source(tr.device, tr.dtype));
  model.vae = VaeModel::from_weights(vc, vr, random_source(vr.device, vr.dtype));
  model.vae.tiling = vae_tiling(plan);  // removal and two-pass: tiles, as the official script and the example
  model.random_weights = true;
  model.vae.latents_mean = at::zeros({vc.latent_channels}, at::TensorOptions().device(vr.device));
  model.vae.latents_std = at::ones({vc.latent_channels}, at::TensorOptions().device(vr.device));
  return model;
}

/// Random embeddings of `tokens` tokens of which the first `attended` are the prompt's (mask 1) and the rest padding.
PromptEmbeddings random_prompts(int64_t tokens, int64_t attended, int64_t channels, at::ScalarType dtype) {
  const auto eo = at::TensorOptions().dtype(dtype);
  auto mask = at::zeros({1, tokens}, at::kBool);
  mask.narrow(1, 0, std::min(attended, tokens)).fill_(true);
  return PromptEmbeddings{at::randn({1, tokens, channels}, eo), mask, at::randn({1, tokens, channels}, eo),
                          mask.clone()};
}

/// The peak device memory of each phase of a job, in the phases' order; over several runs, each phase's highest.
/// A phase ends at a progress event (PhasePeaks::mark), which restarts the device's peak counter: "loop" (t2v,
/// remove: everything up to the last denoising step's end), "first_pass", "upsample", "second_pass_loop" (two-pass)
/// and "decode" (what follows the last step: the VAE decode, postprocessing and the final resize).
struct PhasePeaks {
  std::vector<std::pair<std::string, int64_t>> peaks;

  void mark(const c10::Device& device, const std::string& phase) {
    const auto peak = ltxmps::memory_stats(device).peak_allocated;
    if (!peak) return;  // no statistics on this device
    ltxmps::reset_peak_memory(device);
    for (auto& [name, bytes] : peaks)
      if (name == phase) {
        bytes = std::max(bytes, *peak);
        return;
      }
    peaks.emplace_back(phase, *peak);
  }
  Json json() const {
    Json out = Json::object();
    for (const auto& [name, bytes] : peaks) out[name] = bytes;
    return out;
  }
  int64_t highest() const {
    int64_t out = -1;
    for (const auto& p : peaks) out = std::max(out, p.second);
    return out;
  }
};

/// `x` to `digits` decimals (as Python's round(), so that both JSON lines print alike).
double rounded(double x, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(x * scale) / scale;
}

/// Called with (steps done, steps in all) after each step of a denoising loop.
using LoopSteps = std::function<void(int64_t, int64_t)>;

/// Progress events with the time they arrived, the device synchronized first (so a step's time is its kernels'),
/// and the phases' memory peaks. `first_loop`, where set, sees each step of the first denoising loop (done, total).
struct Timeline {
  Timeline(c10::Device d, PhasePeaks& p, std::string first_phase, LoopSteps on_first_loop)
      : device(d), peaks(p), phase(std::move(first_phase)), first_loop(std::move(on_first_loop)) {}
  c10::Device device;
  PhasePeaks& peaks;
  std::string phase;  ///< the phase running now
  LoopSteps first_loop;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::vector<std::pair<Progress, double>> events;

  double now() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
  ProgressCallback callback() {
    return [this](const Progress& p) {
      ltxmps::synchronize(device);
      events.emplace_back(p, now());
      if (p.stage != "denoise" && p.stage != "upsample") return;
      if (p.stage == "denoise" && first_loop) {
        first_loop(p.done, p.total);
        if (p.done == p.total) first_loop = nullptr;
      }
      peaks.mark(device, phase);
      if (p.stage == "upsample") phase = p.done == 0 ? "upsample" : "second_pass_loop";
    };
  }
  /// The job has returned: what ran after the last denoising step was the decode.
  void finish() { peaks.mark(device, "decode"); }
  /// The time of the first `stage` event with `done`; `fallback` if there is none.
  double time_of(const std::string& stage, int64_t done, double fallback) const {
    for (const auto& [p, t] : events)
      if (p.stage == stage && p.done == done) return t;
    return fallback;
  }
  /// The events before the first denoising step's end ("stage done/total": seconds), where the time before the
  /// loop goes.
  Json before_loop() const {
    Json out = Json::object();
    for (const auto& [p, t] : events) {
      out[p.stage + " " + std::to_string(p.done) + "/" + std::to_string(p.total)] = rounded(t, 3);
      if (p.stage == "denoise") break;
    }
    return out;
  }
  /// Denoising step end times in [t0, t1).
  std::vector<double> steps(double t0, double t1) const {
    std::vector<double> out;
    for (const auto& [p, t] : events)
      if (p.stage == "denoise" && t >= t0 && t < t1) out.push_back(t);
    return out;
  }
};

/// Mean seconds per step over the steps after the first (the first alone when there is one).
double per_step(const std::vector<double>& step_end) {
  if (step_end.empty()) return 0.0;
  if (step_end.size() == 1) return step_end.front();
  return (step_end.back() - step_end.front()) / static_cast<double>(step_end.size() - 1);
}

struct RunResult {
  double total = -1, seconds_per_step = 0;
  double loop_end = 0;  ///< t2v / i2v / remove: seconds at the last denoising step's end (then the decode)
  at::Tensor frames;  ///< [B, F, 3, H, W]
  Json before_loop;   ///< Timeline::before_loop()
  Json passes;        ///< two-pass: per-pass fields of the JSON line
};

/// One t2v or i2v generation or one object removal.
RunResult run_single(LtxModel& model, const Args& a, const ltxmps::ExecutionPlan& plan,
                     const PromptEmbeddings& prompts, PhasePeaks& peaks, LoopSteps on_first_loop) {
  const bool remove = a.opt.at("job") == "remove";
  RemovalRequest rr;
  GenerateRequest r;
  if (remove) {
    // Object removal (the official loop): a random clip and a mask over its middle third.
    const int64_t f = a.num("frames"), h = a.num("height"), w = a.num("width");
    rr.video = at::rand({f, 3, h, w});
    rr.mask = at::zeros({f, 1, h, w});
    rr.mask.slice(2, h / 3, 2 * h / 3).slice(3, w / 3, 2 * w / 3).fill_(1);
    rr.num_inference_steps = a.num("steps");
    rr.guidance_scale = a.real("guidance");
    if (!a.embedded()) rr.prompt_embeddings = prompts;  // the embedded model encodes the official prompts
  } else {
    r.height = a.num("height"), r.width = a.num("width"), r.num_frames = a.num("frames");
    r.num_inference_steps = a.num("steps");
    r.guidance_scale = a.real("guidance");
    if (a.opt.at("job") == "i2v") {  // a random first frame in [0, 1]
      r.kind = PipelineKind::image_to_video;
      r.image = at::rand({3, r.height, r.width});
    }
    if (a.embedded()) {  // the CLI's prompt for it, encoded by its T5
      r.prompts = {EmbeddedDefault::prompt};
      r.max_sequence_length = EmbeddedDefault::max_sequence_length;
    } else {
      r.prompt_embeddings = prompts;
    }
  }
  // The clock starts after the inputs are made, as pipeline_bench.py's.
  Timeline timeline{plan.device, peaks, "loop", std::move(on_first_loop)};
  RunResult out;
  out.frames = remove ? remove_object(model, rr, plan, ltxmps::null_sink(), timeline.callback()).frames.unsqueeze(0)
                      : generate(model, r, plan, ltxmps::null_sink(), timeline.callback()).frames;
  ltxmps::synchronize(plan.device);
  out.total = timeline.now();
  timeline.finish();
  const auto steps = timeline.steps(0, out.total + 1);
  out.seconds_per_step = per_step(steps);
  out.loop_end = steps.empty() ? 0.0 : steps.back();
  out.before_loop = timeline.before_loop();
  return out;
}

/// One pass's fields: its size, the steps that ran, seconds and seconds per step.
Json pass_json(int64_t frames, int64_t height, int64_t width, const std::vector<double>& steps, double seconds) {
  return Json{{"size", {frames, height, width}},
              {"steps", steps.size()},
              {"seconds", rounded(seconds, 3)},
              {"seconds_per_step", rounded(per_step(steps), 4)}};
}

/// The two-pass flow, split into passes at the "upsample" progress events: the first pass ends where the upsampler
/// starts; the second pass (its loop, the decode and the final resize) starts where it ends.
RunResult run_two_pass(LtxModel& model, LatentUpsamplerModel& upsampler, const Args& a,
                       const ltxmps::ExecutionPlan& plan, const PromptEmbeddings& prompts, PhasePeaks& peaks,
                       LoopSteps on_first_loop) {
  MultiScaleRequest r;  // the 0.9.7-dev example's rescale, decode timestep and noise
  r.height = a.num("height"), r.width = a.num("width"), r.num_frames = a.num("frames");
  r.num_inference_steps = a.num("steps");
  r.guidance_scale = a.real("guidance");
  r.first_pass_scale = a.real("first-pass-scale");
  r.second_pass_steps = a.num("second-pass-steps");
  r.second_pass_strength = a.real("second-pass-strength");
  r.prompt_embeddings = prompts;
  Timeline timeline{plan.device, peaks, "first_pass", std::move(on_first_loop)};
  const auto result = multi_scale(model, upsampler, r, plan, ltxmps::null_sink(), timeline.callback());
  ltxmps::synchronize(plan.device);
  RunResult out;
  out.total = timeline.now();
  timeline.finish();
  out.frames = result.resized_frames.defined() ? result.resized_frames : result.frames;
  const double up_start = timeline.time_of("upsample", 0, out.total);
  const double up_end = timeline.time_of("upsample", 1, out.total);
  const auto first_steps = timeline.steps(0, up_start), second_steps = timeline.steps(up_end, out.total + 1);
  const auto& s = result.sizes;
  out.seconds_per_step = per_step(second_steps);
  out.passes = Json{{"first_pass", pass_json(r.num_frames, s.first_height, s.first_width, first_steps, up_start)},
                    {"upsample_seconds", rounded(up_end - up_start, 3)},
                    {"second_pass", pass_json(r.num_frames, s.second_height, s.second_width, second_steps,
                                              out.total - up_end)},
                    {"decode_seconds", rounded(out.total - (second_steps.empty() ? up_end : second_steps.back()), 3)},
                    {"first_pass_scale", r.first_pass_scale},
                    {"second_pass_strength", r.second_pass_strength},
                    {"vae_tiling", plan.vae.tiling}};
  return out;
}

/// The execution plan of the job: t2v runs the VAE in float32 (ltxmps' default plan), the others in the model dtype
/// (diffusers' image-to-video pipeline casts the image to the prompt embeddings' dtype before its VAE, so it needs
/// that); removal and two-pass with tiling (the official removal script; the documented two-pass example).
ltxmps::ExecutionPlan job_plan(const Args& a) {
  ltxmps::LoaderSettings settings;
  settings.device = a.opt.at("device");
  settings.vae_tiling = a.opt.at("job") == "remove" || a.two_pass();
  settings.vae_float32 = a.opt.at("job") == "t2v";
  settings.precision = ltxmps::parse_precision(a.opt.at("precision"));
  settings.cuda_graphs = a.opt.at("cuda-graphs") == "1";
  settings.vae_channels_last = a.opt.at("vae-channels-last") == "1";
  return ltxmps::resolve(settings);
}

Json result_json(const Args& a, const ltxmps::ExecutionPlan& plan, int64_t layers, const RunResult& best,
                 const PhasePeaks& peaks) {
  Json line{{"impl", "ltxmps"},
            {"job", a.opt.at("job")},
            {"device", plan.device.str()},
            {"precision", a.opt.at("precision")},
            {"size", {a.num("frames"), a.num("height"), a.num("width")}},
            {"steps", a.num("steps")},
            {"guidance", a.real("guidance")},
            {"model", a.opt.at("model")},
            {"layers", layers},
            {"cuda_graphs", plan.graphs.denoise_step},
            {"vae_channels_last", plan.vae.channels_last},
            {"seconds_per_step", rounded(best.seconds_per_step, 4)},
            {"total_seconds", rounded(best.total, 3)},
            {"peak_memory_bytes", peaks.highest()},
            {"peak_memory_bytes_by_phase", peaks.json()},
            {"frames_shape", best.frames.sizes().vec()}};
  if (a.two_pass()) {
    line.update(best.passes);
  } else {
    line["loop_seconds"] = rounded(best.loop_end, 3);
    line["decode_seconds"] = rounded(best.total - best.loop_end, 3);
    line["before_loop_seconds"] = best.before_loop;
  }
  return line;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  const auto plan = job_plan(a);
  LtxModel model = a.embedded() ? make_embedded_default_model(plan) : random_model(a, plan);
  const auto& job = a.opt.at("job");  // LTXPipeline's and LTXImageToVideoPipeline's / LTXConditionPipeline's
  const int64_t text_len = job == "t2v" || job == "i2v" ? 128 : 256;
  const int64_t attended = a.opt.at("prompt-tokens").empty() ? text_len : a.num("prompt-tokens");
  const auto prompts = random_prompts(text_len, attended, model.transformer.config.caption_channels,
                                      plan.precision.text_encoder.compute);
  LatentUpsamplerConfig uc;  // LTXLatentUpsamplerModel() = the 0.9.7 spatial upscaler's config
  if (a.smoke) uc.mid_channels = 32, uc.num_blocks_per_stage = 1;
  const auto ur = latent_upsampler_runtime(plan);
  auto upsampler = a.two_pass() ? LatentUpsamplerModel::from_weights(uc, ur, random_source(ur.device, ur.dtype))
                                : LatentUpsamplerModel{};

  ltxmps::reset_peak_memory(plan.device);
  PhasePeaks peaks;
  RunResult best;
  const int64_t runs = std::max<int64_t>(1, a.num("repeat"));
  const std::string& profile = a.opt.at("profile");
  std::unique_ptr<ltxmps::bench::KinetoRecording> recording;
  int64_t profile_steps = 0;
  if (!profile.empty() && a.num("steps") < 2)
    throw ltxmps::bench::BadArgument("--profile records steps 2 to N: give --steps 2 or more");
  for (int64_t run = 0; run < runs; ++run) {
    // The pipelines release the text encoder after encoding: the embedded model is built again for each run (its
    // T5 encodes in every run, as the CLI's), outside the timed call.
    if (a.embedded() && run > 0) model = make_embedded_default_model(plan);
    LoopSteps on_first_loop;
    if (!profile.empty() && run == runs - 1)
      on_first_loop = [&](int64_t done, int64_t total) {
        if (done == 1) recording = std::make_unique<ltxmps::bench::KinetoRecording>(plan.device);
        if (done == total && recording) {
          recording->save(profile);
          profile_steps = total - 1;
        }
      };
    auto result = a.two_pass() ? run_two_pass(model, upsampler, a, plan, prompts, peaks, std::move(on_first_loop))
                               : run_single(model, a, plan, prompts, peaks, std::move(on_first_loop));
    if (best.total < 0 || result.total < best.total) best = std::move(result);
  }
  auto line = result_json(a, plan, model.transformer.config.num_layers, best, peaks);
  if (profile_steps > 0) line["profile_steps"] = profile_steps;
  std::printf("%s\n", line.dump().c_str());
  return 0;
} catch (const ltxmps::bench::BadArgument& e) {
  std::cerr << "pipeline_bench: " << e.what() << "\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "pipeline_bench: " << e.what() << "\n";
  return 1;
}
