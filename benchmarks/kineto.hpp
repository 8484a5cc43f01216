// Kernel traces for the benchmarks' --profile: a Kineto recording between two points of a run.
#pragma once

#include "ltxmps/memory.hpp"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <set>
#include <string>

namespace ltxmps::bench {

// Note [Kernel profile]
// --profile records with Kineto, the profiler behind torch.profiler, rather than nsys: the GPU machine has only
// ncu, and the Python benchmarks' --profile writes the same Chrome trace format, so that
// benchmarks/kernel_profile.py tabulates both sides alike. What is recorded starts after the timed runs (warm
// caches, cuBLAS heuristics settled). CUDA activity (kernels, copies) is asked for only on a CUDA device;
// elsewhere the trace has CPU operators only.
class KinetoRecording {
 public:
  explicit KinetoRecording(const c10::Device& device) : device_(device) {
    namespace prof = torch::profiler::impl;
    std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
    if (device.is_cuda()) activities.insert(prof::ActivityType::CUDA);
    const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    recording_ = true;
  }
  KinetoRecording(const KinetoRecording&) = delete;
  KinetoRecording& operator=(const KinetoRecording&) = delete;
  /// A recording left running (an exception) is stopped and dropped.
  ~KinetoRecording() {
    if (recording_) (void)torch::autograd::profiler::disableProfiler();
  }
  /// Waits for the device's queued work, stops, and writes the Chrome trace to `path`.
  void save(const std::string& path) {
    TORCH_CHECK(recording_, "--profile: the recording for ", path, " was already saved");
    ltxmps::synchronize(device_);
    recording_ = false;
    const auto result = torch::autograd::profiler::disableProfiler();
    TORCH_CHECK(result, "--profile: the Kineto profiler returned no result for ", path);
    result->save(path);
  }

 private:
  c10::Device device_;
  bool recording_ = false;
};

}  // namespace ltxmps::bench
