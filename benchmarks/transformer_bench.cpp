// One LTXVideoTransformer3DModel forward with the C++ model: the counterpart of transformer_bench.py.
//
// Same defaults (2B: 28 layers, 32 heads x 64, caption 4096, in/out 128; bf16; latent 16 x 16 x 24 = 6144
// tokens; 128 text tokens; batch 2; RoPE scale (8/25, 32, 32)). The weights are random, generated in memory
// on the device (no file). Prints one JSON line with the median and min milliseconds over --iters timed
// runs after --warmup, the FLOPs of one forward (the formula of transformer_bench.py), TFLOP/s and MFU: against
// --peak-tflops (dense bf16, default an H100/H200's 989), or --fp8-peak-tflops (dense FP8, default 1979) when FP8
// matmul or FP8 attention runs (FP8 weight storage computes in bf16).
//
//   transformer_bench [--device cuda] [--precision bf16|fp16|fp32] [--attention sdpa|upcast]
//                     [--layers N] [--heads N] [--head-dim N] [--latent-frames N] [--latent-height N]
//                     [--latent-width N] [--text-len N] [--batch N] [--warmup N] [--iters N]
//                     [--peak-tflops X] [--fp8-peak-tflops X] [--fp8-matmul 0|1] [--weight-storage compute|fp8]
//                     [--fused 0|1]
//                     [--fp8-attention 0|1] [--cuda-graph 0|1]
//                     [--profile PATH] [--smoke]
// --fused 0 runs the ATen references of ltxmps_kernels instead of the fused kernels (docs/kernels.md).
// With FP8 (--fp8-matmul 1, or --weight-storage fp8) the model is built dense, run once for a reference output,
// then its blocks are quantized (quantize_transformer) and timed; the JSON line adds the FP8 output's error against
// that dense output: max and mean |fp8 - dense|, each divided by max |dense| (Note [Weight storage]).
// --fp8-attention 1 runs the self-attention with FP8 operands (ltxmps_kernels/fp8_attention.hpp); its error is
// reported the same way, against the forward without it (and without FP8 linears when those are off).
// --cuda-graph 1 times TransformerGraph's replays (Note [CUDA graphs for the denoising step]; the first two of the
// warm-up forwards are its warm-up and capture); the JSON line adds whether a replay equals the eager forward bit
// for bit.
// --profile PATH records 3 more forwards after the timed ones into a Chrome trace (Note [Kernel profile]).
// Built as ltxmps_transformer_bench (benchmarks/CMakeLists.txt).

#include "bench_support.hpp"
#include "kineto.hpp"

#include "ltxmps_pipeline/fp8.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/transformer_graph.hpp"

#include "ltxmps/memory.hpp"
#include "ltxmps/precision.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace {

double forward_flops(double layers, double d, double cross, double caption, double in, double out, double s,
                     double l, double batch) {
  const double per_layer = 4 * 2 * s * d * d + 2 * 2 * s * s * d + 2 * 2 * s * d * d + 2 * 2 * l * cross * d +
                           2 * 2 * s * l * d + 2 * 2 * s * d * 4 * d;
  const double outer = 2 * s * in * d + 2 * s * d * out + 2 * l * (caption * d + d * d) + 2 * (256 * d + d * d + d * 6 * d);
  return batch * (layers * per_layer + outer);
}

// --profile records kProfileForwards forwards after the timed ones (Note [Kernel profile] in kineto.hpp), so the
// trace holds exactly that many.
constexpr int kProfileForwards = 3;

void profile_forwards(const std::function<void()>& forward, const c10::Device& device, const std::string& path) {
  ltxmps::bench::KinetoRecording recording(device);
  for (int i = 0; i < kProfileForwards; ++i) forward();
  recording.save(path);
}

}  // namespace

