#pragma once
/// @file plan.hpp
/// @brief The execution plan: every device and precision decision for a run, with its reasons.

#include "ltxmps/attention.hpp"
#include "ltxmps/device.hpp"
#include "ltxmps/diagnostics.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/memory_budget.hpp"
#include "ltxmps/offload.hpp"
#include "ltxmps/precision.hpp"

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

namespace ltxmps {

/// @brief Which attention kernel the run uses, and why.
struct AttentionPlan {
  /// The kernel for the model's attention layers.
  AttentionKernel kernel = AttentionKernel::sdpa;
  /// Why.
  Diagnostic reason;
};

/// @brief How noise is drawn (Note [Noise from a CPU generator]).
struct NoisePlan {
  /// Device of the generator (always the CPU).
  c10::Device generator_device = c10::Device(c10::DeviceType::CPU);
  /// Dtype noise is drawn in before it is moved and cast (always float32).
  at::ScalarType draw_dtype = at::kFloat;
};

/// @brief When device memory is released (Note [Releasing device memory]).
struct MemoryPlan {
  /// Synchronize and empty the cache after text encoding, after decoding and when a component is dropped.
  bool release_after_heavy_ops = false;
};

/// @brief VAE execution options as requested (tiling and slicing are honoured on every device).
struct VaePlan {
  /// Spatial (and framewise) tiling.
  bool tiling = false;
  /// One batch item at a time.
  bool slicing = false;
  /// Convolution weights and activations channels-last (Note [VAE layout in the plan]).
  bool channels_last = false;
};

// Note [VAE layout in the plan]
// The VAE is a stack of 3-D convolutions with per-channel norms between them. On CUDA, cuDNN runs those convolutions
// as implicit GEMMs over channels-last data, and the norms, which reduce over the channels, read contiguous rows
// when the channels are the innermost dimension. With the weights stored channels-last the pipeline keeps the
// activations in that layout from the first convolution to the last (the shuffles of the up- and downsamplers
// included), and the norms (with their SiLU) and the convolutions' bias run through kernels that read the channel
// rows. Measured on an H200 against the channels-first layout (docs/benchmarks.md): a bf16 decode 1.70x faster, a
// tiled one 1.72x, the encodes 1.33-1.40x, every peak lower; a decode then took about 18 % less time again once the
// SiLU and the bias ran on the channel rows and the finiteness checks stopped copying the activations. The values
// differ by the convolution algorithms' own rounding, the norms' order of summation and the SiLU's approximate
// exponential. So on CUDA unless switched off. The CPU keeps channels-first (its convolutions are products over
// channels-first columns), and so does MPS, where the layout was never measured.

/// @brief Whether the VAE runs channels-last on `device` under `settings`, and why (Note [VAE layout in the plan]).
inline Diagnostic decide_vae_layout(const LoaderSettings& settings, const c10::Device& device, VaePlan& vae) {
  vae.channels_last = settings.vae_channels_last && device.is_cuda();
  if (vae.channels_last)
    return {Severity::info, "vae", "vae.channels_last",
            "VAE convolutions and norms on channels-last activations (cuDNN's channels-last 3-D convolutions, the "
            "norms over contiguous channel rows; Note [VAE layout in the plan])"};
  if (!settings.vae_channels_last)
    return {Severity::info, "vae", "vae.channels_first.requested",
            "VAE activations channels-first, as requested (vae_channels_last off)"};
  return {Severity::info, "vae", "vae.channels_first",
          std::string("VAE activations channels-first: channels-last is measured on CUDA only, this run is on ") +
              c10::DeviceTypeName(device.type(), true)};
}

// Note [CUDA graphs in the plan]
// Every step of a denoising loop runs the transformer forward on inputs of the same shapes, several hundred kernel
// launches. On CUDA the pipeline captures that forward into a CUDA graph at the second step and replays it at every
// later one: the same kernels on the same buffers, so the same bits, with one launch instead of one per op. Where
// the kernels are short (small models, small videos) the GPU no longer waits for the host between them and a step
// takes 2-3.6x less time; at the released models' sizes the host queues far ahead anyway and a replay gains under
// 1 % (docs/benchmarks.md) for the memory of one more cuBLAS workspace (tens of MiB). The pipeline library does the
// capture (ltxmps_pipeline/transformer_graph.hpp); the plan decides where it applies: on CUDA unless switched off,
// and not when the transformer's blocks are streamed (their copies are queued by the host between blocks). Off
// CUDA there are no graphs: MPS and the CPU run the forward op by op.

/// @brief Whether the denoising loop replays the transformer forward as a CUDA graph, and why.
struct GraphPlan {
  /// The denoising step's transformer forward is captured once and replayed (Note [CUDA graphs in the plan]).
  bool denoise_step = false;
  /// Why.
  Diagnostic reason;
};

/// @brief The CUDA graph decision for `settings` on `device` (before the weight plan, which may turn it off).
inline GraphPlan decide_graphs(const LoaderSettings& settings, const c10::Device& device) {
  GraphPlan g;
  g.reason.topic = "graphs";
  if (!device.is_cuda()) {
    g.reason.rule = "graphs.not_cuda";
    g.reason.message = "the denoising step runs op by op: CUDA graphs exist on CUDA only";
  } else if (!settings.cuda_graphs) {
    g.reason.rule = "graphs.off.requested";
    g.reason.message = "the denoising step runs op by op, as requested (cuda_graphs off)";
  } else {
    g.denoise_step = true;
    g.reason.rule = "graphs.denoise_step";
    g.reason.message = "the denoising step's transformer forward is captured into a CUDA graph at the second step and "
                       "replayed at every later one: one launch instead of one per op, the same bits (Note [CUDA "
                       "graphs in the plan])";
  }
  return g;
}

/// @brief Every decision for one run; `diagnostics` explains each of them in order.
struct ExecutionPlan {
  /// The settings the plan was resolved from.
  LoaderSettings settings;
  /// The machine the plan was resolved for (`describe(plan.machine)` prints it).
  Capabilities machine;
  /// The device every component runs on.
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  /// Dtypes per component.
  PrecisionPlan precision;
  /// CPU offload decision.
  OffloadDecision offload;
  /// Attention kernel.
  AttentionPlan attention;
  /// Noise generation.
  NoisePlan noise;
  /// Memory release.
  MemoryPlan memory;
  /// VAE options.
  VaePlan vae;
  /// CUDA graphs for the denoising step.
  GraphPlan graphs;
  /// Where each component's weights live under the memory budget; `weights.planned` is false until
  /// plan_weights() has seen the component sizes (after the model folder's configs are read).
  WeightPlan weights;
  /// The reasons for every decision above, in the order they were taken.
  std::vector<Diagnostic> diagnostics;

