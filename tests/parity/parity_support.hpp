#pragma once
// Helpers shared by the parity suites: where the oracle's files are, the CPU fp32 plan every case runs with, the
// oracle's tensors and cases, the error measure every bound uses, and shell commands for the CLI cases.
#include "ltxmps_pipeline/json_file.hpp"
#include "ltxmps_pipeline/safetensors.hpp"

#include "ltxmps/plan.hpp"

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
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

/// The cases one oracle script wrote: `cases.json` (a list of objects, each with a "name") in the suite's folder and
/// the tensor files the cases name, relative to that folder.
struct OracleCases {
  std::string suite;  ///< the folder under $LTXMPS_TEST_DATA, also the label of the printed errors

  std::filesystem::path dir() const { return parity_data_dir(suite); }

  /// The case called `name`; FAILs when the oracle wrote none (a stale or partial fixture).
  nlohmann::json find_case(const std::string& name) const {
    for (const auto& c : ltxmps::pipeline::read_json_file(dir() / "cases.json"))
      if (c.at("name") == name) return c;
    FAIL("no oracle case " << name);
    return {};
  }

  /// The tensors of the file that case `c` names under `key`.
  std::map<std::string, at::Tensor> tensors(const nlohmann::json& c, const char* key) const {
    return read_tensors(dir() / c.at(key).get<std::string>());
  }

  /// Prints the scaled error of `what` in case `name` (so that a passing run still shows the margin) and checks it
  /// against `bound`.
  void check_output(const std::string& name, const std::string& what, const at::Tensor& out, const at::Tensor& ref,
                    double bound) const {
    const double err = scaled_error(out, ref);
    std::cout << suite << " parity " << name << " " << what << ": max abs error / max(1, max|ref|) = " << err
              << " (bound " << bound << ")\n";
    CHECK(err <= bound);
  }
};

/// The exit status of a shell command; REQUIREs that it exited rather than died of a signal.
inline int exit_code(const std::string& command) {
  const int rc = std::system(command.c_str());
  REQUIRE(WIFEXITED(rc));
  return WEXITSTATUS(rc);
}

/// `p` in double quotes, for a shell command line.
inline std::string quoted(const std::filesystem::path& p) { return "\"" + p.string() + "\""; }

#ifdef LTXMPS_CLI_PATH
/// The shell command line that runs the built `ltxmps` binary (LTXMPS_CLI_PATH, set by CMake) with `args`.
inline std::string cli(const std::string& args) { return std::string("\"") + LTXMPS_CLI_PATH + "\" " + args; }
#endif

}  // namespace ltxmps_test
