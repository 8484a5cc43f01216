#pragma once
// Inputs for the FP8 row quantization tests (tests/kernels on the CPU, tests/gpu on CUDA) and whether the CPU can
// run FP8 matmul.

#include <ltxmps/random.hpp>

#include <ATen/ATen.h>

#include <cstdint>

namespace ltxmps_test {

/// [M, K] float32 rows over 16 binades of scale, values down to ~2^-12 of each row's largest (subnormal codes
/// included). With M > 3: row 0 is zeros (the scale floor), row 1 too small for a normal float32 scale
/// (amax · (1/448) < FLT_MIN: the clamp), row 2 starts with -0.0 and ends with a tiny negative value (codes -0).
inline at::Tensor fp8_test_rows(int64_t M, int64_t K, uint64_t seed) {
  auto g = ltxmps::make_cpu_generator(seed);
  auto w = ltxmps::randn({M, K}, g) * at::pow(2.0, at::linspace(-8, 8, M).unsqueeze(1));
  w.mul_(at::pow(2.0, -ltxmps::randn({M, K}, g).abs().mul(3)));
  if (M > 3) {
    w[0].zero_();
    w[1].mul_(1e-38);
    w[2][0] = -0.0;
    w[2][K - 1] = -1e-30;
  }
  return w;
}

/// Whether this LibTorch's CPU at::_scaled_mm takes row-wise scales. It arrived after LibTorch 2.11 (which asserts
/// "only supports per-tensor scaling for CPU backend"); where it is missing, the CPU checks of FP8 matmul cannot run
/// (the plan never picks FP8 matmul off CUDA; the GPU suites cover the CUDA kernels).
inline bool cpu_rowwise_scaled_mm() {
  const auto q = at::zeros({16, 16}, at::TensorOptions().dtype(at::kFloat8_e4m3fn));
  const auto scale = at::ones({16}, at::TensorOptions().dtype(at::kFloat));
  try {
    at::_scaled_mm(q, q.t(), scale.unsqueeze(1), scale.unsqueeze(0), std::nullopt, std::nullopt, at::kFloat, false);
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}

}  // namespace ltxmps_test