  /// Number of warnings (requests that were changed or ignored).
  size_t warning_count() const {
    size_t n = 0;
    for (const auto& d : diagnostics) n += d.severity == Severity::warning;
    return n;
  }
};

// Note [Attention upcast by device]
// The plan picks the float32-softmax kernel (Note [Softmax upcast]) where half-precision softmax is not
// trusted: MPS in fp16/bf16 (ComfyUI forces fp16 -> fp32 attention upcast on macOS >= 14.5 for black
// images; the Apple Silicon port upcasts for stability at long sequence lengths; an open ComfyUI report
// shows black LTX video in bf16 on MPS). On CUDA and the CPU, SDPA's fused kernels accumulate the softmax
// in float32 already, so SDPA stays. `LoaderSettings::upcast_attention` overrides either way.

/// @brief Resolves `settings` on a machine with `caps` into a plan. Throws `ltxmps::Error` when an
///        explicit device request cannot be met.
inline ExecutionPlan resolve(const LoaderSettings& settings, const Capabilities& caps) {
  ExecutionPlan plan;
  plan.settings = settings;
  plan.machine = caps;
  plan.diagnostics.reserve(8);

  auto device = resolve_device(DeviceRequest::parse(settings.device), caps);
  plan.device = device.device;
  plan.diagnostics.push_back(std::move(device.reason));
  check_weight_requests(settings, plan.device);

  plan.precision = resolve_precision(settings, plan.device, caps, plan.diagnostics);

  plan.offload = decide_offload(settings.cpu_offload, plan.device);
  plan.diagnostics.push_back(plan.offload.reason);

  auto& att = plan.attention;
  att.reason.topic = "attention";
  const bool half = plan.precision.resolved == Precision::fp16 || plan.precision.resolved == Precision::bf16;
  if (settings.upcast_attention.has_value()) {
    att.kernel = *settings.upcast_attention ? AttentionKernel::upcast : AttentionKernel::sdpa;
    att.reason.rule = *settings.upcast_attention ? "attention.upcast.requested" : "attention.sdpa.requested";
    att.reason.message = *settings.upcast_attention
                             ? "float32 softmax attention, as requested (upcast_attention on)"
                             : "SDPA, as requested (upcast_attention off)";
    if (!*settings.upcast_attention && plan.device.is_mps() && half) {
      att.reason.severity = Severity::warning;
      att.reason.message += "; half-precision softmax on MPS can overflow (Note [Attention upcast by device])";
    }
  } else if (plan.device.is_mps() && half) {
    att.kernel = AttentionKernel::upcast;
    att.reason.rule = "attention.upcast.mps_half";
    att.reason.message = "float32 softmax attention: half precision on MPS (Note [Attention upcast by device])";
  } else {
    att.kernel = AttentionKernel::sdpa;
    att.reason.rule = "attention.sdpa";
    att.reason.message = "scaled_dot_product_attention (its kernels keep the softmax in float32 here)";
  }
  plan.diagnostics.push_back(att.reason);

  plan.diagnostics.push_back(Diagnostic{Severity::info, "noise", "noise.cpu_generator",
                                        "noise drawn in float32 from a CPU generator, then moved to the device "
                                        "(one seed, same noise on every device; Note [Noise from a CPU generator])"});

  plan.memory.release_after_heavy_ops = !plan.device.is_cpu();
  plan.diagnostics.push_back(
      plan.memory.release_after_heavy_ops
          ? Diagnostic{Severity::info, "memory", "memory.release",
                       "synchronize and empty the " + std::string(c10::DeviceTypeName(plan.device.type(), true)) +
                           " cache after encoding, after decoding and when a component is dropped"}
          : Diagnostic{Severity::info, "memory", "memory.cpu", "CPU memory is returned when tensors die; no cache"});

  plan.vae.tiling = settings.vae_tiling;
  plan.vae.slicing = settings.vae_slicing;
  plan.diagnostics.push_back(decide_vae_layout(settings, plan.device, plan.vae));
  plan.graphs = decide_graphs(settings, plan.device);
  plan.diagnostics.push_back(plan.graphs.reason);
  return plan;
}

/// @brief Resolves `settings` on this machine (cached capabilities).
inline ExecutionPlan resolve(const LoaderSettings& settings) { return resolve(settings, current_capabilities()); }

/// @brief Puts a weight plan (decide_weights(), or one kept from an earlier plan_weights() of the same plan) into
///        `plan`, with its offload: where the budget switched model-level CPU offload on, the plan's offload decision
///        becomes that (home the CPU, execution the plan's device), so every stage's offload scope follows it.
inline void apply_weight_plan(ExecutionPlan& plan, const WeightPlan& weights) {
  plan.weights = weights;
  if (!weights.offload_by_budget || plan.offload.enabled) return;
  plan.offload = decide_offload(true, plan.device);
  LTXMPS_CHECK(plan.offload.enabled, "apply_weight_plan: the weight plan switches model-level CPU offload on, which ",
               plan.device, " does not take (Note [CPU offload])");
  plan.offload.reason = weights.offload_reason;
}

/// @brief The second step of planning, once the component sizes are known (the model folder's configs have been
///        read): decides where each component's weights live under the memory budget (Note [Weight budget]) and
///        appends the reasons; model-level CPU offload is switched on where the budget says so (apply_weight_plan()),
///        the rest of the plan is left as it is. Throws ltxmps::Error when the plan's weights were planned already.
inline void plan_weights(ExecutionPlan& plan, const WeightSizes& sizes) {
  LTXMPS_CHECK(!plan.weights.planned, "plan_weights: the plan's weights were planned already");
  const auto budget = memory_budget(plan.settings, plan.device, plan.machine);
  apply_weight_plan(plan, decide_weights(plan.settings, plan.device, sizes, budget, plan.offload.enabled));
  if (plan.device.is_mps())
    plan.diagnostics.push_back(
        Diagnostic{Severity::info, "weights", "weights.mps.unified",
                   "MPS: the memory is unified, so the weights stay where the GPU reads them; streaming them from host "
                   "memory would copy within the same RAM, and MPS has no float8 dtype for FP8 storage"});
  if (plan.weights.offload_by_budget) plan.diagnostics.push_back(plan.weights.offload_reason);
  plan.diagnostics.push_back(plan.weights.transformer.reason);
  plan.diagnostics.push_back(plan.weights.text_encoder.reason);
  plan.diagnostics.push_back(plan.weights.vae.reason);
  if (plan.graphs.denoise_step && is_streamed(plan.weights.transformer.mode)) {
    plan.graphs.denoise_step = false;
    plan.graphs.reason = {Severity::info, "graphs", "graphs.off.streamed",
                          "the denoising step runs op by op: the transformer's blocks are streamed, and their copies "
                          "are queued by the host between blocks (Note [CUDA graphs in the plan])"};
    plan.diagnostics.push_back(plan.graphs.reason);
  }
}

/// @brief Whether the transformer's block linears are stored in FP8: as requested (the precision plan, FP8 matmul
///        included) or as the memory budget chose under weight_storage=auto (the weight plan). Note [Weight storage].
inline bool transformer_weights_fp8(const ExecutionPlan& plan) {
  return plan.precision.transformer_weights == WeightStorage::fp8 ||
         (plan.weights.planned && is_fp8(plan.weights.transformer.mode));
}

/// @brief The short name of a dtype: "float32", "float16", "bfloat16".
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    default: return c10::toString(t);
  }
}

