#pragma once
/// @file fp8.hpp
/// @brief FP8 (e4m3) weights for the transformer's block linears: row-wise quantization, dequantization, and
///        the conversion of a transformer's blocks (Note [Weight storage]).

#include "ltxmps_pipeline/linear.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include "ltxmps_kernels/fused.hpp"

#include "ltxmps/diagnostics.hpp"

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace ltxmps::pipeline {

// Note [Weight storage]
// The transformer's weights can be kept in two ways (ltxmps::WeightStorage, decided by the plan):
//  - compute: in the compute dtype (bf16 on CUDA), as diffusers loads them;
//  - fp8: the blocks' linears as float8_e4m3fn codes with one float32 scale per output channel,
//    `W[i, :] ≈ q[i, :] · s[i]`, `s[i] = max_j |W[i, j]| / 448` (448 is e4m3's largest finite value), so each
//    row's largest weight lands on ±448 and the rest keep e4m3's relative precision: 3 mantissa bits, a
//    rounding error of at most 2^-4 of the value for |q| >= 2^-6 and at most 2^-10 · s[i] absolute below
//    (subnormals). A row of zeros gets the scale floor FLT_MIN (a positive scale keeps the division finite).
//    Half of bf16's bytes. The weight is dequantized to the input's dtype (bf16) right before each matmul
//    (LinearMode::fp8_storage), on any device with float8 conversions: CUDA and the CPU, not MPS (no float8).
//
// FP8 matmul (LoaderSettings::fp8_matmul, opt-in, CUDA sm_89 / sm_90 and newer) keeps the same weights and
// multiplies in FP8 (LinearMode::fp8_matmul): the activation is quantized per row (per token) at run time with
// the same rule, then `at::_scaled_mm(x_q [M, K] row-major, q.t() [K, N] column-major, scale_a [M, 1],
// scale_b [1, N], bias, bf16)` multiplies on the FP8 tensor cores and applies both scales and the bias in its
// epilogue, with float32 accumulation (use_fast_accum off: the fast mode skips the periodic promotion of
// Hopper's FP8 accumulator, whose error grows with K = 4·D in the feed-forward). cuBLASLt and the row-wise
// kernels need K and N to be multiples of 16; a layer whose shape is not falls back to FP8 storage and a
// bf16 matmul, and the loader says so. On CUDA the quantization of x is one fused kernel (amax, scale and codes
// in one read of each row) and FP8 storage's dequantization one pass over the codes
// (ltxmps::kernels::quantize_fp8_rows / dequantize_fp8_rows, the reference's bits); elsewhere their ATen
// references: one reduction (amax) and one division whose output tensor is float8 (computed in float32, rounded
// once, no float32 copy of x), and one conversion and product.
//
// Which layers: the blocks' attention projections (attn1/attn2 to_q, to_k, to_v, to_out.0) and feed-forward
// (ff.net.0.proj, ff.net.2), which hold ~98 % of the weights and do all the large matmuls. proj_in, proj_out,
// the timestep embedder (time_embed.*) and the caption projection stay in the compute dtype: together ~2 % of
// the weights, and their matmuls are tiny (time_embed runs on one row per sample), so FP8 saves nothing there,
// while their errors reach everything: time_embed.linear produces every block's scale, shift and gate, proj_in
// and proj_out map the latent itself. The norms, scale_shift_tables and biases stay in the compute dtype too.
// diffusers' `enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn)` skips by default
// `DEFAULT_SKIP_MODULES_PATTERN = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$")` plus the
// model's `_skip_layerwise_casting_patterns` (["norm"] for LTX): it keeps proj_in, proj_out and the norms too,
// but casts time_embed and caption_projection, and it casts the raw weights without a scale, where a weight
// below 2^-6 (most of them: LTX's are ~0.02) becomes an e4m3 subnormal with an absolute step of 2^-9; the
// per-channel scale here moves every row into e4m3's normal range.
//
// When: FP8 matmul only on request. FP8 storage on request, or, with weight_storage=auto, when the memory budget
// finds that the compute-dtype weights do not fit. Quantization happens once, at load, block by block as
// TransformerModel::from_weights builds them (TransformerRuntime::block_linears), so loading holds one block in
// the compute dtype beside the FP8 blocks, never the whole model twice.

/// @brief e4m3's largest finite value (float8_e4m3fn).
inline constexpr double kFp8E4m3Max = kernels::kFp8E4m3Max;

/// @brief FP8 codes [rows, cols] float8_e4m3fn and their float32 row scales [rows].
using Fp8Rows = kernels::Fp8Rows;

/// @brief Quantizes the rows of a 2-D floating-point tensor: `scale = max(amax(row) · (1/448), FLT_MIN)`,
///        `q = row / scale` rounded to e4m3 (Note [Weight storage]). Works on any device with float8 support,
///        the meta device included.
Fp8Rows quantize_fp8_rowwise(const at::Tensor& rows);

/// @brief `q · scale[:, None]` in `dtype` (float32 products, one rounding to `dtype`).
at::Tensor dequantize_fp8_rowwise(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype);

/// @brief An FP8-matmul layer applied to input rows already quantized (codes [M, K], scales [M], as
///        quantize_fp8_rowwise gives them, for example from a fused kernel that produced the rows): `at::_scaled_mm`
///        with both row scales and the bias in its epilogue. Returns [M, out] in `dtype`, the unquantized rows' dtype.
at::Tensor apply_fp8_matmul(const LinearWeights& l, const Fp8Rows& x_fp8, at::ScalarType dtype);

/// @brief `apply_linear(l, x)`, except that an FP8-matmul layer multiplies `x_fp8` (x's rows, already quantized:
///        quantize_fp8_rowwise(x.reshape({-1, K})) bit for bit) instead of quantizing x again. Any other layer, or
///        a null `x_fp8`, takes x.
at::Tensor apply_linear(const LinearWeights& l, const at::Tensor& x, const Fp8Rows* x_fp8);

/// @brief Whether `at::_scaled_mm` takes a linear of these sizes (both multiples of 16).
bool fp8_matmul_supported(int64_t in_features, int64_t out_features) noexcept;

/// @brief Converts a dense layer to `mode` (a no-op for LinearMode::dense): its weight is quantized and released.
///        Under fp8_matmul a layer whose sizes `at::_scaled_mm` does not take becomes fp8_storage. Returns the
///        mode the layer got.
LinearMode quantize_linear(LinearWeights& layer, LinearMode mode);

/// @brief Quantizes a block's attention and feed-forward linears to `mode` (Note [Weight storage]).
void quantize_block(TransformerBlockWeights& block, LinearMode mode);

/// @brief Quantizes every block of a loaded dense model, one linear at a time (each compute-dtype weight is
///        released as soon as its FP8 copy exists), and records `mode` in `model.runtime.block_linears`.
void quantize_transformer(TransformerModel& model, LinearMode mode);

/// @brief One of a block's linears: its checkpoint name inside the block and its sizes.
struct BlockLinearShape {
  std::string name;  ///< "attn1.to_q", ..., "ff.net.2"
  int64_t in_features = 0;   ///< columns of the weight
  int64_t out_features = 0;  ///< rows of the weight (one FP8 scale each)
};

/// @brief The linears a block quantizes, in checkpoint order, with their sizes under `config`.
std::vector<BlockLinearShape> block_linear_shapes(const TransformerConfig& config);

/// @brief Device bytes of the dequantized block-linear weight a forward holds at once under `runtime.block_linears`:
///        FP8 storage dequantizes each layer right before its matmul, so the largest such linear in `runtime.dtype`
///        (4·D × D: ff.net.0.proj / ff.net.2); under FP8 matmul only its layers that fall back to FP8 storage count;
///        0 for dense blocks. The request estimate and the weight budget add it to the transformer's phases.
int64_t fp8_dequantized_bytes(const TransformerConfig& config, const TransformerRuntime& runtime);

/// @brief What an FP8 model holds and which layers fell back from FP8 matmul, as diagnostics (an info line with
///        the modes and bytes, a warning naming each layer that fell back). Empty for a dense model.
std::vector<ltxmps::Diagnostic> fp8_diagnostics(const TransformerModel& model);

}  // namespace ltxmps::pipeline
