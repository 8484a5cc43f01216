#pragma once
// Helpers shared by the parity suites: where the oracle's files are, the CPU fp32 plan every case runs with, the
// oracle's tensors, and the error measure every bound uses.
#include "ltxmps_pipeline/safetensors.hpp"

#include "ltxmps/plan.hpp"

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

namespace ltxmps_test {

/// The oracle fixture's output folder for one suite: $LTXMPS_TEST_DATA/<suite> (set by CTest).
inline std::filesystem::path parity_data_dir(const std::string& suite) {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  REQUIRE(env != nullptr);
  return std::filesystem::path(env) / suite;
}

/// The plan every parity case runs with: the CPU in float32 on a simulated CPU-only machine.
inline ltxmps::ExecutionPlan cpu_fp32_plan() {
  ltxmps::LoaderSettings settings;
  settings.device = "cpu";
  settings.precision = ltxmps::Precision::fp32;
  return ltxmps::resolve(settings, ltxmps::Capabilities::cpu_only());
}

/// Every tensor of a safetensors file the oracle wrote, by name.
inline std::map<std::string, at::Tensor> read_tensors(const std::filesystem::path& file) {
  std::map<std::string, at::Tensor> out;
  for (auto& [name, t] : ltxmps::pipeline::load_all(file)) out.emplace(name, t);
  return out;
}

/// max |out - ref| / max(1, max |ref|), in float32: the measure behind every parity bound.
inline double scaled_error(const at::Tensor& out, const at::Tensor& ref) {
  REQUIRE(out.sizes() == ref.sizes());
  const auto r = ref.to(at::kFloat);
  const double scale = std::max(1.0, r.abs().max().item<double>());
  return (out.to(at::kFloat) - r).abs().max().item<double>() / scale;
}

}  // namespace ltxmps_test
