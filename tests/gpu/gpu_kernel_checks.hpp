#pragma once
// What the GPU kernel suites share: random CUDA inputs, the count of fused calls a piece of code makes, and the
// bitwise comparison of a kernel's result with its reference's.

#include "catch_compat.hpp"

#include "ltxmps_kernels/fused.hpp"

#include <ltxmps/random.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace ltxmps_test {

const c10::Device kCuda("cuda:0");

/// Standard normal values times `scale` from the CPU generator seeded with `seed`, on cuda:0 in `dtype`.
inline at::Tensor randn(std::vector<int64_t> shape, at::ScalarType dtype, uint64_t seed, double scale = 1.0) {
  auto g = ltxmps::make_cpu_generator(seed);
  return ltxmps::randn(shape, g).mul_(scale).to(kCuda, dtype);
}

/// Runs `f` and returns how many fused CUDA calls it made.
inline uint64_t fused_calls_in(const std::function<void()>& f) {
  const auto before = ltxmps::kernels::fused_calls();
  f();
  return ltxmps::kernels::fused_calls() - before;
}

// Note [FP8 kernel checks]
// The FP8 kernels do the reference's float32 operations on the same values (Note [FP8 row quantization] in
// fused.cpp), so codes, scales and dequantized values must be its bits, compared as integers. The one exception is
// which NaN a NaN carries: where the reference and the kernel both give NaN, any NaN matches (a row holding a NaN
// is lost either way; its payload is the hardware's, not the formula's). Infinities are compared bit for bit.
inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  REQUIRE(a.scalar_type() == b.scalar_type());
  const auto x = a.to(at::kCPU).contiguous(), y = b.to(at::kCPU).contiguous();
  const auto bits = [](const at::Tensor& t) {
    if (t.element_size() == 1) return t.view(at::kByte).to(at::kInt);
    if (t.element_size() == 2) return t.view(at::kShort).to(at::kInt);
    return t.view(at::kInt);
  };
  const auto both_nan = x.to(at::kFloat).isnan().logical_and(y.to(at::kFloat).isnan());
  return bits(x).eq(bits(y)).logical_or(both_nan).all().item<bool>();
}

}  // namespace ltxmps_test
