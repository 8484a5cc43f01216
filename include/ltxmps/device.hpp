#pragma once
/// @file device.hpp
/// @brief What this machine offers (Capabilities) and which device a request resolves to.

#include "ltxmps/diagnostics.hpp"
#include "ltxmps/error.hpp"

#include <ATen/Context.h>
#include <ATen/detail/MPSHooksInterface.h>
#include <c10/core/Device.h>
#include <torch/cuda.h>
#include <torch/mps.h>
#if LTXMPS_TORCH_AT_LEAST(2, 6)
#include <torch/xpu.h>
#define LTXMPS_HAS_XPU_API 1
#else
#define LTXMPS_HAS_XPU_API 0
#endif
#if defined(LTXMPS_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace ltxmps {

/// @brief One CUDA device as the runtime reports it.
struct CudaDeviceInfo {
  /// Device index (cuda:N).
  int index = 0;
  /// Compute capability major version; 0 when unknown (LibTorch headers without CUDA).
  int major = 0;
  /// Compute capability minor version.
  int minor = 0;
  /// Marketing name, when known.
  std::string name;
  /// Device memory in bytes; 0 when unknown (LibTorch headers without CUDA).
  uint64_t total_memory = 0;
  /// Free device memory in bytes when probed (Note [Device memory probe]); 0 when unknown.
  uint64_t free_memory = 0;

  /// True when the compute capability is known.
  bool capability_known() const noexcept { return major > 0; }
  /// True when the device has native bf16 matrix units (compute capability >= 8.0).
  bool supports_bf16() const noexcept { return major >= 8; }
  /// True when fp16 is worth using (compute capability >= 6.0).
  bool supports_fp16() const noexcept { return major >= 6; }
  /// True when the device has FP8 (e4m3) tensor-core matrix multiplies (Ada sm_89, Hopper sm_90 and newer).
  bool supports_fp8_matmul() const noexcept { return major > 8 || (major == 8 && minor >= 9); }
};

/// @brief A macOS version (for the MPS rules); major 0 means unknown.
struct MacOSVersion {
  /// Major version (13 = Ventura, 14 = Sonoma, 15 = Sequoia).
  int major = 0;
  /// Minor version.
  int minor = 0;
};

/// @brief What a machine offers, as a value: probed once at run time, or built by hand to simulate
///        a machine in tests.
///
/// Note [Runtime availability]
/// Availability comes from the `is_available()` calls of each backend, not from
/// `at::getAccelerator()`, which since LibTorch 2.7 answers from build flags (pytorch#146098): a CUDA
/// build on a machine without a GPU would otherwise claim CUDA. diffusers' `get_device()` and
/// Lightricks' `inference.py::get_device()` decide the same way.
struct Capabilities {
  /// CUDA devices; empty when CUDA is not available.
  std::vector<CudaDeviceInfo> cuda_devices;
  /// MPS (Apple Silicon GPU) is available.
  bool mps_available = false;
  /// macOS version where known (only probed where MPS exists).
  std::optional<MacOSVersion> macos_version;
  /// Memory the MPS device may use (Metal's recommended working set of the unified memory); 0 when unknown.
  uint64_t unified_memory = 0;
  /// Number of XPU devices (0 where the LibTorch has no XPU support).
  int xpu_device_count = 0;
  /// The LibTorch version string these capabilities were probed with (empty when simulated).
  std::string torch_version;
  /// True for capabilities built by hand (tests, `--simulate`), false for a probe.
  bool simulated = false;

  /// True when at least one CUDA device is usable.
  bool cuda_available() const noexcept { return !cuda_devices.empty(); }
  /// True when at least one XPU device is usable.
  bool xpu_available() const noexcept { return xpu_device_count > 0; }

