#pragma once
/// @file linear.hpp
/// @brief `torch.nn.Linear` weights, shared by the model structs (transformer, VAE time embedders).

#include <ATen/core/Tensor.h>

namespace ltxmps::pipeline {

/// @brief `torch.nn.Linear` weights; `bias` is undefined for bias-free layers.
struct LinearWeights {
  at::Tensor weight;  ///< [out, in]
  at::Tensor bias;    ///< [out] or undefined
};

/// @brief `y = x·weightᵀ + bias` (`torch.nn.functional.linear`), the one place the model structs apply a
///        `LinearWeights`.
at::Tensor apply_linear(const LinearWeights& l, const at::Tensor& x);

}  // namespace ltxmps::pipeline
