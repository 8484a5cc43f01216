// Google Benchmark programs for the ltxmps policies. Numbers and the machine they came from are in
// docs/benchmarks.md. GPU cases skip themselves (state.SkipWithError) where CUDA is absent.
#include <ltxmps/ltxmps.hpp>

#include <benchmark/benchmark.h>

namespace {

// Plan resolution with cached capabilities: what every loader call pays.
void BM_ResolvePlan(benchmark::State& state) {
  const auto caps = state.range(0) == 0 ? ltxmps::Capabilities::cpu_only()
                    : state.range(0) == 1 ? ltxmps::Capabilities::cuda(1, 9, 0)
                                          : ltxmps::Capabilities::mps(14, 0);
  ltxmps::LoaderSettings settings;
  settings.precision = ltxmps::Precision::bf16;
  for (auto _ : state) {
    auto plan = ltxmps::resolve(settings, caps);
    benchmark::DoNotOptimize(plan);
  }
  state.SetLabel(state.range(0) == 0 ? "cpu" : state.range(0) == 1 ? "cuda sm_90" : "mps macOS 14");
}
BENCHMARK(BM_ResolvePlan)->Arg(0)->Arg(1)->Arg(2);

void BM_ResolveDevice(benchmark::State& state) {
  const auto caps = ltxmps::Capabilities::cuda(1, 9, 0);
  const auto request = ltxmps::DeviceRequest::parse("auto");
  for (auto _ : state) {
    auto r = ltxmps::resolve_device(request, caps);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_ResolveDevice);

bool has_cuda(benchmark::State& state) {
  if (torch::cuda::is_available()) return true;
  state.SkipWithError("no CUDA device");
  return false;
}

// LTX latent noise for 768x512x121 with CFG batch 2: [2, 128, 16, 16, 24].
const std::vector<int64_t> kLatentShape = {2, 128, 16, 16, 24};

void BM_NoiseCpuGeneratorThenMove(benchmark::State& state) {
  if (!has_cuda(state)) return;
  auto g = ltxmps::make_cpu_generator(0);
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (auto _ : state) {
    auto t = ltxmps::randn(kLatentShape, g, opts);
    ltxmps::synchronize(t.device());
    benchmark::DoNotOptimize(t);
  }
}
BENCHMARK(BM_NoiseCpuGeneratorThenMove)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_NoiseDrawnOnDevice(benchmark::State& state) {
  if (!has_cuda(state)) return;
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (auto _ : state) {
    auto t = at::randn(kLatentShape, opts);
    ltxmps::synchronize(t.device());
    benchmark::DoNotOptimize(t);
  }
}
BENCHMARK(BM_NoiseDrawnOnDevice)->Unit(benchmark::kMillisecond)->UseRealTime();

// Self-attention at LTX 2B sizes: 32 heads x 64, 6144 tokens (768x512x121), batch 2, bf16.
void attention_case(benchmark::State& state, ltxmps::AttentionKernel kernel) {
  if (!has_cuda(state)) return;
  auto g = ltxmps::make_cpu_generator(0);
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const auto q = ltxmps::randn({2, 32, 6144, 64}, g, opts);
  const auto k = ltxmps::randn({2, 32, 6144, 64}, g, opts);
  const auto v = ltxmps::randn({2, 32, 6144, 64}, g, opts);
  const ltxmps::AttentionOptions options(kernel, std::nullopt, state.range(0));
  for (auto _ : state) {
    auto out = ltxmps::attention(q, k, v, std::nullopt, options);
    ltxmps::synchronize(out.device());
    benchmark::DoNotOptimize(out);
  }
  // 4·B·H·S²·Dh FLOPs (two matmuls).
  state.counters["TFLOP/s"] = benchmark::Counter(4.0 * 2 * 32 * 6144.0 * 6144.0 * 64 * 1e-12,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
void BM_AttentionSdpa(benchmark::State& state) { attention_case(state, ltxmps::AttentionKernel::sdpa); }
void BM_AttentionUpcast(benchmark::State& state) { attention_case(state, ltxmps::AttentionKernel::upcast); }
BENCHMARK(BM_AttentionSdpa)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AttentionUpcast)->Arg(0)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
