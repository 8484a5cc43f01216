// The effects pass's transformer forward in C++ (O(N) attention reduction), beside the plain forward: the
// counterpart of effects_bench.py (which does it the official way, with N x N maps per layer).
//
// Same defaults: the 13B shape (48 layers, 32 heads x 128, caption 4096), 512x768 with 209 frames = latent
// 27 x 16 x 24 = 10,368 tokens, 256 text tokens, batch 1, bf16, random weights in memory. Prints one JSON line:
// the plain forward and the forward with the capture of every layer (median ms over --iters), and the peak
// device memory of each above the weights.
//
//   effects_bench [--device cuda] [--layers N] [--heads N] [--head-dim N] [--latent-frames N]
//                 [--latent-height N] [--latent-width N] [--text-len N] [--chunk N] [--rope 0|1] [--iters N] [--smoke]
// Built as ltxmps_effects_bench (benchmarks/CMakeLists.txt).

#include "bench_support.hpp"

#include "ltxmps_pipeline/effects_mask.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include "ltxmps/memory.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  using namespace ltxmps::pipeline;
  namespace bench = ltxmps::bench;
  const auto opt = bench::parse_options(
      argc, argv,
      {{"device", "cuda"}, {"layers", "48"}, {"heads", "32"}, {"head-dim", "128"}, {"latent-frames", "27"},
       {"latent-height", "16"}, {"latent-width", "24"}, {"text-len", "256"}, {"chunk", "512"}, {"rope", "0"},
       {"iters", "3"}, {"caption-channels", "4096"}},
      {{"device", "cpu"}, {"layers", "2"}, {"heads", "2"}, {"head-dim", "8"}, {"latent-frames", "3"},
       {"latent-height", "2"}, {"latent-width", "3"}, {"text-len", "8"}, {"iters", "1"}, {"caption-channels", "16"},
       {"chunk", "4"}},
      "effects_bench.cpp");
  auto num = [&](const char* k) { return bench::option_int(opt, k); };
  const TransformerConfig config = bench::transformer_config(opt);  // no --channels: in/out 128
  TransformerRuntime runtime;
  runtime.device = c10::Device(opt.at("device"));
  runtime.dtype = at::kBFloat16;
  at::manual_seed(0);
  const auto options = at::TensorOptions().device(runtime.device).dtype(runtime.dtype);
  const auto model = bench::random_transformer(config, runtime);
  const int64_t nf = num("latent-frames"), h = num("latent-height"), w = num("latent-width"), L = num("text-len");
  const int64_t N = nf * h * w;
  TransformerInputs in;
  in.hidden_states = at::randn({1, N, config.in_channels}, options);
  in.encoder_hidden_states = at::randn({1, L, config.caption_channels}, options);
  in.timestep = at::full({1, 1}, 500.0, options.dtype(at::kFloat));
  in.encoder_attention_mask = at::ones({1, L}, options.dtype(at::kLong));
  in.num_frames = nf;
  in.height = h;
  in.width = w;
  auto tokens = at::zeros({nf, h, w}, at::kFloat);
  tokens.slice(1, h / 3, h / 3 + std::max<int64_t>(1, h / 4)).slice(2, w / 3, w / 3 + std::max<int64_t>(1, w / 4)).fill_(1);
  std::vector<int64_t> layers(static_cast<size_t>(config.num_layers));
  std::iota(layers.begin(), layers.end(), 0);

  const auto device = runtime.device;
  model.forward(in);  // warm-up
  ltxmps::synchronize(device);
  const int64_t weights = ltxmps::memory_stats(device).allocated.value_or(0);
  auto timed = [&](bool capture, double& peak_gib) {
    std::vector<double> ms;
    for (int64_t i = 0; i < num("iters"); ++i) {
      EffectsScoreAccumulator accumulator(tokens.to(device), layers);
      const auto c = accumulator.capture(num("chunk"), num("rope") != 0);
      ltxmps::reset_peak_memory(device);
      const auto t0 = std::chrono::steady_clock::now();
      model.forward(in, capture ? &c : nullptr);
      if (capture) (void)accumulator.scores();
      ltxmps::synchronize(device);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      peak_gib = static_cast<double>(ltxmps::memory_stats(device).peak_allocated.value_or(0) - weights) / (1 << 30);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  double forward_peak = 0, effects_peak = 0;
  const double forward_ms = timed(false, forward_peak);
  const double effects_ms = timed(true, effects_peak);
  std::printf(
      "{\"impl\": \"ltxmps\", \"device\": \"%s\", \"layers\": %lld, \"dim\": %lld, \"tokens\": %lld, \"chunk\": %lld, "
      "\"rope\": %s, \"forward_ms\": %.2f, \"effects_ms\": %.2f, \"ratio\": %.3f, \"weights_gib\": %.3f, "
      "\"forward_peak_above_weights_gib\": %.3f, \"effects_peak_above_weights_gib\": %.3f, "
      "\"effects_minus_forward_peak_gib\": %.3f}\n",
      device.str().c_str(), static_cast<long long>(config.num_layers), static_cast<long long>(config.inner_dim()),
      static_cast<long long>(N), static_cast<long long>(num("chunk")), num("rope") ? "true" : "false", forward_ms,
      effects_ms, effects_ms / forward_ms, static_cast<double>(weights) / (1 << 30), forward_peak, effects_peak,
      effects_peak - forward_peak);
  return 0;
} catch (const ltxmps::bench::BadArgument& e) {
  std::cerr << "effects_bench: " << e.what() << "\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "effects_bench: " << e.what() << "\n";
  return 1;
}