/// @brief The plan as human-readable text, one decision per line, reasons last.
inline std::string to_text(const ExecutionPlan& plan) {
  std::ostringstream os;
  auto component = [&](const char* name, const ComponentPrecision& c) {
    os << "  " << name << ": storage " << dtype_name(c.storage) << ", compute " << dtype_name(c.compute);
    if (!c.keep_in_fp32_modules.empty()) {
      os << ", float32 modules:";
      for (const auto& m : c.keep_in_fp32_modules) os << " " << m;
    }
    os << "\n";
  };
  os << "machine:   " << describe(plan.machine) << "\n";
  os << "device:    " << plan.device << " (requested '" << plan.settings.device << "')\n";
  os << "precision: " << to_string(plan.precision.resolved) << " (requested " << to_string(plan.precision.requested)
     << ")\n";
  component("transformer ", plan.precision.transformer);
  os << "    block linears: " << (transformer_weights_fp8(plan) ? "fp8" : "compute") << " storage, "
     << (plan.precision.fp8_matmul ? "fp8 matmul" : "compute-dtype matmul") << " (Note [Weight storage])\n";
  if (plan.precision.fp8_attention) os << "    self-attention: fp8 (Note [FP8 attention is opt-in])\n";
  component("text encoder", plan.precision.text_encoder);
  component("vae         ", plan.precision.vae);
  os << "  latents     : " << dtype_name(plan.precision.latents) << "\n";
  os << "attention: " << to_string(plan.attention.kernel) << "\n";
  os << "offload:   " << (plan.offload.enabled ? "model-level, home " + plan.offload.home.str() : std::string("off"))
     << (plan.weights.offload_by_budget ? " (switched on by the memory budget)" : "") << "\n";
  os << "noise:     " << dtype_name(plan.noise.draw_dtype) << " on a " << plan.noise.generator_device
     << " generator, moved to " << plan.device << "\n";
  os << "memory:    " << (plan.memory.release_after_heavy_ops ? "release after heavy stages" : "no cache to release")
     << "\n";
  os << "vae:       tiling " << (plan.vae.tiling ? "on" : "off") << ", slicing " << (plan.vae.slicing ? "on" : "off")
     << ", " << (plan.vae.channels_last ? "channels-last" : "channels-first") << "\n";
  os << "graphs:    " << (plan.graphs.denoise_step ? "the denoising step's transformer forward as a CUDA graph" : "off")
     << "\n";
  if (plan.weights.planned) {
    const auto& w = plan.weights;
    os << "weights:   budget " << (w.budget > 0 ? describe_bytes(w.budget) + " (" + w.budget_source + ")" : "unknown")
       << ", peak " << describe_bytes(w.peak_bytes) << " (" << w.peak_phase << ")" << (w.fits ? "" : ", OVER BUDGET")
       << "\n";
    os << "  transformer : " << to_string(w.transformer.mode);
    if (is_streamed(w.transformer.mode))
      os << ", " << w.transformer.blocks_ahead << " blocks ahead, " << w.transformer.ring_blocks << " block buffers";
    os << ", " << describe_bytes(w.transformer.device_bytes) << " on the device\n";
    os << "  text encoder: " << to_string(w.text_encoder.mode) << ", " << describe_bytes(w.text_encoder.device_bytes)
       << "\n";
    os << "  vae         : " << to_string(w.vae.mode) << ", " << describe_bytes(w.vae.device_bytes) << "\n";
  }
  os << "reasons:\n";
  for (const auto& d : plan.diagnostics)
    os << "  [" << to_string(d.severity) << "] " << d.topic << " (" << d.rule << "): " << d.message << "\n";
  return os.str();
}

