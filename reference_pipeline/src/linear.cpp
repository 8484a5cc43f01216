// LinearWeights applied (torch.nn.functional.linear).

#include "ltxmps_pipeline/linear.hpp"

#include <ATen/ATen.h>

namespace ltxmps::pipeline {

at::Tensor apply_linear(const LinearWeights& l, const at::Tensor& x) {
  return at::linear(x, l.weight, l.bias.defined() ? std::optional<at::Tensor>(l.bias) : std::nullopt);
}

}  // namespace ltxmps::pipeline
