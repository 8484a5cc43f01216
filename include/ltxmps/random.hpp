#pragma once
/// @file random.hpp
/// @brief Reproducible noise: drawn in float32 from a CPU generator, then moved and cast.

#include "ltxmps/error.hpp"
#include "ltxmps/precision.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

#include <cstdint>
#include <vector>

namespace ltxmps {

// Note [Noise from a CPU generator]
// CUDA's Philox and MPS generators give other streams than the CPU's mt19937 for the same seed, and
// MPS generators had seed bugs (pytorch#84288, #130613). diffusers' `randn_tensor` contract, and its
// documentation's advice for reproducibility, is to draw on a CPU generator and move the result; the
// Apple Silicon port does the same. So noise here is always drawn in float32 on the CPU and then moved
// and cast: one seed gives the same values on every device, and the same values as
// `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` in Python. Upstream LTX-Video
// uses a device-local generator instead, so its noise differs per device; this library deviates on
// purpose.

/// @brief A new CPU generator seeded with `seed` (same stream as `torch.Generator().manual_seed(seed)`).
inline at::Generator make_cpu_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

/// @brief One CPU generator per seed, for per-sample seeding of a batch.
inline std::vector<at::Generator> make_cpu_generators(const std::vector<uint64_t>& seeds) {
  std::vector<at::Generator> out;
  out.reserve(seeds.size());
  for (uint64_t s : seeds) out.push_back(make_cpu_generator(s));
  return out;
}

namespace detail {

inline at::Tensor draw_cpu(at::IntArrayRef shape, at::Generator& generator) {
  LTXMPS_CHECK(generator.defined(), "ltxmps::randn: the generator is undefined");
  LTXMPS_CHECK(generator.device().is_cpu(), "ltxmps::randn: the generator must be a CPU generator, got one on ",
               generator.device(), " (Note [Noise from a CPU generator])");
  // at::randn takes the generator's mutex itself; a shared generator is safe across threads.
  return at::randn(shape, generator, at::TensorOptions().dtype(at::kFloat));
}

inline at::Tensor move_to_target(const at::Tensor& cpu_noise, const at::TensorOptions& target) {
  const c10::Device device = target.device();
  const at::ScalarType dtype = device_dtype(target.dtype().toScalarType(), device);
  LTXMPS_CHECK(at::isFloatingType(dtype), "ltxmps::randn: the target dtype must be floating point, got ", dtype);
  // Through pinned memory on CUDA: a copy from pageable memory makes the host wait for the device's queue to drain;
  // the caching host allocator keeps the pinned block alive until the asynchronous copy has read it.
  if (device.is_cuda()) return cpu_noise.pin_memory().to(device, dtype, /*non_blocking=*/true);
  return cpu_noise.to(device, dtype);
}

}  // namespace detail

/// @brief Standard normal noise of `shape` from a CPU generator, moved and cast to `target`'s device
///        and dtype (float32 when `target` names none).
inline at::Tensor randn(at::IntArrayRef shape, at::Generator& generator,
                        const at::TensorOptions& target = at::TensorOptions()) {
  return detail::move_to_target(detail::draw_cpu(shape, generator), target);
}

/// @brief Per-sample noise: item i of the batch (dimension 0) is drawn from `generators[i]`, as
///        diffusers' `randn_tensor` does with a list of generators.
inline at::Tensor randn(at::IntArrayRef shape, std::vector<at::Generator>& generators,
                        const at::TensorOptions& target = at::TensorOptions()) {
  LTXMPS_CHECK(!shape.empty(), "ltxmps::randn: per-sample generators need a batch dimension, got shape ", shape);
  LTXMPS_CHECK(static_cast<int64_t>(generators.size()) == shape[0], "ltxmps::randn: ", generators.size(),
               " generators given for a batch of ", shape[0], " (one generator per batch item)");
  std::vector<int64_t> item(shape.begin(), shape.end());
  item[0] = 1;
  std::vector<at::Tensor> parts;
  parts.reserve(generators.size());
  for (auto& g : generators) parts.push_back(detail::draw_cpu(item, g));
  return detail::move_to_target(at::cat(parts, 0), target);
}

}  // namespace ltxmps
