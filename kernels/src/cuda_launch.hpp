#pragma once
// The interface between the host code (fused.cpp, any C++ compiler) and the CUDA launchers (kernels/cuda/*.cu,
// nvcc): plain pointers, strides and sizes, validated by the host code before a launch.

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace ltxmps::kernels::cuda {

/// The dtypes the kernels are written for (all operands of one of them).
inline bool kernel_dtype(c10::ScalarType t) {
  return t == c10::ScalarType::Float || t == c10::ScalarType::Half || t == c10::ScalarType::BFloat16;
}

/// A [B, T, D] operand read row by row: element (b, t, d) is at data + b·batch_stride + t·token_stride + d
/// (strides in elements; 0 broadcasts a size-1 dimension). The last dimension is contiguous. With `token_index`,
/// token t of batch entry b reads row token_index[b·index_batch_stride + t] (clamped to [0, index_rows)) instead of
/// row t: per-token modulation drawn from a few rows (Note [Per-token modulation rows] in fused.cpp).
struct Rows {
  const void* data = nullptr;
  int64_t batch_stride = 0;
  int64_t token_stride = 0;
  const int32_t* token_index = nullptr;
  int64_t index_batch_stride = 0;
  int64_t index_rows = 0;
};

/// out = norm(h)·(1 + scale) + shift per row of D, with h = x, or h = x + y·gate (gate optional) written to
/// `residual` when y is given. RMS norm (optional weight) or layer norm without affine. With `silu` (RMS norm
/// only), out is the SiLU of that, and scale / shift may both be null: out = silu(norm(h)).
struct NormModulateLaunch {
  c10::ScalarType dtype = c10::ScalarType::Float;
  int device_index = 0;
  int64_t batch = 0, tokens = 0, dim = 0;
  int vec = 1;  ///< elements per vector access: 1, 2, 4 or 8, dividing dim and every stride
  bool layer_norm = false;
  bool silu = false;
  float eps = 0.f;
  Rows x, y, gate, scale, shift;  ///< y, gate: null unless the residual variant
  const void* weight = nullptr;   ///< [D] or null
  void* residual = nullptr;       ///< contiguous [B, S, D]: x + y·gate, when y is given
  void* out = nullptr;            ///< contiguous [B, S, D]
  void* q = nullptr;              ///< optional: e4m3 codes of `out`'s rows, contiguous [B·S, D]
  float* q_scale = nullptr;       ///< with q: their float32 scales [B·S]
};

/// out = x + y·gate, [B, S, D] rows; out contiguous.
struct GatedResidualLaunch {
  c10::ScalarType dtype = c10::ScalarType::Float;
  int device_index = 0;
  int64_t batch = 0, tokens = 0, dim = 0;
  int vec = 1;
  Rows x, y, gate;
  void* out = nullptr;
  void* q = nullptr;         ///< optional: e4m3 codes of `out`'s rows, contiguous [B·S, D]
  float* q_scale = nullptr;  ///< with q: their float32 scales [B·S]
};

/// RMS norm (with weight) of the q row and, when k is given, of the k row of the same token; then, when cos is
/// given, the interleaved rotary embedding of both with the float32 cos / sin row of that token.
struct QkNormRopeLaunch {
  c10::ScalarType dtype = c10::ScalarType::Float;
  int device_index = 0;
  int64_t batch = 0, tokens = 0, dim = 0;
  int vec = 1;  ///< even when cos is given
  float eps = 0.f;
  Rows q, k, cos, sin;  ///< k, cos, sin: optional (cos and sin together)
  const void* q_weight = nullptr;
  const void* k_weight = nullptr;
  void* q_out = nullptr;  ///< contiguous
  void* k_out = nullptr;  ///< contiguous, when k is given
  /// Instead of q_out / k_out: e4m3 codes of the outputs (contiguous), each tensor with the one scale
  /// max(max|weight| · fp8_bound_factor, FLT_MIN) written to *q_scale / *k_scale (Note [FP8 q and k]).
  void* q_fp8 = nullptr;
  void* k_fp8 = nullptr;
  float* q_scale = nullptr;
  float* k_scale = nullptr;
  float fp8_bound_factor = 0.f;
};

/// FP8 row quantization: row r of x [rows, cols] starts at x + r·row_stride (elements of dtype, last dimension
/// contiguous); its e4m3 codes go to q + r·cols, its float32 scale to scale[r]. With `gelu`, the rows quantized are
/// the tanh GELU of x's, also written to `activation` (contiguous [rows, cols] of dtype) when that is given.
struct QuantizeFp8Launch {
  c10::ScalarType dtype = c10::ScalarType::Float;  ///< of x
  int device_index = 0;
  int64_t rows = 0, cols = 0, row_stride = 0;
  int vec = 1;  ///< elements per vector access: 1, 2, 4 or 8, dividing cols and row_stride
  const void* x = nullptr;
  void* q = nullptr;       ///< contiguous [rows, cols] float8_e4m3fn
  float* scale = nullptr;  ///< [rows]
  bool gelu = false;
  void* activation = nullptr;
};

/// FP8 row dequantization: out[r, c] = code(q + r·row_stride + c) · scale[r], rounded to dtype.
struct DequantizeFp8Launch {
  c10::ScalarType dtype = c10::ScalarType::Float;  ///< of out
  int device_index = 0;
  int64_t rows = 0, cols = 0, row_stride = 0;
  int vec = 1;  ///< codes per vector access: 1, 2, 4, 8 or 16, dividing cols and row_stride
  const void* q = nullptr;
  const float* scale = nullptr;  ///< contiguous [rows]
  void* out = nullptr;           ///< contiguous [rows, cols]
};

/// FP8 quantization of a whole contiguous tensor with one scale (cuDNN FP8 attention's inputs): its codes go to q
/// (numel bytes), its float32 scale to *scale; amax is a device word the launch uses as scratch.
struct QuantizeFp8TensorLaunch {
  c10::ScalarType dtype = c10::ScalarType::Float;  ///< of x
  int device_index = 0;
  int64_t numel = 0;
  int vec = 1;  ///< elements per vector access: 1, 2, 4 or 8, dividing numel
  const void* x = nullptr;
  void* q = nullptr;
  float* scale = nullptr;
  unsigned* amax = nullptr;
};

/// x[r, c] += bias[c] in place: x is `rows` rows of `channels` contiguous elements, bias [channels].
struct ChannelBiasLaunch {
  c10::ScalarType dtype = c10::ScalarType::Float;
  int device_index = 0;
  int64_t rows = 0, channels = 0;
  int vec = 1;  ///< elements per vector access: 1, 2, 4 or 8, dividing channels
  void* x = nullptr;
  const void* bias = nullptr;
};

void launch_norm_modulate(const NormModulateLaunch& launch);
void launch_gated_residual(const GatedResidualLaunch& launch);
void launch_qk_norm_rope(const QkNormRopeLaunch& launch);
void launch_quantize_fp8(const QuantizeFp8Launch& launch);
void launch_dequantize_fp8(const DequantizeFp8Launch& launch);
void launch_quantize_fp8_tensor(const QuantizeFp8TensorLaunch& launch);
void launch_channel_bias(const ChannelBiasLaunch& launch);

}  // namespace ltxmps::kernels::cuda