  /// A machine with only a CPU.
  static Capabilities cpu_only() {
    Capabilities c;
    c.simulated = true;
    return c;
  }
  /// A machine with `count` CUDA devices of compute capability major.minor, each with `memory` bytes, all free
  /// (0: unknown).
  static Capabilities cuda(int count = 1, int major = 9, int minor = 0, uint64_t memory = 0) {
    Capabilities c;
    c.simulated = true;
    for (int i = 0; i < count; ++i)
      c.cuda_devices.push_back({i, major, minor, "simulated CUDA device", memory, memory});
    return c;
  }
  /// An Apple Silicon machine running macOS major.minor whose GPU may use `unified_memory` bytes (0: unknown).
  static Capabilities mps(int macos_major = 15, int macos_minor = 0, uint64_t unified_memory = 0) {
    Capabilities c;
    c.simulated = true;
    c.mps_available = true;
    c.macos_version = MacOSVersion{macos_major, macos_minor};
    c.unified_memory = unified_memory;
    return c;
  }
};

// Note [Device memory probe]
// The total memory of a CUDA device comes with its properties, which need no CUDA context. Its free memory needs
// one (cudaMemGetInfo), and creating a context costs hundreds of MiB on every device it touches, so the probe
// reads free memory only where this process already holds a context; elsewhere it stays 0 (unknown) and the
// memory budget asks the plan's device alone when it needs the figure (memory_budget.hpp). Blocks this process's
// caching allocator holds without a tensor in them count as free: the next allocation reuses them.

namespace detail {

/// "79.1 GiB".
inline std::string gib(uint64_t bytes) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << static_cast<double>(bytes) / static_cast<double>(uint64_t{1} << 30) << " GiB";
  return os.str();
}

#if defined(LTXMPS_WITH_CUDA)
/// Free bytes of cuda:`index` plus the caching allocator's unused blocks there; creates the device's context.
inline uint64_t cuda_free_memory(int index) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so that later calls do not report it
    return 0;
  }
  uint64_t cached = 0;
  try {  // the allocator refuses queries for a device it has not allocated on yet
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
    const auto reserved = stats.reserved_bytes[0].current, allocated = stats.allocated_bytes[0].current;
    cached = reserved > allocated ? static_cast<uint64_t>(reserved - allocated) : 0;
  } catch (const c10::Error&) {
  }
  return static_cast<uint64_t>(free) + cached;
}

/// cuda_free_memory() where this process already has a context on the device, else 0 (Note [Device memory probe]).
inline uint64_t cuda_free_memory_if_initialized(int index) {
  return c10::cuda::hasPrimaryContext(static_cast<c10::DeviceIndex>(index)) ? cuda_free_memory(index) : 0;
}
#endif

}  // namespace detail

/// @brief Asks LibTorch what this machine offers. Cheap enough to call once; use
///        `current_capabilities()` for the cached answer.
inline Capabilities probe_capabilities() {
  Capabilities caps;
  caps.torch_version = TORCH_VERSION;
  if (torch::cuda::is_available()) {
    const int count = static_cast<int>(torch::cuda::device_count());
    for (int i = 0; i < count; ++i) {
      CudaDeviceInfo info;
      info.index = i;
#if defined(LTXMPS_WITH_CUDA)
      const auto* props = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(i));
      info.major = props->major;
      info.minor = props->minor;
      info.name = props->name;
      info.total_memory = static_cast<uint64_t>(props->totalGlobalMem);
      info.free_memory = detail::cuda_free_memory_if_initialized(i);
#endif
      caps.cuda_devices.push_back(info);
    }
  }
  if (torch::mps::is_available()) {
    caps.mps_available = true;
    // Note [macOS version]: the MPS hooks answer "is this macOS >= x.y"; walk down from a recent
    // major to find the running one. Only needed for the bf16-on-MPS rule.
    const auto& hooks = at::detail::getMPSHooks();
    for (int major = 30; major >= 11; --major) {
      if (hooks.isOnMacOSorNewer(major, 0)) {
        int minor = 0;
        while (minor < 9 && hooks.isOnMacOSorNewer(major, minor + 1)) ++minor;
        caps.macos_version = MacOSVersion{major, minor};
        break;
      }
    }
#if LTXMPS_TORCH_AT_LEAST(2, 5)  // MPSHooksInterface::getRecommendedMaxMemory
    caps.unified_memory = static_cast<uint64_t>(hooks.getRecommendedMaxMemory());
#endif
  }
#if LTXMPS_HAS_XPU_API
  if (torch::xpu::is_available()) caps.xpu_device_count = static_cast<int>(torch::xpu::device_count());
#endif
  return caps;
}