namespace detail {

inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (ch < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

inline std::string json_component(const ComponentPrecision& c) {
  std::string out = "{\"storage\": " + json_string(dtype_name(c.storage)) +
                    ", \"compute\": " + json_string(dtype_name(c.compute)) + ", \"keep_in_fp32_modules\": [";
  for (size_t i = 0; i < c.keep_in_fp32_modules.size(); ++i)
    out += (i ? ", " : "") + json_string(c.keep_in_fp32_modules[i]);
  return out + "]}";
}

inline const char* json_bool(bool b) { return b ? "true" : "false"; }

inline std::string json_weights(const WeightPlan& w) {
  if (!w.planned) return "null";
  auto component = [](const ComponentWeightPlan& c) {
    return "{\"mode\": " + json_string(to_string(c.mode)) + ", \"device_bytes\": " + std::to_string(c.device_bytes);
  };
  return "{\"budget\": " + std::to_string(w.budget) + ", \"budget_source\": " + json_string(w.budget_source) +
         ", \"peak_bytes\": " + std::to_string(w.peak_bytes) + ", \"peak_phase\": " + json_string(w.peak_phase) +
         ", \"fits\": " + json_bool(w.fits) + ", \"offload\": " + json_bool(w.offload) +
         ", \"offload_by_budget\": " + json_bool(w.offload_by_budget) +
         ", \"transformer\": " + component(w.transformer) + ", \"blocks_ahead\": " +
         std::to_string(w.transformer.blocks_ahead) + ", \"ring_blocks\": " + std::to_string(w.transformer.ring_blocks) +
         "}, \"text_encoder\": " + component(w.text_encoder) + "}, \"vae\": " + component(w.vae) + "}}";
}

}  // namespace detail

/// @brief The plan as a JSON object (stable keys; for tools and logs).
inline std::string to_json(const ExecutionPlan& plan) {
  using detail::json_bool;
  using detail::json_string;
  std::ostringstream os;
  const auto& s = plan.settings;
  os << "{\"machine\": " << json_string(describe(plan.machine)) << ", \"settings\": {\"device\": " << json_string(s.device)
     << ", \"precision\": " << json_string(to_string(s.precision)) << ", \"vae_float32\": " << json_bool(s.vae_float32)
     << ", \"cpu_offload\": " << json_bool(s.cpu_offload) << ", \"vae_tiling\": " << json_bool(s.vae_tiling)
     << ", \"vae_slicing\": " << json_bool(s.vae_slicing) << ", \"upcast_attention\": "
     << (s.upcast_attention ? json_bool(*s.upcast_attention) : "null") << ", \"mps_bf16\": "
     << json_string(s.mps_bf16 == MpsBf16Policy::allow ? "allow" : "downgrade")
     << ", \"fp8_matmul\": " << json_bool(s.fp8_matmul) << ", \"fp8_attention\": " << json_bool(s.fp8_attention)
     << ", \"weight_storage\": " << json_string(to_string(s.weight_storage))
     << ", \"stream_weights\": " << json_string(to_string(s.stream_weights))
     << ", \"max_device_memory\": " << s.max_device_memory << ", \"cuda_graphs\": " << json_bool(s.cuda_graphs)
     << ", \"vae_channels_last\": " << json_bool(s.vae_channels_last) << "}"
     << ", \"device\": " << json_string(plan.device.str())
     << ", \"precision\": {\"requested\": " << json_string(to_string(plan.precision.requested))
     << ", \"resolved\": " << json_string(to_string(plan.precision.resolved))
     << ", \"transformer\": " << detail::json_component(plan.precision.transformer)
     << ", \"text_encoder\": " << detail::json_component(plan.precision.text_encoder)
     << ", \"vae\": " << detail::json_component(plan.precision.vae)
     << ", \"latents\": " << json_string(dtype_name(plan.precision.latents))
     << ", \"transformer_weights\": " << json_string(to_string(plan.precision.transformer_weights))
     << ", \"fp8_matmul\": " << json_bool(plan.precision.fp8_matmul)
     << ", \"fp8_attention\": " << json_bool(plan.precision.fp8_attention) << "}"
     << ", \"attention\": " << json_string(to_string(plan.attention.kernel))
     << ", \"offload\": {\"enabled\": " << json_bool(plan.offload.enabled)
     << ", \"home\": " << json_string(plan.offload.home.str())
     << ", \"execution\": " << json_string(plan.offload.execution.str()) << "}"
     << ", \"noise\": {\"generator_device\": " << json_string(plan.noise.generator_device.str())
     << ", \"draw_dtype\": " << json_string(dtype_name(plan.noise.draw_dtype)) << "}"
     << ", \"memory\": {\"release_after_heavy_ops\": " << json_bool(plan.memory.release_after_heavy_ops) << "}"
     << ", \"vae\": {\"tiling\": " << json_bool(plan.vae.tiling) << ", \"slicing\": " << json_bool(plan.vae.slicing)
     << ", \"channels_last\": " << json_bool(plan.vae.channels_last)
     << "}, \"graphs\": {\"denoise_step\": " << json_bool(plan.graphs.denoise_step)
     << "}, \"weights\": " << detail::json_weights(plan.weights) << ", \"diagnostics\": [";
  for (size_t i = 0; i < plan.diagnostics.size(); ++i) {
    const auto& d = plan.diagnostics[i];
    os << (i ? ", " : "") << "{\"severity\": " << json_string(to_string(d.severity))
       << ", \"topic\": " << json_string(std::string(d.topic)) << ", \"rule\": " << json_string(std::string(d.rule))
       << ", \"message\": " << json_string(d.message) << "}";
  }
  os << "]}";
  return os.str();
}

}  // namespace ltxmps