int main(int argc, char** argv) try {
  using namespace ltxmps::pipeline;
  namespace bench = ltxmps::bench;
  const auto opt = bench::parse_options(
      argc, argv,
      {{"device", "cuda"}, {"precision", "bf16"}, {"attention", "sdpa"}, {"layers", "28"}, {"heads", "32"},
       {"head-dim", "64"}, {"caption-channels", "4096"}, {"channels", "128"}, {"latent-frames", "16"},
       {"latent-height", "16"}, {"latent-width", "24"}, {"text-len", "128"}, {"batch", "2"}, {"warmup", "3"},
       {"iters", "10"}, {"peak-tflops", "989"}, {"fp8-peak-tflops", "1979"}, {"fp8-matmul", "0"},
       {"weight-storage", "compute"}, {"fused", "1"}, {"fp8-attention", "0"}, {"cuda-graph", "0"}, {"profile", ""}},
      {{"device", "cpu"}, {"layers", "2"}, {"heads", "2"}, {"head-dim", "8"}, {"caption-channels", "16"},
       {"channels", "4"}, {"latent-frames", "2"}, {"latent-height", "4"}, {"latent-width", "4"}, {"text-len", "8"},
       {"warmup", "1"}, {"iters", "2"}},
      "transformer_bench.cpp");
  auto num = [&](const char* k) { return bench::option_int(opt, k); };

  const TransformerConfig config = bench::transformer_config(opt);
  TransformerRuntime runtime;
  runtime.device = c10::Device(opt.at("device"));
  runtime.dtype = ltxmps::to_scalar_type(ltxmps::parse_precision(opt.at("precision")));
  runtime.attention.kernel = opt.at("attention") == "upcast" ? ltxmps::AttentionKernel::upcast : ltxmps::AttentionKernel::sdpa;
  runtime.fused_kernels = opt.at("fused") != "0";

  at::manual_seed(0);
  const auto options = at::TensorOptions().device(runtime.device).dtype(runtime.dtype);
  auto model = bench::random_transformer(config, runtime);
  const TransformerInputs in = bench::transformer_inputs(opt, config, options);
  const int64_t S = in.hidden_states.size(1), L = num("text-len"), B = num("batch");

  LinearMode fp8 = LinearMode::dense;
  if (opt.at("fp8-matmul") == "1") fp8 = LinearMode::fp8_matmul;
  else if (opt.at("weight-storage") == "fp8") fp8 = LinearMode::fp8_storage;
  else if (opt.at("fp8-matmul") != "0" || opt.at("weight-storage") != "compute")
    throw std::runtime_error("--fp8-matmul takes 0 or 1, --weight-storage compute or fp8");
  if (opt.at("fp8-attention") != "0" && opt.at("fp8-attention") != "1")
    throw std::runtime_error("--fp8-attention takes 0 or 1");
  const bool fp8_attention = opt.at("fp8-attention") == "1";
  if (opt.at("cuda-graph") != "0" && opt.at("cuda-graph") != "1") throw std::runtime_error("--cuda-graph takes 0 or 1");
  at::Tensor dense_out;
  if (fp8 != LinearMode::dense || fp8_attention) dense_out = model.forward(in);
  model.runtime.fp8_attention = fp8_attention;
  if (fp8 != LinearMode::dense) {
    quantize_transformer(model, fp8);
    for (const auto& d : fp8_diagnostics(model)) std::cerr << "transformer_bench: " << d.message << "\n";
  }

  // After any quantization: the graph keeps the weights' addresses.
  TransformerGraph graph(model, opt.at("cuda-graph") == "1");
  std::vector<double> ms;
  const int64_t warmup = num("warmup"), iters = num("iters");
  for (int64_t i = 0; i < warmup + iters; ++i) {
    ltxmps::synchronize(runtime.device);
    const auto t0 = std::chrono::steady_clock::now();
    graph.forward(in);
    ltxmps::synchronize(runtime.device);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::string profile_field;
  if (!opt.at("profile").empty()) {
    profile_forwards([&] { graph.forward(in); }, runtime.device, opt.at("profile"));
    profile_field = c10::str(", \"profile_forwards\": ", kProfileForwards);
  }
  std::sort(ms.begin(), ms.end());
  std::string fp8_fields;
  if (dense_out.defined()) {
    const auto ref = dense_out.to(at::kDouble);
    const auto diff = (graph.forward(in).to(at::kDouble) - ref).abs();
    const double scale = ref.abs().max().item<double>();
    fp8_fields = c10::str(", \"weights\": \"", to_string(fp8), "\", \"fp8_attention\": ", fp8_attention ? 1 : 0,
                          ", \"fp8_err_max_scaled\": ",
                          diff.max().item<double>() / scale, ", \"fp8_err_mean_scaled\": ",
                          diff.mean().item<double>() / scale);
  }
  std::string graph_fields;
  if (opt.at("cuda-graph") == "1") {
    const bool bitwise = at::equal(graph.forward(in), model.forward(in));
    graph_fields = c10::str(", \"cuda_graph\": 1, \"graph_replays\": ", graph.replays(),
                            ", \"graph_equals_eager\": ", bitwise ? "true" : "false");
    if (!graph.capture_failure().empty())
      std::cerr << "transformer_bench: the CUDA graph capture failed: " << graph.capture_failure() << "\n";
  }
  const double median = bench::median_of_sorted(ms);
  const double flops = forward_flops(config.num_layers, config.inner_dim(), config.cross_attention_dim,
                                     config.caption_channels, config.in_channels, config.out_channels, S, L, B);
  const double tflops = flops / (median * 1e-3) / 1e12;
  const bool fp8_compute = fp8 == LinearMode::fp8_matmul || fp8_attention;
  const double peak = std::stod(opt.at(fp8_compute ? "fp8-peak-tflops" : "peak-tflops"));
  std::printf(
      "{\"impl\": \"ltxmps\", \"device\": \"%s\", \"dtype\": \"%s\", \"attention\": \"%s\", \"fused\": %d, "
      "\"layers\": %lld, "
      "\"dim\": %lld, \"tokens\": %lld, \"text\": %lld, \"batch\": %lld, \"median_ms\": %.3f, \"min_ms\": %.3f, "
      "\"iters\": %lld, \"gflop\": %.1f, \"tflops\": %.2f, \"mfu\": %.4f%s%s%s}\n",
      runtime.device.str().c_str(), opt.at("precision").c_str(), opt.at("attention").c_str(),
      runtime.fused_kernels ? 1 : 0,
      static_cast<long long>(config.num_layers), static_cast<long long>(config.inner_dim()), static_cast<long long>(S),
      static_cast<long long>(L), static_cast<long long>(B), median, ms.front(), static_cast<long long>(iters),
      flops / 1e9, tflops, tflops / peak, fp8_fields.c_str(), graph_fields.c_str(), profile_field.c_str());
  return 0;
} catch (const ltxmps::bench::BadArgument& e) {
  std::cerr << "transformer_bench: " << e.what() << "\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "transformer_bench: " << e.what() << "\n";
  return 1;
}
