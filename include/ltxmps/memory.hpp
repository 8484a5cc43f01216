#pragma once
/// @file memory.hpp
/// @brief Synchronize, release cached device memory, and read memory statistics, per backend.

#include "ltxmps/diagnostics.hpp"
#include "ltxmps/error.hpp"

#include <ATen/detail/MPSHooksInterface.h>
#include <c10/core/Device.h>
#include <torch/cuda.h>
#include <torch/mps.h>
#if defined(LTXMPS_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#elif LTXMPS_TORCH_AT_LEAST(2, 9)
#include <c10/core/CachingDeviceAllocator.h>
#endif

#include <cstdint>
#include <exception>
#include <optional>
#include <string>

namespace ltxmps {

// Note [Releasing device memory]
// Caching allocators keep freed blocks reserved for reuse; another component (or process) cannot use
// them until the cache is emptied. After a heavy stage (text encoding, the VAE decode, dropping a
// component) the pipeline synchronizes, so pending kernels no longer hold their blocks, then empties
// the cache: ComfyUI's `soft_empty_cache`, diffusers' `empty_device_cache`, and `torch.mps.synchronize()`
// + `torch.mps.empty_cache()` in the Apple Silicon port. The C++ entry points differ by backend and
// LibTorch version:
//  - CUDA: `c10::cuda::CUDACachingAllocator` (needs the CUDA headers: LTXMPS_WITH_CUDA, set by our CMake
//    when LibTorch has CUDA), else on LibTorch >= 2.9 the generic `c10::getDeviceAllocator(kCUDA)`.
//  - MPS: `at::detail::getMPSHooks().emptyCache()`; it throws on builds without MPS, so it is guarded by
//    `torch::mps::is_available()`. There is no `torch::mps::empty_cache()` in C++.
//  - CPU: nothing to do.

/// @brief True when this build can empty the cache of `device`'s backend.
inline bool can_empty_cache(const c10::Device& device) {
  switch (device.type()) {
    case c10::DeviceType::CPU: return true;
    case c10::DeviceType::MPS: return torch::mps::is_available();
    case c10::DeviceType::CUDA:
#if defined(LTXMPS_WITH_CUDA) || LTXMPS_TORCH_AT_LEAST(2, 9)
      return torch::cuda::is_available();
#else
      return false;
#endif
    default: return false;
  }
}

/// @brief Waits for all work queued on `device` (no-op on the CPU).
inline void synchronize(const c10::Device& device) {
  switch (device.type()) {
    case c10::DeviceType::CPU: return;
    case c10::DeviceType::CUDA:
      LTXMPS_CHECK(torch::cuda::is_available(), "synchronize(", device, "): CUDA is not available");
      torch::cuda::synchronize(device.has_index() ? device.index() : -1);
      return;
    case c10::DeviceType::MPS:
      LTXMPS_CHECK(torch::mps::is_available(), "synchronize(", device, "): MPS is not available");
      torch::mps::synchronize();
      return;
    default:
      throw Error("synchronize: device type " + c10::DeviceTypeName(device.type()) + " is not supported");
  }
}

/// @brief Returns cached, unused blocks of `device`'s allocator to the system (no-op on the CPU).
inline void empty_cache(const c10::Device& device) {
  switch (device.type()) {
    case c10::DeviceType::CPU: return;
    case c10::DeviceType::CUDA:
      LTXMPS_CHECK(torch::cuda::is_available(), "empty_cache(", device, "): CUDA is not available");
#if defined(LTXMPS_WITH_CUDA)
      c10::cuda::CUDACachingAllocator::emptyCache();
#elif LTXMPS_TORCH_AT_LEAST(2, 9)
      c10::getDeviceAllocator(c10::DeviceType::CUDA)->emptyCache();
#else
      throw Error("empty_cache(cuda): this LibTorch is older than 2.9 and ltxmps was compiled without "
                  "LTXMPS_WITH_CUDA; link ltxmps::ltxmps through its CMake package to get it");
#endif
      return;
    case c10::DeviceType::MPS:
      LTXMPS_CHECK(torch::mps::is_available(), "empty_cache(", device, "): MPS is not available");
      at::detail::getMPSHooks().emptyCache();
      return;
    default:
      throw Error("empty_cache: device type " + c10::DeviceTypeName(device.type()) + " is not supported");
  }
}

/// @brief Memory figures of one device; empty where the backend does not report them.
struct MemoryStats {
  /// Bytes held by live tensors.
  std::optional<int64_t> allocated;
  /// Highest `allocated` since the last reset (CUDA only).
  std::optional<int64_t> peak_allocated;
  /// Bytes the allocator holds from the driver (live tensors plus cache).
  std::optional<int64_t> reserved;
};

/// @brief Current memory figures of `device` (all empty on the CPU, which keeps no statistics).
inline MemoryStats memory_stats(const c10::Device& device) {
  MemoryStats s;
  if (device.is_cuda() && torch::cuda::is_available()) {
    const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
    // The CUDA caching allocator sets up its per-device state on the first allocation and refuses queries before
    // that ("Invalid device argument ...: did you call init?"); a process that has allocated nothing on the device
    // has nothing to report yet, so the figures stay empty.
    try {
#if defined(LTXMPS_WITH_CUDA)
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
#elif LTXMPS_TORCH_AT_LEAST(2, 9)
      const auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(index);
#endif
#if defined(LTXMPS_WITH_CUDA) || LTXMPS_TORCH_AT_LEAST(2, 9)
      s.allocated = stats.allocated_bytes[0].current;
      s.peak_allocated = stats.allocated_bytes[0].peak;
      s.reserved = stats.reserved_bytes[0].current;
#else
      (void)index;
#endif
    } catch (const c10::Error&) {
      return s;
    }
  } else if (device.is_mps() && torch::mps::is_available()) {
    const auto& hooks = at::detail::getMPSHooks();
    s.allocated = static_cast<int64_t>(hooks.getCurrentAllocatedMemory());
    s.reserved = static_cast<int64_t>(hooks.getDriverAllocatedMemory());
  }
  return s;
}

/// @brief Restarts the peak counter of `device` (CUDA only; no-op elsewhere).
inline void reset_peak_memory(const c10::Device& device) {
  if (!device.is_cuda() || !torch::cuda::is_available()) return;
  const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
  try {  // before the first allocation there is no peak to reset (see memory_stats())
#if defined(LTXMPS_WITH_CUDA)
    c10::cuda::CUDACachingAllocator::resetPeakStats(index);
#elif LTXMPS_TORCH_AT_LEAST(2, 9)
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(index);
#else
    (void)index;
#endif
  } catch (const c10::Error&) {
  }
}

/// @brief Synchronizes `device` and empties its cache (Note [Releasing device memory]).
inline void release_memory(const c10::Device& device) {
  synchronize(device);
  empty_cache(device);
}

/// @brief RAII: when a heavy operation's scope ends, synchronize and empty the device cache.
///
/// Errors in the destructor are not thrown (the scope may be unwinding already); they go to the
/// sink as warnings.
class ReleaseMemoryScope {
 public:
  /// @param device the device whose memory is released at scope exit
  /// @param what   a name for the operation, used in diagnostics ("vae decode")
  /// @param sink   receives a note when memory was released, or a warning when it could not be
  ReleaseMemoryScope(c10::Device device, std::string what, DiagnosticSink sink = null_sink())
      : device_(device), what_(std::move(what)), sink_(std::move(sink)) {}
  ReleaseMemoryScope(const ReleaseMemoryScope&) = delete;
  ReleaseMemoryScope& operator=(const ReleaseMemoryScope&) = delete;
  ~ReleaseMemoryScope() {
    if (device_.is_cpu()) return;
    try {
      release_memory(device_);
      sink_(Diagnostic{Severity::info, "memory", "memory.released",
                       "synchronized and emptied the cache of " + device_.str() + " after " + what_});
    } catch (const std::exception& e) {
      sink_(Diagnostic{Severity::warning, "memory", "memory.release_failed",
                       "could not release memory of " + device_.str() + " after " + what_ + ": " + e.what()});
    }
  }

 private:
  c10::Device device_;
  std::string what_;
  DiagnosticSink sink_;
};

}  // namespace ltxmps
