// One AutoencoderKLLTXVideo decode (or, with --encode, one encode) with the C++ model: the counterpart of
// vae_bench.py.
//
// Same defaults (the 0.9.7 VAE config, float32, latent [1, 128, 16, 16, 24] of a 768x512x121 video, decode
// timestep 0.05). The weights are random, generated in memory on the device (no file). --tiling enables the
// spatial tiles (enable_tiling() defaults), --framewise the temporal tiles. --config 090 is the 0.9.0 VAE
// (AutoencoderKLLTXVideo()'s defaults, pipeline_bench's VAE for t2v, i2v and removal). --config small keeps the
// 0.9.7 structure with narrow blocks (vae_bench.py's CONFIG_SMOKE), for CPU runs at shapes where the tiles matter;
// --smoke is that config at a tiny latent on the CPU. --check-finite 0 turns VaeRuntime::check_finite off
// (diffusers has no such check), to measure what the checks cost. --encode times the encoder instead: the video
// whose latent that is (768x512x121 by default), uniform in [-1, 1], to its posterior. Prints one JSON line with
// the median and min milliseconds over --iters timed runs after --warmup and the peak CUDA memory.
// --channels-last 0|1 sets VaeRuntime::channels_last (default auto: the plan's choice, on for CUDA; Note [VAE layout in
// the plan]). --profile PATH records one more run after the timed ones into a Chrome trace (Note [Kernel profile];
// benchmarks/kernel_profile.py tabulates it).
//
//   vae_bench [--device cuda] [--precision fp32|bf16|fp16] [--config 097|090|small] [--latent-frames N]
//             [--latent-height N] [--latent-width N] [--warmup N] [--iters N] [--check-finite 0|1] [--tiling]
//             [--framewise] [--encode] [--smoke] [--channels-last 0|1] [--profile PATH]
// Built as ltxmps_vae_bench (benchmarks/CMakeLists.txt).

#include "bench_configs.hpp"
#include "kineto.hpp"

#include "ltxmps_pipeline/vae.hpp"

