// Seconds per transformer forward and peak device memory of the weight modes of the memory budget (Note [Weight
// budget]): resident, streamed from pinned host memory (Note [Streamed weights]), FP8 storage (Note [Weight
// storage]), FP8 storage and streamed. The counterpart of memory_bench.py (diffusers: resident, layerwise FP8
// casting, group offload with stream prefetch).
//
// Default shape: LTX-Video 13B (48 blocks of 32 heads x 128 = 4096, caption 4096, in/out 128), random bf16 weights
// generated on the device, latent 16 x 16 x 24 = 6144 tokens, 128 text tokens, batch 2 (classifier-free guidance),
// RoPE scale (8/25, 32, 32). Prints one JSON line per mode: median and min seconds per forward over --iters timed
// runs after --warmup, the peak of allocated device memory during them (weights included) and the weights held on
// the device; the streamed lines also carry the pinned host-to-device bandwidth measured on one block.
//
//   memory_bench [--device cuda] [--modes resident,streamed,fp8,fp8_streamed] [--ahead 2] [--layers N]
//                [--heads N] [--head-dim N] [--latent-frames N] [--latent-height N] [--latent-width N]
//                [--text-len N] [--batch N] [--warmup N] [--iters N] [--smoke]
// Built as ltxmps_memory_bench (benchmarks/CMakeLists.txt).

#include "bench_support.hpp"

#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/weight_streaming.hpp"

#include "ltxmps/device.hpp"
#include "ltxmps/memory.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace ltxmps::pipeline;

using ltxmps::bench::Options;

struct Timing {
  double median_s = 0, min_s = 0;
  int64_t peak_bytes = -1, device_weight_bytes = -1;
};

// GiB with four decimals, or null where the device keeps no statistics (the CPU).
std::string gib(int64_t bytes) {
  if (bytes < 0) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", static_cast<double>(bytes) / static_cast<double>(int64_t{1} << 30));
  return buf;
}

Timing time_forward(const TransformerModel& model, const TransformerInputs& in, const c10::Device& device,
                    int64_t warmup, int64_t iters) {
  Timing t;
  ltxmps::release_memory(device);
  t.device_weight_bytes = ltxmps::memory_stats(device).allocated.value_or(-1);
  std::vector<double> seconds;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    if (i == warmup) ltxmps::reset_peak_memory(device);
    ltxmps::synchronize(device);
    const auto t0 = std::chrono::steady_clock::now();
    model.forward(in);
    ltxmps::synchronize(device);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) seconds.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  std::sort(seconds.begin(), seconds.end());
  t.median_s = ltxmps::bench::median_of_sorted(seconds);
  t.min_s = seconds.front();
  t.peak_bytes = ltxmps::memory_stats(device).peak_allocated.value_or(-1);
  return t;
}

// Pinned host -> device bandwidth of one block's bytes, on a side stream as the streamer copies (GB/s, 1e9 bytes).
double host_to_device_gbps(int64_t bytes, const c10::Device& device) {
  if (!device.is_cuda()) return 0;
  auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto dev = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  dev.copy_(host, true);
  ltxmps::synchronize(device);
  const int reps = 5;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) dev.copy_(host, /*non_blocking=*/true);
  ltxmps::synchronize(device);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(bytes) * reps / s / 1e9;
}

void print(const Options& opt, const TransformerConfig& config, const std::string& mode, const Timing& t,
           int64_t tokens, int64_t ahead, double gbps) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(4);
  os << "{\"impl\": \"ltxmps\", \"mode\": \"" << mode << "\", \"device\": \"" << opt.at("device") << "\", \"gpu\": \""
     << (opt.count("gpu") ? opt.at("gpu") : "") << "\", \"layers\": " << config.num_layers
     << ", \"dim\": " << config.inner_dim() << ", \"tokens\": " << tokens << ", \"batch\": " << opt.at("batch")
     << ", \"median_s\": " << t.median_s << ", \"min_s\": " << t.min_s << ", \"peak_gib\": " << gib(t.peak_bytes)
     << ", \"device_weights_gib\": " << gib(t.device_weight_bytes) << ", \"iters\": " << opt.at("iters");
  if (ahead >= 0) os << ", \"blocks_ahead\": " << ahead << ", \"h2d_gbps\": " << gbps;
  os << "}";
  std::printf("%s\n", os.str().c_str());
  std::fflush(stdout);
}

Options parse(int argc, char** argv) {
  return ltxmps::bench::parse_options(
      argc, argv,
      {{"device", "cuda"}, {"modes", "resident,streamed,fp8,fp8_streamed"}, {"ahead", "2"}, {"layers", "48"},
       {"heads", "32"}, {"head-dim", "128"}, {"caption-channels", "4096"}, {"channels", "128"}, {"latent-frames", "16"},
       {"latent-height", "16"}, {"latent-width", "24"}, {"text-len", "128"}, {"batch", "2"}, {"warmup", "2"},
       {"iters", "5"}},
      {{"device", "cpu"}, {"layers", "3"}, {"heads", "2"}, {"head-dim", "8"}, {"caption-channels", "16"},
       {"channels", "4"}, {"latent-frames", "2"}, {"latent-height", "4"}, {"latent-width", "4"}, {"text-len", "8"},
       {"warmup", "1"}, {"iters", "2"}},
      "memory_bench.cpp");
}

}  // namespace

int main(int argc, char** argv) try {
  auto opt = parse(argc, argv);
  auto num = [&](const char* k) { return ltxmps::bench::option_int(opt, k); };
  const c10::Device device(opt.at("device"));
  if (const auto* info = ltxmps::cuda_info(ltxmps::current_capabilities(), device)) opt["gpu"] = info->name;
  const TransformerConfig config = ltxmps::bench::transformer_config(opt);
  const auto dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;

  const auto options = at::TensorOptions().device(device).dtype(dtype);
  at::manual_seed(0);
  const TransformerInputs in = ltxmps::bench::transformer_inputs(opt, config, options);
  const int64_t S = in.hidden_states.size(1);

  const std::string modes = "," + opt.at("modes") + ",";
  const auto wants = [&](const std::string& m) { return modes.find("," + m + ",") != std::string::npos; };
  const int64_t ahead = num("ahead"), warmup = num("warmup"), iters = num("iters");
  for (const LinearMode linears : {LinearMode::dense, LinearMode::fp8_storage}) {
    const bool fp8 = linears == LinearMode::fp8_storage;
    const std::string resident_mode = fp8 ? "fp8" : "resident", streamed_mode = fp8 ? "fp8_streamed" : "streamed";
    if (!wants(resident_mode) && !wants(streamed_mode)) continue;
    TransformerRuntime runtime;
    runtime.device = device;
    runtime.dtype = dtype;
    runtime.block_linears = linears;
    auto model = ltxmps::bench::random_transformer(config, runtime);
    if (wants(resident_mode)) print(opt, config, resident_mode, time_forward(model, in, device, warmup, iters), S, -1, 0);
    if (!wants(streamed_mode)) continue;
    stream_transformer_blocks(model, device, ahead);
    const double gbps = host_to_device_gbps(model.streamer->block_bytes(), device);
    print(opt, config, streamed_mode, time_forward(model, in, device, warmup, iters), S, model.streamer->blocks_ahead(),
          gbps);
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "memory_bench: " << e.what() << "\n";
  return 1;
}
