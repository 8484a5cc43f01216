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
#include "ltxmps_pipeline/released_configs.hpp"
#include "ltxmps_pipeline/video_io.hpp"
#include "ltxmps_pipeline/weight_plan.hpp"

#include "ltxmps_kernels/fused.hpp"

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
  bool fp8_matmul = false;               ///< --fp8-matmul
  bool fp8_attention = false;            ///< --fp8-attention
  std::string weight_storage = "auto";   ///< --weight-storage
  std::string max_gpu_memory = "auto";   ///< --max-gpu-memory
  std::string stream_weights = "auto";   ///< --stream-weights
  bool cuda_graphs = true;               ///< --cuda-graphs / --no-cuda-graphs
  bool vae_channels_last = true;         ///< --vae-channels-last / --no-vae-channels-last
};

inline void add_plan_flags(CLI::App* cmd, PlanFlags& f) {
  add_runtime_options(cmd, f.runtime);
  cmd->add_flag("--cpu-offload", f.cpu_offload,
                "keep components on the CPU and move each to the GPU while it runs (CUDA/XPU; ignored elsewhere)");
  cmd->add_flag("--vae-float32,!--no-vae-float32", f.vae_float32,
                "run the VAE in float32 whatever --precision says (default on; --no-vae-float32 follows --precision)");
  cmd->add_flag("--fp8-matmul", f.fp8_matmul,
                "multiply the transformer's block linears in FP8 (e4m3, row-wise scales; CUDA sm_89/sm_90+, bf16; "
                "slightly changes the results)");
  cmd->add_flag("--fp8-attention", f.fp8_attention,
                "run the transformer's self-attention with FP8 operands (cuDNN; CUDA sm_90+, bf16/fp16; changes the "
                "results by a few per cent)");
  cmd->add_flag("--cuda-graphs,!--no-cuda-graphs", f.cuda_graphs,
                "replay the denoising step's transformer forward as one CUDA graph (default on, CUDA only; the same "
                "results; --no-cuda-graphs runs every step op by op)");
  cmd->add_flag("--vae-channels-last,!--no-vae-channels-last", f.vae_channels_last,
                "run the VAE's convolutions on channels-last activations (default on, CUDA only; the same results "
                "up to the convolutions' rounding; --no-vae-channels-last keeps channels-first)");
  cmd->add_option("--weight-storage", f.weight_storage,
                  "transformer block weights: auto (the memory budget decides), compute (the compute dtype), fp8 "
                  "(e4m3 with per-channel scales, half the memory; not on MPS)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "compute", "fp8"}));
  cmd->add_option("--max-gpu-memory", f.max_gpu_memory,
                  "device memory budget the weights are planned for (Note [Weight budget]): 8GiB, 8 GiB, 8GB, 512MiB, "
                  "a number of bytes, or auto (what the device reports free)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& text) {
            try {
              ltxmps::parse_memory_size(text, "--max-gpu-memory");
            } catch (const ltxmps::Error& e) {
              return std::string(e.what());
            }
            return std::string();
          },
          "SIZE"));
  cmd->add_option("--stream-weights", f.stream_weights,
                  "stream the transformer's blocks from pinned host memory a few blocks ahead: auto (the memory budget "
                  "decides), on (CUDA only), off")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
}

