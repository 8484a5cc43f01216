#pragma once
// What the pipeline commands (generate, remove, effects-mask) share: the log and progress line on stderr,
// the plan flags and the number validators. Header-only: included by cli/generate_commands.cpp and
// cli/removal_commands.cpp.

#include "cli_common.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/memory_estimate.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/progress.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include "ltxmps/diagnostics.hpp"
#include "ltxmps/plan.hpp"

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>

namespace ltxmps::cli {

// ---------------------------------------------------------------------------------------------------
// Logging and progress

/// Progress and log lines on stderr; a terminal gets a bar redrawn in place.
class Log {
 public:
  Log() : tty_(isatty(fileno(stderr)) != 0) {}

  void line(const std::string& text) {
    end_bar();
    std::cerr << "ltxmps: " << text << "\n";
  }
  void diagnostic(const ltxmps::Diagnostic& d) {
    std::ostringstream os;
    os << (d.severity == ltxmps::Severity::warning ? "warning: " : "") << d.topic << ": " << d.message;
    line(os.str());
  }
  ltxmps::DiagnosticSink sink() {
    return [this](const ltxmps::Diagnostic& d) { diagnostic(d); };
  }
  /// A stage reports progress: single-shot stages get a line when they start, stepped stages a bar.
  void progress(const ltxmps::pipeline::Progress& p) {
    if (p.total <= 1) {
      if (p.done == 0) line(p.stage + "...");
      return;
    }
    const auto now = std::chrono::steady_clock::now();
    if (p.done <= 1 || !started_ || p.stage != stage_) start_ = now, started_ = true, first_step_ = p.done, stage_ = p.stage;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    // The rate counts the steps after the first one (the first pays for warm-up) once there are some.
    std::ostringstream os;
    const char* unit = p.stage == "denoise" ? " step " : p.stage == "effects" ? " layer " : " ";
    os << p.stage << unit << p.done << "/" << p.total;
    if (p.done > first_step_ && elapsed > 0) {
      const double rate = static_cast<double>(p.done - first_step_) / elapsed;
      os << std::fixed << std::setprecision(2) << ", " << rate << " it/s, ETA " << std::setprecision(1)
         << static_cast<double>(p.total - p.done) / rate << " s";
    }
    if (tty_) {
      const auto text = os.str();
      std::cerr << "\r" << text << std::string(bar_width_ > text.size() ? bar_width_ - text.size() : 0, ' ') << std::flush;
      bar_width_ = text.size();
      bar_open_ = true;
      if (p.done == p.total) end_bar();
    } else {
      line(os.str());
    }
  }
  ltxmps::pipeline::ProgressCallback progress_callback() {
    return [this](const ltxmps::pipeline::Progress& p) { progress(p); };
  }
  void end_bar() {
    if (!bar_open_) return;
    std::cerr << "\n";
    bar_open_ = false;
    bar_width_ = 0;
  }

 private:
  bool tty_;
  bool bar_open_ = false;
  size_t bar_width_ = 0;
  bool started_ = false;
  int64_t first_step_ = 1;
  std::string stage_;
  std::chrono::steady_clock::time_point start_;
};

// ---------------------------------------------------------------------------------------------------
// Options shared by generate and plan

struct PlanFlags {
  RuntimeOptions runtime;
  bool cpu_offload = false;
  bool vae_float32 = true;
  bool vae_tiling = false;
  bool vae_slicing = false;
  bool skip_memory_check = false;  ///< --skip-memory-check
};

inline void add_plan_flags(CLI::App* cmd, PlanFlags& f) {
  add_runtime_options(cmd, f.runtime);
  cmd->add_flag("--cpu-offload", f.cpu_offload,
                "keep components on the CPU and move each to the GPU while it runs (CUDA/XPU; ignored elsewhere)");
  cmd->add_flag("--vae-float32,!--no-vae-float32", f.vae_float32,
                "run the VAE in float32 whatever --precision says (default on; --no-vae-float32 follows --precision)");
}

inline ltxmps::LoaderSettings loader_settings(const PlanFlags& f) {
  ltxmps::LoaderSettings s;
  s.device = f.runtime.device;
  s.precision = ltxmps::parse_precision(f.runtime.precision);
  s.cpu_offload = f.cpu_offload;
  s.vae_float32 = f.vae_float32;
  s.vae_tiling = f.vae_tiling;
  s.vae_slicing = f.vae_slicing;
  return s;
}

// CLI11's number validators report a non-number as out of a range with a 300-digit bound; these say what is wrong.
inline CLI::Validator number_check(const char* description, bool integer, double min, bool min_inclusive) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        size_t used = 0;
        double v = 0;
        try {
          v = integer ? static_cast<double>(std::stoll(text, &used)) : std::stod(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (text.empty() || used != text.size() || !std::isfinite(v) || (min_inclusive ? v < min : v <= min))
          return std::string("expected ") + description + ", got '" + text + "'";
        return std::string();
      },
      description);
}
inline const CLI::Validator kPositiveInt = number_check("a positive integer", true, 0, false);
inline const CLI::Validator kPositive = number_check("a positive number", false, 0, false);
inline const CLI::Validator kNonNegative = number_check("a number >= 0", false, 0, true);


