// One LTX-Video text-to-video generation (--job t2v) or object removal (--job remove: the official loop, VAE
// tiling on) with the C++ pipeline: the counterpart of pipeline_bench.py.
//
// Same defaults: the 2B transformer (28 layers, 32 heads x 64, caption 4096, in/out 128) and the 0.9.0 VAE
// config (diffusers' AutoencoderKLLTXVideo() defaults), random weights generated in memory (no file), random
// prompt embeddings [1, 128, 4096] instead of T5-XXL, 768x512x121, 30 steps, guidance 3 (CFG on), seed 0.
// Prints one JSON line: seconds per denoising step (mean over the steps after the first), total seconds of
// generate() (loop + decode), and the peak CUDA memory. --repeat N runs the job N times in the process and reports
// the fastest run (the first pays one-time costs: allocator growth, kernel selection, oneDNN primitive creation).
//
//   pipeline_bench [--device cuda] [--precision bf16|fp16|fp32] [--height N] [--width N] [--frames N]
//                  [--steps N] [--guidance X] [--layers N] [--heads N] [--head-dim N] [--job t2v|remove] [--smoke]
//                  [--repeat N]
// --smoke: a 2-layer, 4-head transformer, the same VAE at 64x64x9 and 2 steps (any device; for CI and CPU).
// Built as ltxmps_pipeline_bench (benchmarks/CMakeLists.txt).

#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/removal.hpp"
#include "ltxmps_pipeline/runtime.hpp"

