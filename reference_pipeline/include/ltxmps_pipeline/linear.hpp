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

}  // namespace ltxmps::pipeline