#include "ltxmps/memory.hpp"
#include "ltxmps/plan.hpp"
#include "ltxmps/precision.hpp"

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
  std::map<std::string, std::string> opt = {
      {"device", "cuda"}, {"precision", "fp32"}, {"config", "097"}, {"latent-frames", "16"}, {"latent-height", "16"},
      {"latent-width", "24"}, {"warmup", "1"}, {"iters", "3"}, {"check-finite", "1"},
      {"channels-last", "auto"}, {"profile", ""}};
  bool tiling = false, framewise = false, smoke = false, encode = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tiling") tiling = true;
    else if (a == "--framewise") framewise = true;
    else if (a == "--smoke") smoke = true;
    else if (a == "--encode") encode = true;
    else if (a.rfind("--", 0) == 0 && opt.count(a.substr(2)) && i + 1 < argc) opt[a.substr(2)] = argv[++i];
    else {
      std::cerr << "vae_bench: bad argument '" << a << "' (see the header of vae_bench.cpp)\n";
      return 2;
    }
  }
  using namespace ltxmps::pipeline;
  if (opt.at("config") != "097" && opt.at("config") != "090" && opt.at("config") != "small") {
    std::cerr << "vae_bench: --config takes 097, 090 or small, got '" << opt.at("config") << "'\n";
    return 2;
  }
  // The 0.9.7 config; small (and --smoke): the same structure, narrow (vae_bench.py's CONFIG_SMOKE).
  const bool small = smoke || opt.at("config") == "small";
  const VaeConfig config = small                      ? ltxmps::bench::vae_097_smoke_config(8)
                           : opt.at("config") == "090" ? VaeConfig{}
                                                       : ltxmps::pipeline::ltx_097_vae_config();
  if (smoke) {
    opt["device"] = "cpu";
    opt["latent-frames"] = "3";
    opt["latent-height"] = "2";
    opt["latent-width"] = "3";
    opt["iters"] = "2";
  }
  auto num = [&](const char* k) { return std::stoll(opt.at(k)); };
  VaeRuntime runtime;
  runtime.device = c10::Device(opt.at("device"));
  runtime.dtype = ltxmps::to_scalar_type(ltxmps::parse_precision(opt.at("precision")));
  runtime.check_finite = opt.at("check-finite") != "0";
  const std::string& layout = opt.at("channels-last");
  if (layout != "auto" && layout != "0" && layout != "1") {
    std::cerr << "vae_bench: --channels-last takes auto, 0 or 1, got '" << layout << "'\n";
    return 2;
  }
  ltxmps::VaePlan vae_plan;  // auto: the plan's rule for this device (Note [VAE layout in the plan])
  ltxmps::decide_vae_layout(ltxmps::LoaderSettings{}, runtime.device, vae_plan);
  runtime.channels_last = layout == "auto" ? vae_plan.channels_last : layout == "1";

  at::manual_seed(0);
  const auto options = at::TensorOptions().device(runtime.device).dtype(runtime.dtype);
  // Fan-in scaled random weights (so that activations stay finite), unit LayerNorm weights, zero biases,
  // the timestep multiplier at its init value 1000.
  auto model = VaeModel::from_weights(config, runtime, [&](const std::string& name, const std::vector<int64_t>& shape) {
    if (shape.empty()) return at::full({}, 1000.0, options);
    const bool bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
    if (bias || name == "latents_mean") return at::zeros(shape, options);
    if (shape.size() == 1) return at::ones(shape, options);
    int64_t fan_in = 1;
    for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
    return at::randn(shape, options).mul_(1.0 / std::sqrt(static_cast<double>(fan_in)));
  });
  if (tiling) model.tiling.enable_tiling();
  model.tiling.use_framewise_decoding = framewise;

  const auto latents =
      at::randn({1, config.latent_channels, num("latent-frames"), num("latent-height"), num("latent-width")}, options);
  const auto temb = at::full({1}, 0.05, options);
  at::Tensor video;
  if (encode) {
    const int64_t sc = config.spatial_compression(), tc = config.temporal_compression();
    video = at::rand({1, config.in_channels, (num("latent-frames") - 1) * tc + 1, num("latent-height") * sc,
                      num("latent-width") * sc},
                     options)
                .mul_(2)
                .sub_(1);
  }
  ltxmps::reset_peak_memory(runtime.device);
  std::vector<double> ms;
  at::Tensor out;
  const int64_t warmup = num("warmup"), iters = num("iters");
  for (int64_t i = 0; i < warmup + iters; ++i) {
    ltxmps::synchronize(runtime.device);
    const auto t0 = std::chrono::steady_clock::now();
    out = encode ? model.encode(video).mean : model.decode(latents, temb);
    ltxmps::synchronize(runtime.device);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  if (!opt.at("profile").empty()) {
    ltxmps::bench::KinetoRecording recording(runtime.device);
    out = encode ? model.encode(video).mean : model.decode(latents, temb);
    recording.save(opt.at("profile"));
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  const auto peak = ltxmps::memory_stats(runtime.device).peak_allocated;
  std::printf(
      "{\"impl\": \"ltxmps\", \"op\": \"%s\", \"device\": \"%s\", \"dtype\": \"%s\", "
      "\"output\": [%lld, %lld, %lld, %lld, %lld], "
      "\"config\": \"%s\", \"check_finite\": %s, \"tiling\": %s, \"framewise\": %s, \"median_ms\": %.3f, "
      "\"min_ms\": %.3f, \"iters\": %lld, \"peak_cuda_mib\": %s, \"channels_last\": %s}\n",
      encode ? "encode" : "decode", runtime.device.str().c_str(), opt.at("precision").c_str(),
      static_cast<long long>(out.size(0)), static_cast<long long>(out.size(1)), static_cast<long long>(out.size(2)),
      static_cast<long long>(out.size(3)), static_cast<long long>(out.size(4)),
      small ? "small" : opt.at("config").c_str(), runtime.check_finite ? "true" : "false",
      tiling ? "true" : "false", framewise ? "true" : "false", median, ms.front(),
      static_cast<long long>(iters), peak ? std::to_string(static_cast<double>(*peak) / (1 << 20)).c_str() : "null",
      runtime.channels_last ? "true" : "false");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "vae_bench: " << e.what() << "\n";
  return 1;
}
