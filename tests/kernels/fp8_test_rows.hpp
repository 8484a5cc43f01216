#pragma once
// Inputs for the FP8 row quantization tests (tests/kernels on the CPU, tests/gpu on CUDA).

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

}  // namespace ltxmps_test
