// kernel_report(): which fused kernels a forward runs on a device, and which attention backend LibTorch picks.

#include "ltxmps_kernels/fused.hpp"

#include "cuda_launch.hpp"

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <optional>
#include <string>

namespace ltxmps::kernels {

namespace {

using cuda::kernel_dtype;

// The values of at::SDPBackend (ATen/SDPBackend.h), spelled out because older LibTorch releases lack the header.
const char* sdp_backend_name(int64_t choice) {
  switch (choice) {
    case 0: return "math";
    case 1: return "flash_attention";
    case 2: return "efficient_attention";
    case 3: return "cudnn_attention";
    case 4: return "overrideable";
    default: return "none (error)";
  }
}

bool device_present(const c10::Device& device) {
  if (device.is_cpu()) return true;
  if (device.is_cuda())
    return torch::cuda::is_available() && device.index() < static_cast<int64_t>(torch::cuda::device_count());
  if (device.is_mps()) return at::hasMPS();
  return false;
}

// Which attention backend LibTorch picks for the transformer's self-attention (head-split views of [B, S, D], no
// mask) and cross-attention (with the [B, heads, 1, L] text bias) in `dtype` on `device`.
std::optional<Diagnostic> sdpa_report(const c10::Device& device, at::ScalarType dtype, int64_t head_dim) {
  if (!device_present(device) || head_dim <= 0) return std::nullopt;
  std::string message;
  try {
    constexpr int64_t kHeads = 2, kTokens = 256, kTextTokens = 128;
    const auto options = at::TensorOptions().device(device).dtype(dtype);
    const auto heads = [&](int64_t tokens) {
      return at::zeros({1, tokens, kHeads * head_dim}, options).unflatten(2, {kHeads, head_dim}).permute({0, 2, 1, 3});
    };
    const auto q = heads(kTokens), text = heads(kTextTokens);
    const auto self_choice = at::_fused_sdp_choice(q, heads(kTokens), heads(kTokens));
    const auto cross_choice = at::_fused_sdp_choice(q, text, text, at::zeros({1, kHeads, 1, kTextTokens}, options));
    message = c10::str("sdpa (head_dim ", head_dim, ", ", dtype, " on ", device, "): self-attention ",
                       sdp_backend_name(self_choice), ", cross-attention with the text bias ",
                       sdp_backend_name(cross_choice), " (at::_fused_sdp_choice)");
  } catch (const std::exception& e) {
    const std::string what = e.what();
    message = c10::str("sdpa: backend not probed on ", device, ": ", what.substr(0, what.find('\n')));
  }
  return Diagnostic{Severity::info, "kernels.sdpa", "kernels.sdpa", std::move(message)};
}

}  // namespace

std::vector<Diagnostic> kernel_report(const c10::Device& device, at::ScalarType dtype, int64_t head_dim) {
  std::string reason;  // why the CUDA kernels do not run, empty when they do
  if (!device.is_cuda()) reason = c10::str("the device is ", device, " and the fused kernels are CUDA only");
  else if (!kernel_dtype(dtype)) reason = c10::str("no kernel for ", dtype);
  const std::string built_reason =
      reason.empty() && !built_with_cuda()
          ? "this build has no CUDA kernels (configured without a CUDA compiler or with a LibTorch without CUDA)"
          : reason;
  struct Entry {
    const char* name;
    const char* fuses;
  };
  static const Entry kEntries[] = {
      {"rms_norm_modulate", "norm1: block RMSNorm and the AdaLN scale / shift"},
      {"rms_norm_modulate_silu", "the VAE's channel RMSNorm, its timestep scale / shift and the SiLU (channels-last)"},
      {"add_channel_bias_", "the VAE's convolution biases on channels-last outputs, with vector accesses"},
      {"residual_rms_norm_modulate", "cross-attention residual, norm2 and its scale / shift"},
      {"gated_residual", "x + y * gate of the self-attention and feed-forward"},
      {"qk_rms_norm_rope", "query / key RMSNorm across heads and the interleaved RoPE, q and k together"},
      {"layer_norm_modulate", "output LayerNorm and its scale / shift"},
      {"quantize_fp8_rows", "FP8 row quantization: amax, scale and e4m3 codes in one read of the row"},
      {"dequantize_fp8_rows", "FP8 storage's weight dequantization: codes times row scale, one pass"},
      {"quantize_fp8_rows_gelu_tanh", "FP8 matmul's feed-forward: the tanh GELU and the row quantization in one pass"},
      {"quantize_fp8_tensor", "FP8 attention's per-tensor quantization of q, k and v: an amax and a quantize pass"},
  };
  std::vector<Diagnostic> out;
  for (const auto& e : kEntries) {
    if (built_reason.empty())
      out.push_back({Severity::info, "kernels", "kernels.cuda", c10::str(e.name, ": CUDA kernel (", e.fuses, ")")});
    else
      out.push_back(
          {Severity::info, "kernels", "kernels.reference", c10::str(e.name, ": ATen reference; ", built_reason)});
  }
  if (reason.empty())
    out.push_back({Severity::info, "kernels", "kernels.cublaslt",
                   "linear_gelu_tanh: cuBLASLt GEMM with the bias and tanh-GELU epilogue (at::_addmm_activation)"});
  else
    out.push_back({Severity::info, "kernels", "kernels.reference",
                   c10::str("linear_gelu_tanh: ATen reference; ", reason)});
  if (auto sdpa = sdpa_report(device, dtype, head_dim)) out.push_back(std::move(*sdpa));
  return out;
}

}  // namespace ltxmps::kernels
