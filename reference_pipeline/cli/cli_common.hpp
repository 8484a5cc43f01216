#pragma once
// Helpers of the `ltxmps` tool shared by its subcommand files (reference_pipeline/cli/*.cpp, linked into
// one executable). They are defined in main.cpp.

#include "ltxmps_pipeline/output_files.hpp"

#include "ltxmps/plan.hpp"

#include <ATen/core/Tensor.h>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace ltxmps::cli {

/// A bad command-line argument found after parsing: exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// What a subcommand's setup function returns: runs the parsed command, returns the exit code.
using Runner = std::function<int()>;

/// `--device`, `--precision` and, where the command loads weights, `--skip-weight-check`.
struct RuntimeOptions {
  std::string device = "auto";
  std::string precision = "auto";
  /// Set by add_runtime_options(); tells whether --device was given (else LTXMPS_DEVICE applies).
  CLI::Option* device_option = nullptr;
  /// --skip-weight-check (add_weight_check_option()).
  bool skip_weight_check = false;
};

/// Declares `--device` and `--precision` on `cmd`.
void add_runtime_options(CLI::App* cmd, RuntimeOptions& o);
/// Declares `--skip-weight-check` (loaded weights are checked for NaN/Inf unless it is given).
void add_weight_check_option(CLI::App* cmd, RuntimeOptions& o);

/// The device request and where it came from: --device when given, else the environment variable LTXMPS_DEVICE
/// when set and not empty, else "auto".
struct DeviceChoice {
  std::string text = "auto";
  std::string source = "--device";  ///< "--device" or "LTXMPS_DEVICE"
};
DeviceChoice requested_device(const RuntimeOptions& o);

/// Resolves `settings` (its device replaced by requested_device(o)) on `caps`. A bad or unmet device request is a
/// UsageError naming --device or LTXMPS_DEVICE; when LTXMPS_DEVICE decided, the plan's device reason says so.
ltxmps::ExecutionPlan resolve_plan(const RuntimeOptions& o, ltxmps::LoaderSettings settings,
                                   const ltxmps::Capabilities& caps);
/// The execution plan for the options on this machine; prints the plan's warnings on stderr.
ltxmps::ExecutionPlan resolve_plan(const RuntimeOptions& o);

/// `--arg NAME=VALUE` pairs; every NAME must be in `allowed` (UsageError otherwise).
std::map<std::string, std::string> parse_named_args(const std::vector<std::string>& args,
                                                    const std::set<std::string>& allowed, const std::string& command);
/// A positive integer `--arg` value (UsageError otherwise).
int64_t positive_int_arg(const std::string& name, const std::string& value);

/// The CLI11 check of a seed option: a decimal integer in [0, 2^64), refused (never clamped or wrapped) otherwise,
/// e.g. `cmd->add_option("--seed", o->seed)->check(seed_validator())`.
CLI::Validator seed_validator();
/// A seed from text (`--arg noise_seed=...`): as seed_validator(), a UsageError naming `option` otherwise.
uint64_t parse_seed(const std::string& option, const std::string& text);

/// ltxmps::pipeline::check_output_paths() with its errors as UsageError (exit code 2): call it before any work.
void check_outputs(const std::vector<ltxmps::pipeline::OutputPath>& outputs,
                   const std::vector<ltxmps::pipeline::InputPath>& inputs);

/// Throws "<option> <file>: tensor '<name>' is not finite: ..." when an input tensor holds NaN or Inf.
void require_finite_input(const at::Tensor& t, const std::string& option, const std::string& file,
                          const std::string& name);
/// Throws "<component> output '<name>' is not finite: ..." with what that implies (inputs and weights were
/// checked, so the computation overflowed in `dtype`; or the weights were not checked).
void require_finite_output(const at::Tensor& t, const std::string& component, const std::string& name,
                           at::ScalarType dtype, const RuntimeOptions& o);

/// What the command is doing, for error messages ("out of memory while loading the transformer from m"): the
/// innermost live Activity is named. Scoped: construct one around each phase.
class Activity {
 public:
  explicit Activity(std::string what);
  ~Activity();
  Activity(const Activity&) = delete;
  Activity& operator=(const Activity&) = delete;
};

/// Runs `run`, mapping every exception to one message on stderr and an exit code: UsageError and CLI11 errors 2,
/// a cancellation (SIGINT/SIGTERM) 128 + signal, anything else 1. c10 backtraces are shown only with
/// LTXMPS_DEBUG=1; allocation failures (std::bad_alloc, std::length_error, c10's OutOfMemoryError and size
/// overflows) read "out of memory while <activity>".
int run_reporting_errors(const std::function<int()>& run);

/// The text run_reporting_errors() prints for an exception (without the "ltxmps: error: " prefix).
std::string describe_exception(std::exception_ptr error);

}  // namespace ltxmps::cli