/// @brief The capabilities of this machine, probed on first use and cached (thread-safe).
inline const Capabilities& current_capabilities() {
  static const Capabilities caps = probe_capabilities();
  return caps;
}

/// @brief A one-line description: "CUDA 1 device(s) [cuda:0 sm_90 NVIDIA H100], MPS no, CPU yes".
inline std::string describe(const Capabilities& caps) {
  std::ostringstream os;
  os << "CUDA ";
  if (caps.cuda_devices.empty()) {
    os << "no";
  } else {
    os << caps.cuda_devices.size() << " device(s) [";
    for (size_t i = 0; i < caps.cuda_devices.size(); ++i) {
      const auto& d = caps.cuda_devices[i];
      os << (i ? ", " : "") << "cuda:" << d.index;
      if (d.capability_known()) os << " sm_" << d.major << d.minor;
      if (!d.name.empty()) os << " " << d.name;
      if (d.total_memory > 0) os << " " << detail::gib(d.total_memory);
    }
    os << "]";
  }
  os << ", MPS " << (caps.mps_available ? "yes" : "no");
  if (caps.macos_version) os << " (macOS " << caps.macos_version->major << "." << caps.macos_version->minor << ")";
  if (caps.unified_memory > 0) os << " " << detail::gib(caps.unified_memory) << " for the GPU";
  if (caps.xpu_device_count > 0) os << ", XPU " << caps.xpu_device_count << " device(s)";
  os << ", CPU yes";
  if (caps.simulated) os << " (simulated)";
  return os.str();
}

/// @brief The environment variable that supplies a device request when the caller gives none.
constexpr const char* kDeviceEnvironmentVariable = "LTXMPS_DEVICE";

/// @brief A parsed device request: `auto`, or a device type with an optional index.
struct DeviceRequest {
  /// True for `auto` (cascade CUDA -> XPU -> MPS -> CPU).
  bool automatic = true;
  /// The requested device type (ignored when automatic).
  c10::DeviceType type = c10::DeviceType::CPU;
  /// The requested index, when one was given ("cuda:1").
  std::optional<int> index;
  /// The text the request came from.
  std::string text = "auto";

  /// Parses "auto", "cpu", "cuda", "cuda:N", "mps", "xpu", "xpu:N" (case-insensitive).
  static DeviceRequest parse(const std::string& text) {
    std::string t;
    for (char ch : text) t += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    DeviceRequest r;
    r.text = text;
    if (t == "auto" || t.empty()) return r;
    r.automatic = false;
    std::string kind = t;
    const auto colon = t.find(':');
    if (colon != std::string::npos) {
      kind = t.substr(0, colon);
      const std::string digits = t.substr(colon + 1);
      bool ok = !digits.empty() && digits.size() <= 3;
      for (char ch : digits) ok = ok && ch >= '0' && ch <= '9';
      LTXMPS_CHECK(ok, "device '", text, "': the index after ':' must be a number (e.g. cuda:0)");
      r.index = std::stoi(digits);
    }
    if (kind == "cpu") {
      r.type = c10::DeviceType::CPU;
    } else if (kind == "cuda") {
      r.type = c10::DeviceType::CUDA;
    } else if (kind == "mps") {
      r.type = c10::DeviceType::MPS;
    } else if (kind == "xpu") {
      r.type = c10::DeviceType::XPU;
    } else {
      throw Error("device '" + text + "' is not one of auto, cpu, cuda, cuda:N, mps, xpu, xpu:N");
    }
    LTXMPS_CHECK(!r.index || r.type == c10::DeviceType::CUDA || r.type == c10::DeviceType::XPU,
                 "device '", text, "': only cuda and xpu take an index");
    return r;
  }

  /// The request from `LTXMPS_DEVICE`, or `fallback` when the variable is unset or empty.
  static DeviceRequest from_environment(const std::string& fallback = "auto") {
    const char* value = std::getenv(kDeviceEnvironmentVariable);
    if (value == nullptr || *value == '\0') return parse(fallback);
    try {
      return parse(value);
    } catch (const Error& e) {
      throw Error(std::string("environment variable ") + kDeviceEnvironmentVariable + ": " + e.what());
    }
  }
};

