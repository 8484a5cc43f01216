// The helpers every `ltxmps` subcommand shares (declared in cli_common.hpp): runtime and device options, the
// plan, seeds, output checks, finiteness checks, and the one error formatter (run_reporting_errors()).

#include "cli_common.hpp"
#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps/error.hpp"
#include "ltxmps/plan.hpp"
#include <CLI/CLI.hpp>
#include <ATen/ATen.h>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace ltxmps::cli {

void add_runtime_options(CLI::App* cmd, RuntimeOptions& o) {
  o.device_option = cmd->add_option("--device", o.device,
                                    "auto, cpu, cuda, cuda:N, mps, xpu (default: $LTXMPS_DEVICE when set, else auto)")
                        ->capture_default_str()
                        ->check([](const std::string& text) {
                          try {
                            ltxmps::DeviceRequest::parse(text);
                            return std::string();
                          } catch (const ltxmps::Error& e) {
                            return std::string(e.what());
                          }
                        });
  cmd->add_option("--precision", o.precision, "auto, fp32, bf16, fp16")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "fp16"}));
}

void add_weight_check_option(CLI::App* cmd, RuntimeOptions& o) {
  cmd->add_flag("--skip-weight-check", o.skip_weight_check,
                "do not check loaded weights for NaN/Inf (one reduction per tensor; on by default)");
}

DeviceChoice requested_device(const RuntimeOptions& o) {
  if (o.device_option != nullptr && o.device_option->count() > 0) return {o.device, "--device"};
  const char* env = std::getenv(ltxmps::kDeviceEnvironmentVariable);
  if (env != nullptr && *env != '\0') return {env, ltxmps::kDeviceEnvironmentVariable};
  return {o.device, "--device"};
}

ltxmps::ExecutionPlan resolve_plan(const RuntimeOptions& o, ltxmps::LoaderSettings settings,
                                   const ltxmps::Capabilities& caps) {
  const auto choice = requested_device(o);
  settings.device = choice.text;
  const std::string named = choice.source + (choice.source == "--device" ? " " : "=") + choice.text;
  try {
    ltxmps::DeviceRequest::parse(choice.text);
  } catch (const ltxmps::Error& e) {
    throw UsageError(named + ": " + e.what());
  }
  // A refusal from the planner can come from any setting (precision, weight storage, streaming); its message
  // names the setting, and the device is context, not the culprit.
  ltxmps::ExecutionPlan plan;
  try {
    plan = ltxmps::resolve(settings, caps);
  } catch (const ltxmps::Error& e) {
    throw UsageError(std::string("cannot plan the run on ") + named + ": " + e.what());
  }
  if (choice.source != "--device")
    for (auto& d : plan.diagnostics)
      if (d.topic == "device") d.message += c10::str(" (from the environment variable ", choice.source, ")");
  return plan;
}

ltxmps::ExecutionPlan resolve_plan(const RuntimeOptions& o) {
  ltxmps::LoaderSettings settings;
  settings.precision = ltxmps::parse_precision(o.precision);
  auto plan = resolve_plan(o, settings, ltxmps::current_capabilities());
  for (const auto& d : plan.diagnostics)
    if (d.severity == ltxmps::Severity::warning) std::cerr << "ltxmps: warning: " << d.message << "\n";
  return plan;
}

/// `--arg NAME=VALUE` pairs; every NAME must be in `allowed`.
std::map<std::string, std::string> parse_named_args(const std::vector<std::string>& args,
                                                    const std::set<std::string>& allowed, const std::string& command) {
  std::map<std::string, std::string> out;
  for (const auto& arg : args) {
    const auto eq = arg.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError("--arg '" + arg + "': expected NAME=VALUE");
    const auto name = arg.substr(0, eq);
    if (!allowed.count(name)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      throw UsageError("--arg " + name + ": unknown argument of '" + command + "' (expected one of " + list + ")");
    }
    if (!out.emplace(name, arg.substr(eq + 1)).second) throw UsageError("--arg " + name + " is given twice");
  }
  return out;
}

int64_t positive_int_arg(const std::string& name, const std::string& value) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || v <= 0)
    throw UsageError("--arg " + name + "=" + value + ": expected a positive integer");
  return v;
}

// ---------------------------------------------------------------------------------------------------
// Seeds, outputs, finiteness

namespace {

// Note [Seeds]
// CLI11 converts with strtoull, which clamps 2^64 and above to 2^64 - 1 and wraps "-1" to it: two different
// requests would silently give the same video. Seeds are therefore read digit by digit.
std::optional<uint64_t> parse_u64(const std::string& text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto digit = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    v = v * 10 + digit;
  }
  return v;
}

const char* const kSeedExpected = "expected an integer from 0 to 18446744073709551615 (2^64 - 1)";

}  // namespace

CLI::Validator seed_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return parse_u64(text) ? std::string() : c10::str(kSeedExpected, ", got '", text, "'");
      },
      "UINT64");
}

