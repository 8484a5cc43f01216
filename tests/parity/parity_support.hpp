#pragma once
// Helpers shared by the parity suites: where the oracle's files are, and the error measure every bound uses.
#include "catch_compat.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace ltxmps_test {

/// The oracle fixture's output folder for one suite: $LTXMPS_TEST_DATA/<suite> (set by CTest).
inline std::filesystem::path parity_data_dir(const std::string& suite) {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  REQUIRE(env != nullptr);
  return std::filesystem::path(env) / suite;
}

/// max |out - ref| / max(1, max |ref|), in float32: the measure behind every parity bound.
inline double scaled_error(const at::Tensor& out, const at::Tensor& ref) {
  REQUIRE(out.sizes() == ref.sizes());
  const auto r = ref.to(at::kFloat);
  const double scale = std::max(1.0, r.abs().max().item<double>());
  return (out.to(at::kFloat) - r).abs().max().item<double>() / scale;
}

}  // namespace ltxmps_test