/// @brief A resolved device with the reason it was chosen.
struct DeviceResolution {
  /// The device to run on.
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  /// Why this device.
  Diagnostic reason;
};

/// @brief Lists the devices a machine offers, e.g. "cuda:0, cuda:1, cpu".
inline std::string available_devices(const Capabilities& caps) {
  std::string out;
  for (const auto& d : caps.cuda_devices) out += "cuda:" + std::to_string(d.index) + ", ";
  for (int i = 0; i < caps.xpu_device_count; ++i) out += "xpu:" + std::to_string(i) + ", ";
  if (caps.mps_available) out += "mps, ";
  return out + "cpu";
}

/// @brief Resolves a request against a machine.
///
/// `auto` cascades CUDA (device 0) -> XPU -> MPS -> CPU. An explicit request that the machine cannot
/// meet throws `ltxmps::Error` listing what is available: only `auto` falls back.
inline DeviceResolution resolve_device(const DeviceRequest& request, const Capabilities& caps) {
  DeviceResolution r;
  r.reason.topic = "device";
  if (request.automatic) {
    if (caps.cuda_available()) {
      r.device = c10::Device(c10::DeviceType::CUDA, 0);
      r.reason.rule = "device.auto.cuda";
      r.reason.message = "auto: CUDA is available, using cuda:0 (cascade CUDA -> XPU -> MPS -> CPU)";
    } else if (caps.xpu_available()) {
      r.device = c10::Device(c10::DeviceType::XPU, 0);
      r.reason.rule = "device.auto.xpu";
      r.reason.message = "auto: no CUDA; XPU is available, using xpu:0";
    } else if (caps.mps_available) {
      r.device = c10::Device(c10::DeviceType::MPS);
      r.reason.rule = "device.auto.mps";
      r.reason.message = "auto: no CUDA or XPU; MPS (Apple Silicon) is available";
    } else {
      r.device = c10::Device(c10::DeviceType::CPU);
      r.reason.rule = "device.auto.cpu";
      r.reason.message = "auto: no CUDA, XPU or MPS device is available; running on the CPU";
    }
    return r;
  }
  const std::string unmet = "device '" + request.text + "' was requested but ";
  switch (request.type) {
    case c10::DeviceType::CPU:
      r.device = c10::Device(c10::DeviceType::CPU);
      break;
    case c10::DeviceType::CUDA: {
      LTXMPS_CHECK(caps.cuda_available(), unmet, "CUDA is not available on this machine; available: ",
                   available_devices(caps));
      const int index = request.index.value_or(0);
      LTXMPS_CHECK(index < static_cast<int>(caps.cuda_devices.size()), unmet, "this machine has ",
                   caps.cuda_devices.size(), " CUDA device(s); available: ", available_devices(caps));
      r.device = c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
      break;
    }
    case c10::DeviceType::MPS:
      LTXMPS_CHECK(caps.mps_available, unmet, "MPS is not available on this machine; available: ",
                   available_devices(caps));
      r.device = c10::Device(c10::DeviceType::MPS);
      break;
    case c10::DeviceType::XPU: {
      LTXMPS_CHECK(caps.xpu_available(), unmet, "XPU is not available on this machine; available: ",
                   available_devices(caps));
      const int index = request.index.value_or(0);
      LTXMPS_CHECK(index < caps.xpu_device_count, unmet, "this machine has ", caps.xpu_device_count,
                   " XPU device(s); available: ", available_devices(caps));
      r.device = c10::Device(c10::DeviceType::XPU, static_cast<c10::DeviceIndex>(index));
      break;
    }
    default:
      throw Error(unmet + "that device type is not supported");
  }
  r.reason.rule = "device.explicit";
  r.reason.message = "explicit request '" + request.text + "'";
  return r;
}

/// @brief The CUDA device info for `device`, or nullptr when it is not a known CUDA device.
inline const CudaDeviceInfo* cuda_info(const Capabilities& caps, const c10::Device& device) {
  if (!device.is_cuda()) return nullptr;
  const int index = device.has_index() ? device.index() : 0;
  for (const auto& d : caps.cuda_devices)
    if (d.index == index) return &d;
  return nullptr;
}

}  // namespace ltxmps
