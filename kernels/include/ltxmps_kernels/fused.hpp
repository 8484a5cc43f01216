#pragma once
/// @file fused.hpp
/// @brief Fused kernels for the LTX-Video transformer forward and the VAE's channel rows, each with an ATen reference.
///
/// Every function comes in two forms:
///   - `f(...)` runs a fused CUDA kernel when this build has the CUDA kernels, the tensors are on a CUDA device
///     and the kernel supports their dtypes and layout; otherwise it runs `f_reference(...)`;
///   - `f_reference(...)` is the op sequence of the unfused transformer forward, written once here: on the CPU
///     (and wherever the kernel does not apply) the fused forward is therefore bit-identical to the unfused one.
///
/// Note [Fused kernel rounding]
/// In half precision the reference rounds to the tensor dtype after every ATen op (`x * rsqrt(var)` cast back,
/// `1 + scale`, `n * (1 + scale)`, `+ shift`, ...). The CUDA kernels compute in float32 registers but round at
/// exactly those points, with the same float32 operations (no fused multiply-add across a point where ATen
/// writes a float32 tensor), so they differ from the reference only where the order of a float32 reduction (a
/// row's sum of squares) moves a value across a rounding boundary: at most one or two units in the last place of
/// the half-precision result, and mostly not at all. docs/kernels.md lists each kernel's rounding points.

#include "ltxmps/diagnostics.hpp"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace ltxmps::kernels {

/// @brief True when this build compiled the CUDA kernels (a CUDA compiler and a LibTorch with CUDA were found).
bool built_with_cuda() noexcept;

/// @brief How many calls of the entry points below took their CUDA path (a fused kernel or the cuBLASLt epilogue)
///        in this process: lets a test or a benchmark tell that the kernels ran rather than the references.
uint64_t fused_calls() noexcept;

/// @brief Which kernels a forward on `device` in `dtype` runs, and why (one diagnostic per kernel, topic
///        "kernels"), plus the attention backend LibTorch picks for a self-attention of `head_dim` on that
///        device when the device is present (topic "kernels.sdpa").
std::vector<ltxmps::Diagnostic> kernel_report(const c10::Device& device, at::ScalarType dtype, int64_t head_dim = 64);

/// @brief FP8 (e4m3) rows: codes and their float32 row scales.
struct Fp8Rows {
  at::Tensor q;      ///< [rows, cols] float8_e4m3fn
  at::Tensor scale;  ///< [rows] float32
};

/// @brief A whole tensor in FP8: e4m3 codes and their one float32 scale ([1]); the value is code · scale.
struct Fp8Tensor {
  at::Tensor q;      ///< float8_e4m3fn codes
  at::Tensor scale;  ///< float32 [1]
};

/// @brief Where an entry point also returns the FP8 rows of its output (codes [M, D], scales [M], M the output's
///        rows): exactly `quantize_fp8_rows(out.reshape({-1, D}))`, bit for bit, written by the same kernel that
///        writes `out` when that kernel runs (Note [Fused FP8 rows] in kernels/cuda/fp8.cuh), by the separate
///        quantization otherwise. Null: no FP8 rows.
using Fp8RowsOut = Fp8Rows*;

// ---------------------------------------------------------------------------------------------------
// Block norms with AdaLN modulation

/// @brief diffusers `RMSNorm` (the transformer block's norm1 / norm2): the mean of squares in float32, the input
///        times the float32 reciprocal root cast back to the input dtype (or to a half-precision weight's dtype,
///        then times the weight). `weight` may be undefined.
at::Tensor block_rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps);

/// @brief `block_rms_norm(x, weight, eps) * (1 + scale) + shift`.
///
/// `x` is [B, S, D]; `scale` and `shift` are [B, T, D] with T = 1 or S (strided views, such as slices of the
/// block's `ada` tensor, are read in place). `fp8`: see Fp8RowsOut.
///
/// Per-token modulation from a few rows: with `token_index` (int32 [B, S], on x's device) the modulation operands
/// are [B, K, D] and token s of batch entry b takes their row token_index[b, s] (clamped to [0, K)), as if they had
/// been gathered to [B, S, D] first. The same holds for every entry point below that takes a `token_index`.
at::Tensor rms_norm_modulate(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& scale,
                             const at::Tensor& shift, Fp8RowsOut fp8 = nullptr, const at::Tensor& token_index = {});
/// @brief The ATen op sequence of rms_norm_modulate() (the rows of `token_index` gathered first).
at::Tensor rms_norm_modulate_reference(const at::Tensor& x, const at::Tensor& weight, double eps,
                                       const at::Tensor& scale, const at::Tensor& shift,
                                       const at::Tensor& token_index = {});

