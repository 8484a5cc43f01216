#pragma once
/// @file fp8_attention.hpp
/// @brief Self-attention with FP8 operands (cuDNN's FP8 flash attention on Hopper), opt-in, with an ATen model of
///        its arithmetic that is always built.
///
/// Note [FP8 attention]
/// cuDNN's FP8 fused attention takes q, k and v as e4m3 with one float32 scale per tensor, quantizes the
/// softmax's unnormalized probabilities with a fixed scale (448: they lie in [0, 1]) before the product with v,
/// and on Hopper writes the output in e4m3 too (a float16 / bfloat16 output needs Blackwell). The output's scale has
/// to be chosen before the call: every output row is a convex combination of v's rows, so |O| <= amax(v) and
/// 448 / amax(v) is a scale that never saturates. Each of the five quantizations keeps 3 mantissa bits, so the
/// result differs from the bf16 attention by a few per cent of its magnitude (more where attention is sharp: a
/// rounded score can change which key wins): unlike FP8 matmul's row-wise scaled GEMMs this is a visible
/// approximation, and it is never chosen unless asked for.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace ltxmps::kernels {

/// @brief True when this build has the cuDNN frontend and so the FP8 attention kernel.
bool built_with_fp8_attention() noexcept;

/// @brief Why fp8_attention() cannot run its cuDNN kernel on `device`: empty when it can (a build with the cuDNN
///        frontend, a CUDA device of compute capability 9.0 or newer, cuDNN 9.1 or newer).
std::string fp8_attention_unavailable(const c10::Device& device);

/// @brief `softmax(q_h·k_hᵀ·scale)·v_h` per head h with FP8 operands (Note [FP8 attention]).
///
/// q, k, v: [B, S, D] of one dtype (bfloat16 or float16 for the kernel), D = heads · head_dim; q, k and v are
/// quantized per tensor (quantize_fp8_tensor), the output is dequantized to q's dtype: [B, S, D], heads merged as
/// SDPA's output permuted back. On CUDA this is cuDNN's FP8 attention and throws ltxmps::Error, naming the reason,
/// where fp8_attention_unavailable() is not empty or cuDNN refuses the shape; elsewhere it runs
/// fp8_attention_reference().
at::Tensor fp8_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads, double scale);

/// @brief The same arithmetic in ATen ops (float32, [B, H, S, S] scores: small inputs only): the per-tensor
///        quantizations of q, k and v, the scores, their row maximum, `e = exp(s - max)` quantized with scale 448,
///        `(e_q·v_q) / sum(e)`, the output quantized with scale 448 / amax(v). cuDNN takes its maxima per tile of keys
///        as it goes (flash attention), so its result rounds differently but carries the same error.
at::Tensor fp8_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads,
                                   double scale);

}  // namespace ltxmps::kernels