#include "ltxmps/memory.hpp"
#include "ltxmps/plan.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  std::map<std::string, std::string> opt = {{"device", "cuda"}, {"precision", "bf16"}, {"height", "512"},
                                            {"width", "768"},   {"frames", "121"},     {"steps", "30"},
                                            {"guidance", "3.0"}, {"layers", "28"}, {"heads", "32"},
                                            {"head-dim", "64"}, {"job", "t2v"}, {"repeat", "1"}};
  bool smoke = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") smoke = true;
    else if (a.rfind("--", 0) == 0 && opt.count(a.substr(2)) && i + 1 < argc) opt[a.substr(2)] = argv[++i];
    else {
      std::cerr << "pipeline_bench: bad argument '" << a << "' (see the header of pipeline_bench.cpp)\n";
      return 2;
    }
  }
  if (smoke) opt.insert_or_assign("layers", "2"), opt.insert_or_assign("height", "64"), opt.insert_or_assign("width", "64"),
      opt.insert_or_assign("frames", "9"), opt.insert_or_assign("steps", "2");
  auto num = [&](const char* k) { return std::stoll(opt.at(k)); };
  using namespace ltxmps::pipeline;

  ltxmps::LoaderSettings settings;
  settings.device = opt.at("device");
  const bool removal = opt.at("job") == "remove";
  settings.vae_tiling = removal;  // the official removal script enables VAE tiling ...
  settings.vae_float32 = !removal;  // ... and runs the VAE in the model dtype
  settings.precision = ltxmps::parse_precision(opt.at("precision"));
  const auto plan = ltxmps::resolve(settings);
  const c10::Device device = plan.device;

  TransformerConfig tc;  // 2B defaults
  tc.num_layers = num("layers");
  tc.num_attention_heads = num("heads");
  tc.attention_head_dim = num("head-dim");
  tc.cross_attention_dim = tc.inner_dim();
  if (smoke) tc.num_attention_heads = 4, tc.cross_attention_dim = tc.inner_dim();
  const TransformerRuntime tr = transformer_runtime(plan);
  const auto random_source = [&](at::ScalarType dtype) {
    return [device, dtype](const std::string&, const std::vector<int64_t>& shape) {
      int64_t fan_in = 1;  // weights ~ N(0, 1/fan_in); vectors (biases, norms, tables) ~ N(0, 1/64)
      for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
      if (shape.size() < 2) fan_in = 64;
      return at::randn(shape, at::TensorOptions().dtype(dtype).device(device))
          .mul_(1.0 / std::sqrt(static_cast<double>(fan_in)));
    };
  };
  VaeConfig vc;  // 0.9.0 defaults: compression 32 / 8
  const VaeRuntime vr = vae_runtime(plan);
  LtxModel model;
  model.transformer = TransformerModel::from_weights(tc, tr, random_source(tr.dtype));
  model.vae = VaeModel::from_weights(vc, vr, random_source(vr.dtype));
  model.random_weights = true;
  model.vae.latents_mean = at::zeros({vc.latent_channels}, at::TensorOptions().device(device));
  model.vae.latents_std = at::ones({vc.latent_channels}, at::TensorOptions().device(device));

  GenerateRequest r;
  r.height = num("height");
  r.width = num("width");
  r.num_frames = num("frames");
  r.num_inference_steps = num("steps");
  r.guidance_scale = std::stod(opt.at("guidance"));
  const int64_t text_len = removal ? 256 : 128;  // max_sequence_length of the condition pipeline / LTXPipeline
  const auto eo = at::TensorOptions().dtype(plan.precision.text_encoder.compute);
  r.prompt_embeddings = PromptEmbeddings{at::randn({1, text_len, tc.caption_channels}, eo), at::ones({1, text_len}, at::kBool),
                                         at::randn({1, text_len, tc.caption_channels}, eo), at::ones({1, text_len}, at::kBool)};

  std::vector<double> step_end;
  auto start = std::chrono::steady_clock::now();
  auto seconds_since = [&](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  const auto on_step = step_progress([&](int64_t, int64_t) {
    ltxmps::synchronize(device);
    step_end.push_back(seconds_since(start));
  });
  ltxmps::reset_peak_memory(device);
  at::Tensor frames_out;
  double total = -1, per_step = 0;
  for (int64_t run = 0; run < std::max<int64_t>(1, num("repeat")); ++run) {
    step_end.clear();
    start = std::chrono::steady_clock::now();
    if (removal) {
      // Object removal (the official loop): a random clip and a mask over its middle third.
      RemovalRequest rr;
      rr.video = at::rand({r.num_frames, 3, r.height, r.width});
      rr.mask = at::zeros({r.num_frames, 1, r.height, r.width});
      rr.mask.slice(2, r.height / 3, 2 * r.height / 3).slice(3, r.width / 3, 2 * r.width / 3).fill_(1);
      rr.num_inference_steps = r.num_inference_steps;
      rr.guidance_scale = r.guidance_scale;
      rr.prompt_embeddings = r.prompt_embeddings;
      frames_out = remove_object(model, rr, plan, ltxmps::null_sink(), on_step).frames.unsqueeze(0);
    } else {
      frames_out = generate(model, r, plan, ltxmps::null_sink(), on_step).frames;
    }
    ltxmps::synchronize(device);
    const double run_total = seconds_since(start);
    double run_step = step_end.empty() ? 0.0 : step_end.front();
    if (step_end.size() > 1) run_step = (step_end.back() - step_end.front()) / static_cast<double>(step_end.size() - 1);
    if (total < 0 || run_total < total) total = run_total, per_step = run_step;
  }
  const auto stats = ltxmps::memory_stats(device);
  std::printf(
      "{\"impl\": \"ltxmps\", \"job\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", \"size\": [%lld, %lld, %lld], \"steps\": %lld, "
      "\"guidance\": %g, \"layers\": %lld, \"seconds_per_step\": %.4f, \"total_seconds\": %.3f, "
      "\"peak_memory_bytes\": %lld, \"frames_shape\": [%lld, %lld, %lld, %lld, %lld]}\n",
      opt.at("job").c_str(), device.str().c_str(), opt.at("precision").c_str(), static_cast<long long>(r.num_frames),
      static_cast<long long>(r.height), static_cast<long long>(r.width), static_cast<long long>(r.num_inference_steps),
      r.guidance_scale, static_cast<long long>(tc.num_layers), per_step, total,
      static_cast<long long>(stats.peak_allocated.value_or(-1)), static_cast<long long>(frames_out.size(0)),
      static_cast<long long>(frames_out.size(1)), static_cast<long long>(frames_out.size(2)),
      static_cast<long long>(frames_out.size(3)), static_cast<long long>(frames_out.size(4)));
  return 0;
} catch (const std::exception& e) {
  std::cerr << "pipeline_bench: " << e.what() << "\n";
  return 1;
}