/// Prints the plan as log lines.
inline void log_plan(Log& log, const ltxmps::ExecutionPlan& plan) {
  log.line("execution plan:");
  std::istringstream text(ltxmps::to_text(plan));
  for (std::string l; std::getline(text, l);) log.line("  " + l);
}

/// check_outputs() on the outputs that were asked for (an optional output left empty is not written).
inline void check_given_outputs(const std::vector<ltxmps::pipeline::OutputPath>& outputs,
                                const std::vector<ltxmps::pipeline::InputPath>& inputs) {
  std::vector<ltxmps::pipeline::OutputPath> given;
  for (const auto& o : outputs)
    if (!o.path.empty()) given.push_back(o);
  check_outputs(given, inputs);
}

/// The plan of the flags on this machine (LTXMPS_DEVICE when --device is not given), printed.
inline ltxmps::ExecutionPlan job_plan(const PlanFlags& flags, Log& log) {
  const auto plan = resolve_plan(flags.runtime, loader_settings(flags), ltxmps::current_capabilities());
  log_plan(log, plan);
  return plan;
}

/// A model folder read without its weights (or the embedded default): the configs the size rules and the memory
/// estimate need before anything loads.
struct ModelInfo {
  std::optional<ltxmps::pipeline::LtxFolder> folder;  ///< empty: the embedded default
  ltxmps::pipeline::TransformerConfig transformer;
  ltxmps::pipeline::VaeConfig vae;
  std::optional<ltxmps::pipeline::T5Config> text_encoder;
  ltxmps::pipeline::FitRules rules;
};

inline ModelInfo inspect_model(const std::string& model_dir, const ltxmps::pipeline::LoadOptions& load = {}) {
  using namespace ltxmps::pipeline;
  ModelInfo info;
  if (model_dir.empty()) {
    info.transformer = EmbeddedDefault::transformer_config();
    info.vae = EmbeddedDefault::vae_config();
    info.text_encoder = EmbeddedDefault::text_encoder_config();
  } else {
    info.folder = inspect_ltx_folder(model_dir, load);
    info.transformer = info.folder->transformer;
    info.vae = info.folder->vae;
    if (load.load_text_encoder) info.text_encoder = read_text_encoder_config(model_dir);
  }
  info.rules = fit_rules(info.vae, info.transformer);
  return info;
}

/// Declares `--skip-memory-check` (the request's memory estimate is checked against the device before loading
/// unless it is given).
inline void add_memory_check_option(CLI::App* cmd, PlanFlags& f) {
  cmd->add_flag("--skip-memory-check", f.skip_memory_check,
                "do not refuse a request whose memory estimate exceeds the device's (or host's) free memory; the run "
                "may then stop with an out-of-memory error");
}

/// Refuses a request that cannot fit the device (or the host under offload), with the estimate and the limit,
/// before any model loads; warns when it comes close.
inline void check_memory(const ModelInfo& info, const ltxmps::ExecutionPlan& plan, const PlanFlags& flags,
                         const ltxmps::pipeline::MemoryRequest& request, const std::string& what, Log& log) {
  using namespace ltxmps::pipeline;
  if (flags.skip_memory_check) {
    log.line("--skip-memory-check: the request's memory is not estimated");
    return;
  }
  const auto estimate = estimate_request_memory(info.transformer, info.vae, info.text_encoder, plan, request);
  check_request_fits(estimate, plan,
                     c10::str(what, " of ", request.frames, " frames of ", request.width, "x", request.height));
  if (const auto limit = available_memory(plan))
    if (const auto warning = memory_warning(estimate, *limit)) log.diagnostic(*warning);
}

/// Loads the inspected folder (weights checked for NaN/Inf unless --skip-weight-check), or builds the embedded
/// default with a warning that `what` is not a real result.
inline ltxmps::pipeline::LtxModel load_model(const ModelInfo& info, const ltxmps::ExecutionPlan& plan,
                                             const PlanFlags& flags, const std::string& what, Log& log,
                                             const ltxmps::pipeline::LoadOptions& load = {}) {
  using namespace ltxmps::pipeline;
  if (!info.folder) {
    log.line("no --model-dir: using the embedded default model (a tiny LTX-Video built in memory)");
    log.line("the embedded default's weights are RANDOM: " + what);
    return make_embedded_default_model(plan);
  }
  const WeightCheckGuard weight_check(!flags.runtime.skip_weight_check);
  Activity loading("loading the model from " + info.folder->root.string());
  return load_ltx_model(*info.folder, plan, load, log.sink());
}

}  // namespace ltxmps::cli
