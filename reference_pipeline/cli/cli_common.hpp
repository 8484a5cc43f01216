#pragma once
// Helpers of the `ltxmps` tool shared by its subcommand files (reference_pipeline/cli/*.cpp, linked into
// one executable). They are defined in main.cpp.

#include "ltxmps/plan.hpp"

#include <CLI/CLI.hpp>

#include <cstdint>
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

/// `--device` and `--precision`.
struct RuntimeOptions {
  std::string device = "auto";
  std::string precision = "auto";
};

/// Declares `--device` and `--precision` on `cmd`.
void add_runtime_options(CLI::App* cmd, RuntimeOptions& o);
/// The execution plan for the options; prints the plan's warnings on stderr.
ltxmps::ExecutionPlan resolve_plan(const RuntimeOptions& o);
/// `--arg NAME=VALUE` pairs; every NAME must be in `allowed` (UsageError otherwise).
std::map<std::string, std::string> parse_named_args(const std::vector<std::string>& args,
                                                    const std::set<std::string>& allowed, const std::string& command);
/// A positive integer `--arg` value (UsageError otherwise).
int64_t positive_int_arg(const std::string& name, const std::string& value);

}  // namespace ltxmps::cli