/// @brief `silu(rms_norm_modulate(x, {}, eps, scale, shift))`, or `silu(block_rms_norm(x, {}, eps))` when `scale`
///        and `shift` are both undefined: the VAE's channel norm and activation on channels-last rows (x [B, S, C],
///        scale / shift [B, 1, C] or [1, 1, C]), one pass that writes only the activation (Note [VAE norms through
///        the row kernel] in the pipeline's vae.cpp). The CUDA kernel's SiLU takes the hardware's approximate
///        exponential and division: within a few thousandths of a rounding of ATen's (Note [SiLU in the norm kernel]).
at::Tensor rms_norm_modulate_silu(const at::Tensor& x, double eps, const at::Tensor& scale, const at::Tensor& shift);
/// @brief The ATen op sequence of rms_norm_modulate_silu(): the norm, the modulation when given, `at::silu`.
at::Tensor rms_norm_modulate_silu_reference(const at::Tensor& x, double eps, const at::Tensor& scale,
                                            const at::Tensor& shift);

/// @brief `h = gate.defined() ? x + y * gate : x + y`, then `rms_norm_modulate(h, ...)`: returns {h, normed}.
///        One pass over the row writes both (the block's cross-attention residual followed by norm2); `fp8`
///        receives the FP8 rows of `normed`.
std::pair<at::Tensor, at::Tensor> residual_rms_norm_modulate(const at::Tensor& x, const at::Tensor& y,
                                                             const at::Tensor& gate, const at::Tensor& weight,
                                                             double eps, const at::Tensor& scale,
                                                             const at::Tensor& shift, Fp8RowsOut fp8 = nullptr,
                                                             const at::Tensor& token_index = {});
/// @brief The ATen op sequence of residual_rms_norm_modulate().
std::pair<at::Tensor, at::Tensor> residual_rms_norm_modulate_reference(const at::Tensor& x, const at::Tensor& y,
                                                                       const at::Tensor& gate,
                                                                       const at::Tensor& weight, double eps,
                                                                       const at::Tensor& scale,
                                                                       const at::Tensor& shift,
                                                                       const at::Tensor& token_index = {});

/// @brief `layer_norm(x, [D], no affine, eps) * (1 + scale) + shift` (the transformer's output head).
at::Tensor layer_norm_modulate(const at::Tensor& x, double eps, const at::Tensor& scale, const at::Tensor& shift,
                               const at::Tensor& token_index = {});
/// @brief The ATen op sequence of layer_norm_modulate().
at::Tensor layer_norm_modulate_reference(const at::Tensor& x, double eps, const at::Tensor& scale,
                                         const at::Tensor& shift, const at::Tensor& token_index = {});

// ---------------------------------------------------------------------------------------------------
// Convolution bias

/// @brief `x += bias` broadcast over dimension 1 of x (a convolution output [B, C, ...] and its bias [C]), in place;
///        returns x. On CUDA, when x's channels are its innermost dimension (channels-last, dense), one kernel reads
///        and writes each row of C channels once (Note [Channel bias on channels-last rows] in fused.cpp); the values
///        are ATen's add, bit for bit.
at::Tensor add_channel_bias_(at::Tensor x, const at::Tensor& bias);
/// @brief The ATen op of add_channel_bias_(): `x.add_(bias.view({1, C, 1, ...}))`, as ATen adds a bias after cuDNN's
///        convolution.
at::Tensor add_channel_bias_reference_(at::Tensor x, const at::Tensor& bias);

// ---------------------------------------------------------------------------------------------------
// Residuals

/// @brief `x + y * gate` (gate [B, T, D] with T = 1 or S, strided views read in place). `fp8`: see Fp8RowsOut.
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, Fp8RowsOut fp8 = nullptr,
                          const at::Tensor& token_index = {});
/// @brief The ATen op sequence of gated_residual().
at::Tensor gated_residual_reference(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                                    const at::Tensor& token_index = {});

// ---------------------------------------------------------------------------------------------------
// Query / key norm and rotary embedding

/// @brief diffusers `apply_rotary_emb` of LTX-Video: interleaved pairs (2i, 2i + 1) over the full last dim,
///        `x·cos + rotate(x)·sin` in float32, cast back to x's dtype. cos / sin: float32 [B, S, D].
at::Tensor rotary_emb_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

/// @brief `at::rms_norm` over the last dim of q (weight `q_weight`) and of k (weight `k_weight`), then, when
///        `cos` is defined, the rotary embedding of both. Returns contiguous {q, k} [B, S, D] (the layout whose
///        head-split view SDPA reads without a copy).
///
/// q is [B, Sq, D], k is [B, Sk, D]; with `cos`/`sin` (float32 [B, S, D]) both must have S tokens, and one kernel
/// reads each (cos, sin) row once for the q and the k row of that token.
std::pair<at::Tensor, at::Tensor> qk_rms_norm_rope(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& q_weight, const at::Tensor& k_weight,
                                                   double eps, const at::Tensor& cos, const at::Tensor& sin);