uint64_t parse_seed(const std::string& option, const std::string& text) {
  const auto v = parse_u64(text);
  if (!v) throw UsageError(c10::str(option, " ", text, ": ", kSeedExpected));
  return *v;
}

void check_outputs(const std::vector<ltxmps::pipeline::OutputPath>& outputs,
                   const std::vector<ltxmps::pipeline::InputPath>& inputs) {
  try {
    ltxmps::pipeline::check_output_paths(outputs, inputs);
  } catch (const ltxmps::Error& e) {
    throw UsageError(e.what());
  }
}

void require_finite_input(const at::Tensor& t, const std::string& option, const std::string& file,
                          const std::string& name) {
  ltxmps::pipeline::require_finite(t, c10::str(option, " ", file, ": tensor '", name, "'"));
}

void require_finite_output(const at::Tensor& t, const std::string& component, const std::string& name,
                           at::ScalarType dtype, const RuntimeOptions& o) {
  if (ltxmps::pipeline::all_finite(t)) return;
  const std::string why =
      o.skip_weight_check
          ? "; its inputs are finite, but its weights were not checked (--skip-weight-check): they may hold NaN/Inf"
          : c10::str("; its inputs and weights are finite, so the computation overflowed in ", c10::toString(dtype),
                     dtype == at::kFloat ? "" : " (try --precision fp32)");
  try {
    ltxmps::pipeline::require_finite(t, c10::str(component, " output '", name, "'"));
  } catch (const ltxmps::Error& e) {
    throw ltxmps::Error(e.what() + why);
  }
}

// ---------------------------------------------------------------------------------------------------
// Error reporting

namespace {

struct ActivityState {
  std::vector<std::pair<std::string, int>> stack;  // what, uncaught exceptions at entry
  std::string failed;  // the innermost activity an exception left (kept for the message)
};

ActivityState& activities() {
  static ActivityState state;
  return state;
}

bool debug_errors() {
  const char* v = std::getenv("LTXMPS_DEBUG");
  return v != nullptr && std::string(v) == "1";
}

// c10 appends "Exception raised from <function> at <file>:<line> (most recent call first):" or "frame #0: ..."
// lines (a backtrace) to its messages, also when they travel inside another exception's text; users get the
// message alone.
std::string without_backtrace(std::string text) {
  if (!debug_errors())
    for (const char* marker : {"Exception raised from ", "\nframe #0"}) {
      const auto pos = text.find(marker);
      if (pos != std::string::npos) text.erase(pos);
    }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

bool is_allocation_failure(const std::string& text) {
  for (const char* marker : {"Storage size calculation overflowed", "can't allocate memory", "not enough memory",
                             "out of memory", "Out of memory", "std::bad_alloc", "larger than max_size()"})
    if (text.find(marker) != std::string::npos) return true;
  return false;
}

std::string out_of_memory(const std::string& detail) {
  const auto& a = activities();
  const std::string what = !a.failed.empty() ? a.failed : a.stack.empty() ? "running the command" : a.stack.back().first;
  const std::string line = detail.substr(0, detail.find('\n'));
  return c10::str("out of memory while ", what, " (",
                  line, "): the request needs more memory than this machine has, or a size taken from the input or the "
                  "options is too large; make the request smaller");
}

}  // namespace

Activity::Activity(std::string what) { activities().stack.emplace_back(std::move(what), std::uncaught_exceptions()); }

Activity::~Activity() {
  auto& a = activities();
  // Unwinding: the exception is reported after every Activity is gone, so the innermost one is kept.
  if (std::uncaught_exceptions() > a.stack.back().second && a.failed.empty()) a.failed = a.stack.back().first;
  a.stack.pop_back();
}

std::string describe_exception(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const ltxmps::pipeline::Cancelled& e) {
    return e.what();
  } catch (const std::bad_alloc&) {
    return out_of_memory("std::bad_alloc");
  } catch (const std::length_error& e) {
    return out_of_memory(e.what());
  } catch (const c10::Error& e) {
    const auto text = debug_errors() ? std::string(e.what()) : without_backtrace(e.what_without_backtrace());
    if (!is_allocation_failure(text)) return text;
    return out_of_memory(without_backtrace(e.what_without_backtrace())) + (debug_errors() ? "\n" + text : "");
  } catch (const std::exception& e) {
    const auto text = without_backtrace(e.what());
    return is_allocation_failure(text) ? out_of_memory(text) : text;
  } catch (...) {
    return "an unknown error (not a C++ std::exception)";
  }
}

int run_reporting_errors(const std::function<int()>& run) {
  activities().failed.clear();
  try {
    return run();
  } catch (const UsageError& e) {
    std::cerr << "ltxmps: usage error: " << without_backtrace(e.what()) << "\n";
    return 2;
  } catch (const ltxmps::pipeline::Cancelled& e) {
    std::cerr << "ltxmps: " << e.what() << "\n";
    return 128 + e.signal();
  } catch (...) {
    std::cerr << "ltxmps: error: " << describe_exception(std::current_exception()) << "\n";
    return 1;
  }
}

}  // namespace ltxmps::cli
