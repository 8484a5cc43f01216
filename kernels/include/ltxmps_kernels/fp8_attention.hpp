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

#include "ltxmps_kernels/fused.hpp"

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

/// @brief Why cuDNN's FP8 attention cannot run `heads` heads of dimension `head_dim` on `device`: empty when it can.
///        fp8_attention_unavailable()'s reason, or cuDNN's own refusal of the head shape, asked without compiling a
///        kernel (so a model can be refused before its weights are read); the answer is kept per device and shape.
std::string fp8_attention_unsupported(const c10::Device& device, int64_t heads, int64_t head_dim);

/// @brief The attention of FP8 q, k, v ([B, S, D] codes, D = heads · head_dim, one shape): its output as FP8 rows,
///        codes [B·S, D] (heads merged) with every row's scale the same, amax(v)'s (Note [FP8 attention]). These
///        rows go straight into an FP8 matmul; dequantize_fp8_rows() gives the values.
///
/// On CUDA cuDNN's FP8 attention (an ltxmps::Error naming the reason where fp8_attention_unavailable() is not
/// empty or cuDNN refuses the shape); elsewhere fp8_attention_rows_reference().
Fp8Rows fp8_attention_rows(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, int64_t heads, double scale);

/// @brief The same arithmetic in ATen ops (float32, [B, H, S, S] scores: small inputs only): the scores of the
///        dequantized q and k, their row maximum, `e = exp(s - max)` quantized with scale 448, `(e_q·v) / sum(e)`,
///        the output quantized with v's scale. cuDNN takes its maxima per tile of keys as it goes (flash attention),
///        so its codes round differently but carry the same error.
Fp8Rows fp8_attention_rows_reference(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, int64_t heads,
                                     double scale);

/// @brief `qk_rms_norm_rope(...)` with its outputs as Fp8Tensor: the rows rounded to q's dtype as that function
///        writes them, then divided by a scale bounded before the kernel runs, `max(max|w| · fp8_qk_bound_factor(D),
///        FLT_MIN)` for each of q and k (Note [FP8 q and k] in kernels/cuda/qk_norm_rope.cu): no amax pass. q and k
///        of one shape (self-attention). On CUDA one kernel writes only the codes; elsewhere the reference.
std::pair<Fp8Tensor, Fp8Tensor> qk_rms_norm_rope_fp8(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& q_weight, const at::Tensor& k_weight,
                                                     double eps, const at::Tensor& cos, const at::Tensor& sin);
/// @brief qk_rms_norm_rope_reference(), then the division by the bounded scale into e4m3 (one ATen division each).
std::pair<Fp8Tensor, Fp8Tensor> qk_rms_norm_rope_fp8_reference(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& q_weight, const at::Tensor& k_weight,
                                                               double eps, const at::Tensor& cos,
                                                               const at::Tensor& sin);
/// @brief float(√dim · (1 + 2^-6) / 448): the normalized rows' bound per unit of max|w|, with room for roundings.
float fp8_qk_bound_factor(int64_t dim);

/// @brief `softmax(q_h·k_hᵀ·scale)·v_h` per head h with FP8 operands (Note [FP8 attention]).
///
/// q, k, v: [B, S, D] of one dtype (bfloat16 or float16 on CUDA), D = heads · head_dim: each quantized per tensor
/// (quantize_fp8_tensor), fp8_attention_rows(), the output dequantized to q's dtype: [B, S, D], heads merged as
/// SDPA's output permuted back.
at::Tensor fp8_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads, double scale);

/// @brief fp8_attention() with the references: quantize_fp8_tensor_reference(), fp8_attention_rows_reference(),
///        dequantize_fp8_rows_reference().
at::Tensor fp8_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads,
                                   double scale);

}  // namespace ltxmps::kernels
