// Real-device checks. Without CUDA the whole suite reports SKIPPED (exit code 77) with its reason.
#define CATCH_CONFIG_RUNNER  // Catch2 v2: this file provides main() (v3 ignores the macro)
#include "catch_compat.hpp"
#if LTXMPS_CATCH_V3
#include <catch2/catch_session.hpp>
#endif

#include <ltxmps/ltxmps.hpp>

#include <iostream>

namespace {
const c10::Device kCuda("cuda:0");
}

TEST_CASE("the probe sees the GPU and the plan picks it", "[gpu]") {
  const auto& caps = ltxmps::current_capabilities();
  REQUIRE(caps.cuda_available());
  const auto plan = ltxmps::resolve(ltxmps::LoaderSettings{});
  CHECK(plan.device == kCuda);
  INFO(ltxmps::to_text(plan));
#if defined(LTXMPS_WITH_CUDA)
  REQUIRE(caps.cuda_devices[0].capability_known());
  if (caps.cuda_devices[0].supports_bf16()) CHECK(plan.precision.resolved == ltxmps::Precision::bf16);
#endif
}

TEST_CASE("noise is identical on the CPU and on CUDA for the same seed", "[gpu][random]") {
  auto g_cpu = ltxmps::make_cpu_generator(1234);
  auto g_gpu = ltxmps::make_cpu_generator(1234);
  const auto on_cpu = ltxmps::randn({2, 128, 4, 16, 24}, g_cpu);
  const auto on_gpu = ltxmps::randn({2, 128, 4, 16, 24}, g_gpu, at::TensorOptions().device(kCuda));
  REQUIRE(on_gpu.device() == kCuda);
  CHECK(at::equal(on_cpu, on_gpu.cpu()));
  auto g_half = ltxmps::make_cpu_generator(1234);
  const auto bf16 = ltxmps::randn({2, 128, 4, 16, 24}, g_half, at::TensorOptions().device(kCuda).dtype(at::kBFloat16));
  CHECK(at::equal(on_cpu.to(at::kBFloat16), bf16.cpu()));
}

TEST_CASE("empty_cache releases reserved CUDA memory", "[gpu][memory]") {
  ltxmps::release_memory(kCuda);
  const auto before = ltxmps::memory_stats(kCuda);
  REQUIRE(before.reserved.has_value());
  {
    auto big = at::empty({256, 1024, 1024}, at::TensorOptions().device(kCuda).dtype(at::kFloat));  // 1 GiB
    big.fill_(1.0f);
    const auto during = ltxmps::memory_stats(kCuda);
    CHECK(*during.allocated >= *before.allocated + (int64_t{1} << 30));
    CHECK(*during.peak_allocated >= *during.allocated);
  }
  const auto freed = ltxmps::memory_stats(kCuda);
  CHECK(*freed.reserved >= *before.reserved + (int64_t{1} << 30));  // the cache still holds the block
  ltxmps::release_memory(kCuda);
  const auto after = ltxmps::memory_stats(kCuda);
  CHECK(*after.reserved <= *before.reserved);
  CHECK(*after.allocated == *before.allocated);
  ltxmps::reset_peak_memory(kCuda);
  CHECK(*ltxmps::memory_stats(kCuda).peak_allocated == *after.allocated);
}

TEST_CASE("ReleaseMemoryScope and OffloadScope work on CUDA", "[gpu][offload]") {
  std::vector<ltxmps::Diagnostic> notes;
  auto weight = at::ones({1024, 1024});
  const auto decision = ltxmps::decide_offload(true, kCuda);
  REQUIRE(decision.enabled);
  {
    ltxmps::OffloadScope scope(decision, [&](const c10::Device& d) { weight = weight.to(d); }, "weight",
                               ltxmps::collect_into(notes));
    CHECK(weight.device() == kCuda);
    { ltxmps::ReleaseMemoryScope release(kCuda, "a heavy op", ltxmps::collect_into(notes)); }
  }
  CHECK(weight.device().is_cpu());
  CHECK(ltxmps::has_rule(notes, "memory.released"));
  CHECK(ltxmps::has_rule(notes, "offload.offload"));
}

TEST_CASE("attention kernels agree in bf16 on CUDA; upcast survives what overflows fp16", "[gpu][attention]") {
  auto g = ltxmps::make_cpu_generator(5);
  const auto opts = at::TensorOptions().device(kCuda).dtype(at::kBFloat16);
  const auto q = ltxmps::randn({2, 4, 256, 64}, g, opts);
  const auto k = ltxmps::randn({2, 4, 256, 64}, g, opts);
  const auto v = ltxmps::randn({2, 4, 256, 64}, g, opts);
  const auto sdpa = ltxmps::attention(q, k, v, std::nullopt, {ltxmps::AttentionKernel::sdpa});
  const auto upcast = ltxmps::attention(q, k, v, std::nullopt, {ltxmps::AttentionKernel::upcast, std::nullopt, 64});
  CHECK((sdpa.to(at::kFloat) - upcast.to(at::kFloat)).abs().max().item<float>() < 2e-2f);

  const auto big_q = (ltxmps::randn({1, 2, 64, 16}, g) * 100).to(kCuda, at::kHalf);
  const auto big_k = (ltxmps::randn({1, 2, 64, 16}, g) * 100).to(kCuda, at::kHalf);
  const auto big_v = ltxmps::randn({1, 2, 64, 16}, g).to(kCuda, at::kHalf);
  CHECK(ltxmps::attention(big_q, big_k, big_v, std::nullopt, {ltxmps::AttentionKernel::math}).isnan().any().item<bool>());
  CHECK_FALSE(ltxmps::attention(big_q, big_k, big_v, std::nullopt, {ltxmps::AttentionKernel::upcast}).isnan().any().item<bool>());
}

int main(int argc, char* argv[]) {
  if (!torch::cuda::is_available()) {
    std::cout << "SKIPPED: no CUDA device on this machine (torch::cuda::is_available() is false); "
                 "these tests run on the GPU machine\n";
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