/// @brief The ATen op sequence of qk_rms_norm_rope().
std::pair<at::Tensor, at::Tensor> qk_rms_norm_rope_reference(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& q_weight, const at::Tensor& k_weight,
                                                             double eps, const at::Tensor& cos,
                                                             const at::Tensor& sin);

// ---------------------------------------------------------------------------------------------------
// Feed-forward projection with the tanh GELU

/// @brief `gelu(x·weightᵀ + bias, "tanh")` for x [..., in], weight [out, in], bias [out].
///
/// On CUDA (dense weight and bias of x's dtype and device, contiguous x) this is one cuBLASLt GEMM whose epilogue
/// adds the bias and applies the tanh GELU on the float32 accumulator (`at::_addmm_activation(..., use_gelu)`),
/// rounding once instead of twice; elsewhere the reference.
at::Tensor linear_gelu_tanh(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
/// @brief `at::gelu(at::linear(x, weight, bias), "tanh")`.
at::Tensor linear_gelu_tanh_reference(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// ---------------------------------------------------------------------------------------------------
// FP8 (e4m3) rows: the quantization of FP8 matmul's activations and FP8 storage's weights, and the dequantization
// of a stored weight

/// @brief e4m3's largest finite value (float8_e4m3fn).
inline constexpr double kFp8E4m3Max = 448.0;

/// @brief Quantizes each row of `rows` [M, K] to e4m3: `scale = max(float(amax(|row|)) · float(1/448), FLT_MIN)`,
///        `q = row / scale` in float32, rounded once to e4m3. Returns {q float8_e4m3fn [M, K], scale float32 [M]}.
///
/// On CUDA (float32 / float16 / bfloat16 rows whose last dimension is contiguous; other strides are made
/// contiguous first) one kernel reads each row once from memory, one thread block per row; its codes and scales
/// are those of the reference on the same device, bit for bit (Note [FP8 row quantization] in fused.cpp).
std::pair<at::Tensor, at::Tensor> quantize_fp8_rows(const at::Tensor& rows);
/// @brief The ATen op sequence of quantize_fp8_rows(): an amax reduction, the scale, one division into float8.
std::pair<at::Tensor, at::Tensor> quantize_fp8_rows_reference(const at::Tensor& rows);

/// @brief `quantize_fp8_rows(at::gelu(rows, "tanh"))`, the input of FP8 matmul's second feed-forward linear: on
///        CUDA one kernel computes the GELU as it reads the row and quantizes it, without writing the activation
///        unless `activation` asks for it (then it receives the GELU, contiguous). The kernel's GELU is the same
///        function with a fast exponential (within one rounding to the rows' dtype plus 2^-15 relative of the exact
///        GELU, not ATen's bits: Note [GELU before the FP8 rows] in kernels/cuda/fp8.cuh); its quantization of those
///        values is the reference's, bit for bit. Elsewhere, and for what the kernel does not take, the ATen ops.
std::pair<at::Tensor, at::Tensor> quantize_fp8_rows_gelu_tanh(const at::Tensor& rows, at::Tensor* activation = nullptr);

/// @brief Quantizes the whole of `x` to e4m3 with one scale: `quantize_fp8_rows(x.reshape({1, -1}))` with the
///        codes in x's shape.
///
/// On CUDA (contiguous float32 / float16 / bfloat16) an amax pass and a quantize pass, each over the whole GPU; the
/// codes and the scale are the reference's bits. The per-tensor format of FP8 attention's q, k and v.
Fp8Tensor quantize_fp8_tensor(const at::Tensor& x);
/// @brief `quantize_fp8_rows_reference(x.reshape({1, -1}))`, codes reshaped to x's shape.
Fp8Tensor quantize_fp8_tensor_reference(const at::Tensor& x);

/// @brief `q · scale[:, None]` in `dtype`: each float32 product rounded once to `dtype`. q is float8_e4m3fn
///        [N, K], scale float32 [N].
///
/// On CUDA (dtype float32 / float16 / bfloat16, q's last dimension contiguous) one pass reads each code once
/// (16 per vector access where K allows it) and writes the result: bit for bit the reference's.
at::Tensor dequantize_fp8_rows(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype);
/// @brief `q.to(dtype).mul_(scale.unsqueeze(1))`.
at::Tensor dequantize_fp8_rows_reference(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype);

}  // namespace ltxmps::kernels
