#pragma once
/// @file linear.hpp
/// @brief `torch.nn.Linear` weights, shared by the model structs (transformer, VAE time embedders), in the compute
///        dtype or in FP8 (Note [Weight storage] in fp8.hpp).

#include <ATen/core/Tensor.h>

namespace ltxmps::pipeline {

/// @brief How a linear layer keeps and multiplies its weight.
enum class LinearMode {
  /// `weight` in the compute dtype; `torch.nn.functional.linear`.
  dense,
  /// `weight_fp8` + `weight_scale`, dequantized to the input's dtype just before `torch.nn.functional.linear`.
  fp8_storage,
  /// `weight_fp8` + `weight_scale`; the input is quantized to e4m3 per row and multiplied by `at::_scaled_mm`.
  fp8_matmul,
};

/// @brief The name of a mode ("dense", "fp8 storage", "fp8 matmul").
const char* to_string(LinearMode mode) noexcept;

/// @brief `torch.nn.Linear` weights; `bias` is undefined for bias-free layers.
///
/// A dense layer holds `weight`; an FP8 layer holds `weight_fp8` and `weight_scale` instead (`weight` is then
/// undefined, so that code reading it directly fails loudly rather than multiplying FP8 codes).
struct LinearWeights {
  at::Tensor weight;        ///< [out, in] in the compute dtype (dense only)
  at::Tensor bias;          ///< [out] or undefined; always in the compute dtype
  at::Tensor weight_fp8{};    ///< [out, in] float8_e4m3fn (FP8 modes only)
  at::Tensor weight_scale{};  ///< [out] float32: row i of the weight is weight_fp8[i] · weight_scale[i]
  LinearMode mode = LinearMode::dense;  ///< which of the above is used, and how

  /// @brief Input features (the weight's second dimension, whichever representation holds it).
  int64_t in_features() const;
  /// @brief Output features.
  int64_t out_features() const;
};

/// @brief `y = x·weightᵀ + bias` (`torch.nn.functional.linear`), the one place the model structs apply a
///        `LinearWeights`, in any of its modes. The result has x's dtype.
at::Tensor apply_linear(const LinearWeights& l, const at::Tensor& x);

}  // namespace ltxmps::pipeline
