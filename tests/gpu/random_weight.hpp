#pragma once
// ltxmps_test::random_weight, the weight source of the GPU suites that build small transformers on the device.
#include <ltxmps/random.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ltxmps_test {

// Deterministic by name: a CPU generator seeded from the name; matrices scaled by 1/sqrt(fan_in) so activations stay
// O(1), 1-D tensors near 1 (norm weights) or near 0 (biases).
inline at::Tensor random_weight(const std::string& name, const std::vector<int64_t>& shape) {
  auto g = ltxmps::make_cpu_generator(std::hash<std::string>{}(name));
  auto t = ltxmps::randn(shape, g);
  if (shape.size() == 1) return t.mul_(0.05).add_(name.find("bias") == std::string::npos ? 1.0 : 0.0);
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  return t.mul_(1.0 / std::sqrt(static_cast<double>(fan_in)));
}

}  // namespace ltxmps_test
