#pragma once
/// @file precision.hpp
/// @brief Loader settings and the dtype of each model component on a resolved device.

#include "ltxmps/device.hpp"
#include "ltxmps/diagnostics.hpp"
#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

namespace ltxmps {

/// @brief Requested floating-point precision of the model weights and activations.
enum class Precision {
  /// Let the plan choose: bf16 on CUDA sm >= 8.0 and XPU, fp16 on older CUDA and on MPS, fp32 on the CPU.
  automatic,
  /// float32.
  fp32,
  /// float16.
  fp16,
  /// bfloat16.
  bf16,
};

/// @brief The name of a precision ("auto", "fp32", "fp16", "bf16").
inline const char* to_string(Precision p) noexcept {
  switch (p) {
    case Precision::automatic: return "auto";
    case Precision::fp32: return "fp32";
    case Precision::fp16: return "fp16";
    case Precision::bf16: return "bf16";
  }
  return "?";
}

/// @brief Parses "auto", "fp32"/"float32", "fp16"/"float16"/"half", "bf16"/"bfloat16".
inline Precision parse_precision(const std::string& text) {
  if (text == "auto") return Precision::automatic;
  if (text == "fp32" || text == "float32") return Precision::fp32;
  if (text == "fp16" || text == "float16" || text == "half") return Precision::fp16;
  if (text == "bf16" || text == "bfloat16") return Precision::bf16;
  throw Error("precision '" + text + "' is not one of auto, fp32, fp16, bf16");
}

/// @brief The ATen dtype of a concrete precision (automatic is an error: resolve it first).
inline at::ScalarType to_scalar_type(Precision p) {
  switch (p) {
    case Precision::fp32: return at::kFloat;
    case Precision::fp16: return at::kHalf;
    case Precision::bf16: return at::kBFloat16;
    case Precision::automatic: break;
  }
  throw Error("precision 'auto' has no dtype before it is resolved against a device");
}

/// @brief What to do when bf16 is requested on MPS.
enum class MpsBf16Policy {
  /// Use fp16 instead (the default; see Note [bf16 on MPS]).
  downgrade,
  /// Keep bf16 where the OS supports it (macOS >= 14); on older macOS it still becomes fp16.
  allow,
};

/// @brief How the transformer's weights are kept in memory (Note [Weight storage]).
enum class WeightStorage {
  /// The memory budget decides (the compute dtype unless it does not fit).
  automatic,
  /// In the compute dtype (bf16, fp16 or fp32).
  compute,
  /// FP8 e4m3 with one float32 scale per output channel, dequantized to the compute dtype just before use.
  fp8,
};

/// @brief The name of a weight storage ("auto", "compute", "fp8").
inline const char* to_string(WeightStorage w) noexcept {
  switch (w) {
    case WeightStorage::automatic: return "auto";
    case WeightStorage::compute: return "compute";
    case WeightStorage::fp8: return "fp8";
  }
  return "?";
}

/// @brief Parses "auto", "compute", "fp8".
inline WeightStorage parse_weight_storage(const std::string& text) {
  if (text == "auto") return WeightStorage::automatic;
  if (text == "compute") return WeightStorage::compute;
  if (text == "fp8") return WeightStorage::fp8;
  throw Error("weight storage '" + text + "' is not one of auto, compute, fp8");
}

/// @brief Whether FP8 weight storage works on `device`: everywhere but MPS, which has no float8 dtype.
inline bool fp8_storage_supported(const c10::Device& device) noexcept { return !device.is_mps(); }

/// @brief Whether the transformer's blocks are streamed from pinned host memory (Note [Streamed weights]).
enum class StreamWeights {
  /// The memory budget decides.
  automatic,
  /// Always stream (CUDA only).
  on,
  /// Never stream.
  off,
};

/// @brief The settings a user gives a loader, as the ComfyUI LTX-Video nodes expose them.
struct LoaderSettings {
  /// Device request: "auto", "cpu", "cuda", "cuda:N", "mps", "xpu" (see DeviceRequest::parse).
  std::string device = "auto";
  /// Precision of the transformer and the text encoder (and of the VAE when vae_float32 is false).
  Precision precision = Precision::automatic;
  /// Run the VAE in float32 whatever `precision` says (the default).
  bool vae_float32 = true;
  /// Keep components on the CPU and move each to the GPU only while it runs (CUDA/XPU only).
  bool cpu_offload = false;
  /// Decode/encode the VAE in overlapping spatial tiles.
  bool vae_tiling = false;
  /// Decode/encode the VAE one batch item at a time.
  bool vae_slicing = false;
  /// Force the float32-softmax attention path on (true) or off (false); empty: the plan decides.
  std::optional<bool> upcast_attention;
  /// What bf16 on MPS becomes.
  MpsBf16Policy mps_bf16 = MpsBf16Policy::downgrade;
  /// Row-wise scaled FP8 (e4m3) matrix multiplies for the transformer's linear layers (sm_89 / sm_90 and newer).
  bool fp8_matmul = false;
  /// FP8 (e4m3) operands for the transformer's self-attention, cuDNN's FP8 flash attention (sm_90 and newer;
  /// Note [FP8 attention] in ltxmps_kernels/fp8_attention.hpp). Never chosen automatically.
  bool fp8_attention = false;
  /// How the transformer's weights are stored.
  WeightStorage weight_storage = WeightStorage::automatic;
  /// Whether the transformer's blocks are streamed from pinned host memory.
  StreamWeights stream_weights = StreamWeights::automatic;
  /// Device memory budget in bytes; 0 = what the device reports free.
  uint64_t max_device_memory = 0;
  /// Replay the denoising step's transformer forward as one CUDA graph (CUDA only; Note [CUDA graphs in the plan]).
  bool cuda_graphs = true;
  /// Run the VAE's convolutions on channels-last activations where that was measured faster (CUDA only; Note [VAE
  /// layout in the plan]).
  bool vae_channels_last = true;
};

/// @brief The dtypes of one model component.
struct ComponentPrecision {
  /// Dtype the weights are loaded in.
  at::ScalarType storage = at::kFloat;
  /// Dtype the activations run in.
  at::ScalarType compute = at::kFloat;
  /// Submodules (checkpoint name fragments) whose weights stay float32 whatever `storage` says.
  std::vector<std::string> keep_in_fp32_modules;
};

/// @brief The dtypes of every component of an LTX-Video pipeline.
struct PrecisionPlan {
  /// Precision the user asked for.
  Precision requested = Precision::automatic;
  /// Precision after the device rules (never automatic).
  Precision resolved = Precision::fp32;
  /// The video transformer.
  ComponentPrecision transformer;
  /// The T5 text encoder.
  ComponentPrecision text_encoder;
  /// The causal video VAE.
  ComponentPrecision vae;
  /// Dtype of the latents in the denoising loop (float32, as every diffusers LTX pipeline).
  at::ScalarType latents = at::kFloat;
  /// How the transformer's block linears keep their weights: compute or fp8 (Note [Weight storage]); the memory
  /// budget may turn compute into fp8 when weight_storage is automatic.
  WeightStorage transformer_weights = WeightStorage::compute;
  /// Row-wise scaled FP8 matmuls in the transformer's blocks (implies transformer_weights == fp8).
  bool fp8_matmul = false;
  /// The transformer's self-attention with per-tensor FP8 operands (LoaderSettings::fp8_attention).
  bool fp8_attention = false;
};

// Note [bf16 on MPS]
// The Apple Silicon port of LTX-Video object removal found that bf16 passes basic tests on MPS but
// produces visual artifacts (hallucinations, corrupted inpainting) from rounding errors accumulated
// over the 30+ step denoising loop; fp16 does not. MPS has no bf16 at all before macOS 14 (PyTorch:
// "MPS BFloat16 is only supported on MacOS 14 or newer"). So bf16 on MPS becomes fp16, always on
// macOS < 14 and by default on 14+, where `MpsBf16Policy::allow` keeps it (ComfyUI allows bf16 there).
//
// Note [Half precision on the CPU]
// A half-precision request on the CPU is honoured: LibTorch has CPU kernels for bf16 and fp16 matmul,
// convolution and SDPA, and parity work needs them. It is usually slower than fp32 (ComfyUI: "works
// but extremely slow") except on CPUs with AVX512-BF16/AMX, so `Precision::automatic` picks fp32 on
// the CPU and an explicit half request gets a warning diagnostic.
//
// Note [VAE in float32]
// LTX-Video's causal Conv3d stacks give NaN in half precision on MPS (seed port: "black frames"), and
// ComfyUI's LTXV VAE declares working dtypes {bf16, fp32}, never fp16. `vae_float32` (default true)
// keeps the VAE in float32; without it the VAE follows the model precision, with a warning for fp16.
//
// Note [T5 wo in float32]
// transformers keeps T5's feed-forward output projections (`wo`) in float32 when a T5 is loaded in fp16
// (`T5PreTrainedModel._keep_in_fp32_modules = ["wo"]`) because fp16 overflows there; the residual stream
// then becomes float32 from block 0's feed-forward on. Since transformers 4.4x this applies to fp16 only
// (modeling_utils: "`_keep_in_fp32_modules` will upcast to fp32 only if the requested dtype is fp16"); a bf16
// T5 is bf16 throughout, `wo` included. Parity with transformers needs the same rule.

namespace detail {

inline void note(std::vector<Diagnostic>& out, Severity severity, const char* topic, const char* rule,
                 std::string message) {
  out.push_back(Diagnostic{severity, topic, rule, std::move(message)});
}

inline Precision automatic_precision(const c10::Device& device, const Capabilities& caps,
                                     std::vector<Diagnostic>& out) {
  switch (device.type()) {
    case c10::DeviceType::CUDA: {
      const auto* info = cuda_info(caps, device);
      if (info == nullptr || !info->capability_known()) {
        note(out, Severity::info, "precision", "precision.auto.cuda_unknown_capability",
             "auto: CUDA compute capability unknown (LibTorch headers without CUDA); choosing bf16");
        return Precision::bf16;
      }
      if (info->supports_bf16()) {
        note(out, Severity::info, "precision", "precision.auto.cuda_bf16",
             "auto: bf16, the native precision of LTX-Video, on a CUDA device with compute capability >= 8.0");
        return Precision::bf16;
      }
      if (info->supports_fp16()) {
        note(out, Severity::info, "precision", "precision.auto.cuda_fp16",
             "auto: fp16 on a CUDA device without native bf16 (compute capability < 8.0)");
        return Precision::fp16;
      }
      note(out, Severity::info, "precision", "precision.auto.cuda_fp32",
           "auto: fp32 on a CUDA device with compute capability < 6.0 (no fast half precision)");
      return Precision::fp32;
    }
    case c10::DeviceType::MPS:
      note(out, Severity::info, "precision", "precision.auto.mps_fp16",
           "auto: fp16 on MPS (bf16 accumulates visible error over the denoising loop; Note [bf16 on MPS])");
      return Precision::fp16;
    case c10::DeviceType::XPU:
      note(out, Severity::info, "precision", "precision.auto.xpu_bf16", "auto: bf16 on XPU");
      return Precision::bf16;
    default:
      note(out, Severity::info, "precision", "precision.auto.cpu_fp32",
           "auto: fp32 on the CPU (half precision is slow there; Note [Half precision on the CPU])");
      return Precision::fp32;
  }
}

inline Precision apply_device_rules(Precision p, const LoaderSettings& settings, const c10::Device& device,
                                    const Capabilities& caps, std::vector<Diagnostic>& out) {
  if (device.is_mps() && p == Precision::bf16) {
    const bool os_has_bf16 = caps.macos_version && caps.macos_version->major >= 14;
    if (settings.mps_bf16 == MpsBf16Policy::allow && os_has_bf16) {
      note(out, Severity::warning, "precision", "precision.mps.bf16_allowed",
           "bf16 kept on MPS as requested (mps_bf16=allow, macOS >= 14); expect artifacts over long "
           "denoising loops (Note [bf16 on MPS])");
      return p;
    }
    if (!os_has_bf16) {
      note(out, Severity::warning, "precision", "precision.mps.bf16_unsupported_os",
           "bf16 -> fp16: MPS has no bf16 before macOS 14 (this machine reports " +
               (caps.macos_version ? std::to_string(caps.macos_version->major) + "." +
                                         std::to_string(caps.macos_version->minor)
                                   : std::string("an unknown version")) +
               ")");
    } else {
      note(out, Severity::warning, "precision", "precision.mps.bf16_to_fp16",
           "bf16 -> fp16 on MPS: bf16 accumulates rounding error over the denoising loop and produces "
           "visual artifacts (Note [bf16 on MPS]); set mps_bf16=allow to keep it");
    }
    return Precision::fp16;
  }
  if (device.is_cuda()) {
    const auto* info = cuda_info(caps, device);
    if (info != nullptr && info->capability_known()) {
      if (p == Precision::bf16 && !info->supports_bf16()) {
        note(out, Severity::warning, "precision", "precision.cuda.bf16_to_fp16",
             "bf16 -> fp16: cuda:" + std::to_string(info->index) + " (sm_" + std::to_string(info->major) +
                 std::to_string(info->minor) + ") has no native bf16 (needs compute capability >= 8.0)");
        p = Precision::fp16;
      }
      if (p == Precision::fp16 && !info->supports_fp16()) {
        note(out, Severity::warning, "precision", "precision.cuda.fp16_to_fp32",
             "fp16 -> fp32: cuda:" + std::to_string(info->index) +
                 " has compute capability < 6.0 (no fast half precision)");
        p = Precision::fp32;
      }
    }
    return p;
  }
  if (device.is_cpu() && (p == Precision::bf16 || p == Precision::fp16)) {
    note(out, Severity::warning, "precision", "precision.cpu.half_kept",
         std::string(to_string(p)) +
             " on the CPU as requested: correct but usually slower than fp32 (Note [Half precision on the CPU])");
  }
  return p;
}

// Refuses fp8_matmul where the device has no FP8 matmul, or with a precision or storage it contradicts.
inline void check_fp8_matmul(const LoaderSettings& settings, const c10::Device& device, const Capabilities& caps,
                             Precision resolved) {
  const std::string fallback = device.is_mps() ? "" : "; weight_storage=fp8 (--weight-storage fp8) keeps FP8 storage "
                                                      "with compute-dtype matmuls";
  if (!device.is_cuda())
    throw Error("fp8_matmul (--fp8-matmul) needs an NVIDIA GPU of compute capability >= 8.9 (Ada, Hopper or newer); "
                "the plan's device is " + device.str() + fallback);
  const auto* info = cuda_info(caps, device);
  if (info == nullptr || !info->capability_known())
    throw Error("fp8_matmul (--fp8-matmul): the compute capability of " + device.str() +
                " is unknown (LibTorch without CUDA headers), so FP8 matmul support cannot be checked" + fallback);
  if (!info->supports_fp8_matmul())
    throw Error("fp8_matmul (--fp8-matmul): " + device.str() + " (sm_" + std::to_string(info->major) +
                std::to_string(info->minor) + ", " + info->name +
                ") has no FP8 tensor cores (needs compute capability >= 8.9: Ada, Hopper or newer)" + fallback);
  if (resolved != Precision::bf16)
    throw Error(std::string("fp8_matmul (--fp8-matmul) multiplies into bf16, but the precision resolved to ") +
                to_string(resolved) + "; use precision bf16 or auto");
  if (settings.weight_storage == WeightStorage::compute)
    throw Error("fp8_matmul (--fp8-matmul) keeps the transformer's block weights in FP8, but weight_storage is "
                "compute; use weight_storage auto or fp8");
}

// Note [FP8 attention is opt-in]
// FP8 attention quantizes q, k, v, the softmax's probabilities and the output to e4m3 with one scale per tensor:
// each keeps 3 mantissa bits, so the attention output moves by a few per cent (more where attention is sharp),
// against FP8 matmul's ~1 % from row-wise scaled GEMMs. It saves a third of the 13B's attention time on Hopper and
// little at head dim 64, so it is never chosen by the planner: only asked for, and refused where cuDNN has no FP8
// attention (before sm_90) or the precision is not a half-precision one.
inline void resolve_fp8_attention(const LoaderSettings& settings, const c10::Device& device, const Capabilities& caps,
                                  PrecisionPlan& plan, std::vector<Diagnostic>& out) {
  if (!settings.fp8_attention) return;
  if (!device.is_cuda())
    throw Error("fp8_attention (--fp8-attention) needs an NVIDIA GPU of compute capability >= 9.0 (Hopper or "
                "newer); the plan's device is " + device.str());
  const auto* info = cuda_info(caps, device);
  if (info == nullptr || !info->capability_known())
    throw Error("fp8_attention (--fp8-attention): the compute capability of " + device.str() +
                " is unknown (LibTorch without CUDA headers), so FP8 attention support cannot be checked");
  if (info->major < 9)
    throw Error("fp8_attention (--fp8-attention): " + device.str() + " (sm_" + std::to_string(info->major) +
                std::to_string(info->minor) + ", " + info->name +
                ") has no cuDNN FP8 attention (needs compute capability >= 9.0: Hopper or newer)");
  if (plan.resolved != Precision::bf16 && plan.resolved != Precision::fp16)
    throw Error(std::string("fp8_attention (--fp8-attention) takes bf16 or fp16 activations, but the precision "
                            "resolved to ") + to_string(plan.resolved) + "; use precision bf16, fp16 or auto");
  plan.fp8_attention = true;
  note(out, Severity::info, "precision.transformer", "precision.attention.fp8",
       "FP8 attention as requested: the blocks' self-attention on " + device.str() +
           " with e4m3 q, k, v, probabilities and output, one float32 scale per tensor (cuDNN's FP8 flash "
           "attention); changes the output by a few per cent; cross-attention stays " + to_string(plan.resolved) +
           " (Note [FP8 attention is opt-in])");
}

inline void resolve_transformer_weights(const LoaderSettings& settings, const c10::Device& device,
                                        const Capabilities& caps, PrecisionPlan& plan, std::vector<Diagnostic>& out) {
  const std::string dtype = to_string(plan.resolved);
  if (settings.fp8_matmul) {
    check_fp8_matmul(settings, device, caps, plan.resolved);
    plan.transformer_weights = WeightStorage::fp8;
    plan.fp8_matmul = true;
    note(out, Severity::info, "precision.transformer", "precision.weights.fp8_matmul",
         "FP8 matmul as requested: the blocks' attention and feed-forward weights in FP8 e4m3 with one float32 "
         "scale per output channel, activations quantized per token at run time, at::_scaled_mm with bf16 output "
         "on " + device.str() + "; proj_in, proj_out, time_embed and caption_projection stay " + dtype +
             " (Note [Weight storage])");
    return;
  }
  if (settings.weight_storage == WeightStorage::fp8) {
    if (!fp8_storage_supported(device))
      throw Error("weight_storage=fp8 (--weight-storage fp8) is not supported on " + device.str() +
                  ": MPS has no float8 dtype; use weight_storage compute or auto there");
    plan.transformer_weights = WeightStorage::fp8;
    note(out, Severity::info, "precision.transformer", "precision.weights.fp8_storage",
         "FP8 storage as requested: the blocks' attention and feed-forward weights in FP8 e4m3 with one float32 "
         "scale per output channel (half of bf16's bytes), dequantized to " + dtype +
             " before each matmul; the other layers stay " + dtype + " (Note [Weight storage])");
    return;
  }
  plan.transformer_weights = WeightStorage::compute;
  note(out, Severity::info, "precision.transformer", "precision.weights.compute",
       settings.weight_storage == WeightStorage::compute
           ? "transformer weights in " + dtype + " as requested (weight_storage=compute)"
           : "transformer weights in " + dtype + " (weight_storage=auto: FP8 storage only when the memory budget "
                                                 "needs it; FP8 matmul only on request; Note [Weight storage])");
}

}  // namespace detail

/// @brief The T5 modules transformers 5.17's `from_pretrained(dtype=...)` keeps in float32: `{"wo"}` for float16
///        only (Note [T5 wo in float32]). The one source of this rule: the plan and every T5 runtime use it.
inline std::vector<std::string> t5_fp32_modules(at::ScalarType dtype) {
  if (dtype == at::kHalf) return {"wo"};
  return {};
}

/// @brief Resolves the dtype of every component for `device`, appending the reasons to `out`. Throws
///        `ltxmps::Error` for an FP8 request `device` cannot serve (fp8_matmul off CUDA sm_89+, FP8 storage on MPS).
inline PrecisionPlan resolve_precision(const LoaderSettings& settings, const c10::Device& device,
                                       const Capabilities& caps, std::vector<Diagnostic>& out) {
  PrecisionPlan plan;
  plan.requested = settings.precision;
  Precision p = settings.precision == Precision::automatic
                    ? detail::automatic_precision(device, caps, out)
                    : settings.precision;
  p = detail::apply_device_rules(p, settings, device, caps, out);
  plan.resolved = p;
  const at::ScalarType model_dtype = to_scalar_type(p);
  plan.transformer = ComponentPrecision{model_dtype, model_dtype, {}};
  detail::resolve_transformer_weights(settings, device, caps, plan, out);
  detail::resolve_fp8_attention(settings, device, caps, plan, out);
  plan.text_encoder = ComponentPrecision{model_dtype, model_dtype, {}};
  plan.text_encoder.keep_in_fp32_modules = t5_fp32_modules(model_dtype);
  if (!plan.text_encoder.keep_in_fp32_modules.empty()) {
    detail::note(out, Severity::info, "precision.text_encoder", "precision.t5.wo_fp32",
                 "T5 feed-forward 'wo' layers stay float32 under fp16 (transformers' _keep_in_fp32_modules; "
                 "Note [T5 wo in float32])");
  }
  if (settings.vae_float32) {
    plan.vae = ComponentPrecision{at::kFloat, at::kFloat, {}};
    detail::note(out, Severity::info, "precision.vae", "precision.vae.fp32",
                 "VAE in float32 (vae_float32; LTX Conv3d gives NaN in half precision on MPS; Note [VAE in float32])");
  } else {
    plan.vae = ComponentPrecision{model_dtype, model_dtype, {}};
    if (model_dtype == at::kHalf) {
      detail::note(out, Severity::warning, "precision.vae", "precision.vae.fp16_risk",
                   "VAE in fp16 (vae_float32 off): LTX's Conv3d can give NaN or black frames in fp16"
                   " (seen on MPS); enable vae_float32 if decoded frames are black");
    } else {
      detail::note(out, Severity::info, "precision.vae", "precision.vae.model_dtype",
                   std::string("VAE in ") + to_string(p) + " (vae_float32 off)");
    }
  }
  return plan;
}

// Note [No float64 or int64 on MPS]
// MPS has no float64 and runs int64 slowly or not at all for several ops; diffusers'
// `maybe_adjust_dtype_for_device` maps float64 -> float32 and int64 -> int32 there, and its schedulers
// build timesteps as float32 on MPS. Everything that creates or moves tensors for a device goes through
// `device_dtype` / `to_device` below so that no float64/int64 tensor reaches MPS.

/// @brief The dtype a tensor of `dtype` gets on `device`: float64 -> float32 and int64 -> int32 on MPS.
inline at::ScalarType device_dtype(at::ScalarType dtype, const c10::Device& device) noexcept {
  if (device.is_mps()) {
    if (dtype == at::kDouble) return at::kFloat;
    if (dtype == at::kLong) return at::kInt;
  }
  return dtype;
}

/// @brief Moves `t` to `device`, converting float64/int64 as `device_dtype` says.
inline at::Tensor to_device(const at::Tensor& t, const c10::Device& device) {
  return t.to(device, device_dtype(t.scalar_type(), device));
}

}  // namespace ltxmps