inline ltxmps::LoaderSettings loader_settings(const PlanFlags& f) {
  ltxmps::LoaderSettings s;
  s.device = f.runtime.device;
  s.precision = ltxmps::parse_precision(f.runtime.precision);
  s.cpu_offload = f.cpu_offload;
  s.vae_float32 = f.vae_float32;
  s.vae_tiling = f.vae_tiling;
  s.vae_slicing = f.vae_slicing;
  s.fp8_matmul = f.fp8_matmul;
  s.fp8_attention = f.fp8_attention;
  s.cuda_graphs = f.cuda_graphs;
  s.vae_channels_last = f.vae_channels_last;
  s.weight_storage = ltxmps::parse_weight_storage(f.weight_storage);
  s.max_device_memory = ltxmps::parse_memory_size(f.max_gpu_memory, "--max-gpu-memory");
  s.stream_weights = ltxmps::parse_stream_weights(f.stream_weights, "--stream-weights");
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


/// The transformer's kernels under `plan` (ltxmps::kernels::kernel_report), as plan text lines.
inline std::string kernels_text(const ltxmps::ExecutionPlan& plan) {
  std::string text = "kernels:\n";
  for (const auto& d : ltxmps::kernels::kernel_report(plan.device, plan.precision.transformer.compute))
    text += "  " + d.message + "\n";
  return text;
}

/// Prints the plan as log lines.
inline void log_plan(Log& log, const ltxmps::ExecutionPlan& plan) {
  log.line("execution plan:");
  std::istringstream text(ltxmps::to_text(plan) + kernels_text(plan));
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

/// The LTX-Video 13B shapes (0.9.7 / 0.9.8: 48 blocks of 32 heads x 128, the 0.9.5 VAE, T5-XXL): what `plan` plans the
/// weights for without --model-dir, the size at which the memory budget decides something (the embedded default is
/// tiny and always resident).
inline ModelInfo ltx_13b_shapes() {
  using namespace ltxmps::pipeline;
  ModelInfo info;
  info.transformer = ltx_13b_transformer_config();
  info.vae = ltx_097_vae_config();
  info.text_encoder = t5_xxl_config();
  info.rules = fit_rules(info.vae, info.transformer);
  return info;
}

/// The machines of `plan --simulate cuda-24gb | cuda-8gb | mac-64gb`: an RTX 4090-class card (Ada, sm_89, 24 GiB),
/// an 8 GiB Ampere card (sm_86), a 64 GB Mac whose GPU may use about three quarters of it (Metal's recommended
/// working set).
inline ltxmps::Capabilities memory_preset(const std::string& name) {
  constexpr uint64_t GiB = uint64_t{1} << 30;
  if (name == "cuda-24gb") return ltxmps::Capabilities::cuda(1, 8, 9, 24 * GiB);
  if (name == "cuda-8gb") return ltxmps::Capabilities::cuda(1, 8, 6, 8 * GiB);
  if (name == "mac-64gb") return ltxmps::Capabilities::mps(15, 0, 48 * GiB);
  throw UsageError("--simulate " + name + ": not one of cpu, cuda, mps, mps13, cuda-24gb, cuda-8gb, mac-64gb");
}

/// Declares `--skip-memory-check` (the request's memory estimate is checked against the device before loading
/// unless it is given).
inline void add_memory_check_option(CLI::App* cmd, PlanFlags& f) {
  cmd->add_flag("--skip-memory-check", f.skip_memory_check,
                "do not refuse a request whose memory estimate exceeds the device's (or host's) free memory; the run "
                "may then stop with an out-of-memory error");
}

/// `plan` with the weights planned for `request` under the memory budget (Note [Weight budget]); the decisions are
/// logged.
inline ltxmps::ExecutionPlan plan_weights_for(const ModelInfo& info, const ltxmps::ExecutionPlan& plan,
                                              const ltxmps::pipeline::MemoryRequest& request, Log& log) {
  auto planned = plan;
  ltxmps::pipeline::plan_model_weights(planned, info.transformer, info.vae, info.text_encoder, request);
  for (size_t i = plan.diagnostics.size(); i < planned.diagnostics.size(); ++i) log.diagnostic(planned.diagnostics[i]);
  return planned;
}

/// Plans the weights for the request, then refuses a request that cannot fit the device (or the host under offload
/// or streaming), with the estimate and the limit, before any model loads; warns when it comes close. Returns the
/// plan the job runs with: its weights placed and, where the budget switched it on, model-level CPU offload.
[[nodiscard]] inline ltxmps::ExecutionPlan check_memory(const ModelInfo& info, const ltxmps::ExecutionPlan& job,
                                                        const PlanFlags& flags,
                                                        const ltxmps::pipeline::MemoryRequest& request,
                                                        const std::string& what, Log& log) {
  using namespace ltxmps::pipeline;
  if (flags.skip_memory_check) {
    // The weights are still placed (an explicit --stream-weights or --weight-storage must hold), but against the
    // default request's activations: the user asked for this request not to be estimated at all.
    auto plan = plan_weights_for(info, job, MemoryRequest{}, log);
    log.line("--skip-memory-check: the request's memory is not estimated (weights placed for the default request)");
    return plan;
  }
  auto plan = plan_weights_for(info, job, request, log);
  const auto estimate = estimate_request_memory(info.transformer, info.vae, info.text_encoder, plan, request);
  check_request_fits(estimate, plan,
                     c10::str(what, " of ", request.frames, " frames of ", request.width, "x", request.height));
  if (const auto limit = available_memory(plan))
    if (const auto warning = memory_warning(estimate, *limit)) log.diagnostic(*warning);
  return plan;
}

/// Loads the inspected folder (weights checked for NaN/Inf unless --skip-weight-check), or builds the embedded
/// default with a warning that `what` is not a real result.
inline ltxmps::pipeline::LtxModel load_model(const ModelInfo& info, const ltxmps::ExecutionPlan& job,
                                             const PlanFlags& flags, const std::string& what, Log& log,
                                             const ltxmps::pipeline::LoadOptions& load = {}) {
  using namespace ltxmps::pipeline;
  const auto& plan = job;  // with the weights where check_memory() planned them, when it ran
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
