// One T5 encoder forward with the C++ model: the counterpart of t5_bench.py (same defaults: T5-XXL shape,
// random bf16 weights generated on the device, batch 2, 128 tokens, no mask). Prints one JSON line with the
// median / min milliseconds and the peak CUDA memory (weights included).
//
//   ltxmps_t5_bench [--device cuda] [--precision bf16|fp16|fp32] [--batch N] [--tokens N] [--warmup N]
//                   [--iters N] [--smoke]
#include "ltxmps_pipeline/released_configs.hpp"
#include "ltxmps_pipeline/t5.hpp"

#include <ltxmps/memory.hpp>
#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

using namespace ltxmps::pipeline;

int main(int argc, char** argv) try {
  std::map<std::string, std::string> opt = {{"device", "cuda"}, {"precision", "bf16"}, {"batch", "2"},
                                            {"tokens", "128"},  {"warmup", "3"},         {"iters", "10"}};
  bool smoke = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      smoke = true;
      continue;
    }
    if (a.rfind("--", 0) != 0 || !opt.count(a.substr(2)) || i + 1 >= argc) {
      std::cerr << "t5_bench: bad argument '" << a << "' (see the header of t5_bench.cpp)\n";
      return 2;
    }
    opt[a.substr(2)] = argv[++i];
  }
  T5Config config = ltxmps::pipeline::t5_xxl_config();
  if (smoke) {
    config.d_model = 32;
    config.d_kv = 8;
    config.num_heads = 4;
    config.d_ff = 64;
    config.num_layers = 2;
    config.vocab_size = 128;
    if (!torch::cuda::is_available()) opt["device"] = "cpu";
    opt["iters"] = "2";
    opt["warmup"] = "1";
  }
  auto num = [&](const char* k) { return std::stoll(opt.at(k)); };
  T5Runtime runtime;
  runtime.device = c10::Device(opt.at("device"));
  runtime.dtype = ltxmps::to_scalar_type(ltxmps::parse_precision(opt.at("precision")));
  runtime.keep_in_fp32_modules = ltxmps::t5_fp32_modules(runtime.dtype);

  at::manual_seed(0);
  auto model = T5EncoderModel::from_weights(
      config, runtime, [&](const std::string&, const std::vector<int64_t>& shape, at::ScalarType dtype) {
        const auto options = at::TensorOptions().device(runtime.device).dtype(dtype);
        if (shape.size() == 1) return at::ones(shape, options);  // layer norms
        return at::randn(shape, options).mul_(1.0 / std::sqrt(static_cast<double>(shape.back())));
      });
  const auto ids = at::randint(0, config.vocab_size, {num("batch"), num("tokens")},
                               at::TensorOptions().device(runtime.device).dtype(at::kLong));
  ltxmps::reset_peak_memory(runtime.device);
  c10::InferenceMode inference;
  std::vector<double> ms;
  at::Tensor out;
  for (int64_t i = 0; i < num("warmup") + num("iters"); ++i) {
    ltxmps::synchronize(runtime.device);
    const auto t0 = std::chrono::steady_clock::now();
    out = model.forward(ids);
    ltxmps::synchronize(runtime.device);
    if (i >= num("warmup"))
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  const auto peak = ltxmps::memory_stats(runtime.device).peak_allocated;
  const std::string peak_text = peak ? std::to_string(static_cast<double>(*peak) / (1 << 20)) : "null";
  std::printf(
      "{\"impl\": \"ltxmps\", \"device\": \"%s\", \"dtype\": \"%s\", \"batch\": %lld, \"tokens\": %lld, \"layers\": %lld, "
      "\"d_model\": %lld, \"output_dtype\": \"%s\", \"median_ms\": %.3f, \"min_ms\": %.3f, \"iters\": %lld, "
      "\"peak_cuda_mib\": %s}\n",
      runtime.device.str().c_str(), opt.at("precision").c_str(), static_cast<long long>(num("batch")),
      static_cast<long long>(num("tokens")), static_cast<long long>(config.num_layers),
      static_cast<long long>(config.d_model), c10::toString(out.scalar_type()), median, ms.front(),
      static_cast<long long>(num("iters")), peak_text.c_str());
  return 0;
} catch (const std::exception& e) {
  std::cerr << "t5_bench: " << e.what() << "\n";
  return 1;
}
