// LinearWeights applied (torch.nn.functional.linear), dense or FP8 (Note [Weight storage] in fp8.hpp).

#include "ltxmps_pipeline/linear.hpp"

#include "ltxmps_pipeline/fp8.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

namespace ltxmps::pipeline {

const char* to_string(LinearMode mode) noexcept {
  switch (mode) {
    case LinearMode::dense: return "dense";
    case LinearMode::fp8_storage: return "fp8 storage";
    case LinearMode::fp8_matmul: return "fp8 matmul";
  }
  return "?";
}

int64_t LinearWeights::in_features() const { return (mode == LinearMode::dense ? weight : weight_fp8).size(1); }
int64_t LinearWeights::out_features() const { return (mode == LinearMode::dense ? weight : weight_fp8).size(0); }

namespace {

std::optional<at::Tensor> bias_of(const LinearWeights& l) {
  return l.bias.defined() ? std::optional<at::Tensor>(l.bias) : std::nullopt;
}

// x [..., K] -> its FP8 rows [M, K] (quantized here unless the caller has them), then apply_fp8_matmul.
at::Tensor scaled_mm_linear(const LinearWeights& l, const at::Tensor& x, const Fp8Rows* x_fp8) {
  const int64_t K = l.weight_fp8.size(1), N = l.weight_fp8.size(0);
  auto rows = x.reshape({-1, K});
  if (rows.size(0) == 0)
    return at::linear(x, dequantize_fp8_rowwise(l.weight_fp8, l.weight_scale, x.scalar_type()), bias_of(l));
  auto out = apply_fp8_matmul(l, x_fp8 ? *x_fp8 : quantize_fp8_rowwise(rows.contiguous()), x.scalar_type());
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  return out.view(sizes);
}

}  // namespace

at::Tensor apply_linear(const LinearWeights& l, const at::Tensor& x) {
  return apply_linear(l, x, nullptr);
}

// x_q [M, K] row-major with scale_a [M, 1]; w_q.t() is [K, N] column-major with scale_b [1, N] (the layouts
// at::_scaled_mm takes). Both scales and the bias are applied in the GEMM's epilogue, except a bias with a float32
// output, which the CUDA kernels refuse and which is then added after.
at::Tensor apply_fp8_matmul(const LinearWeights& l, const Fp8Rows& x_fp8, at::ScalarType dtype) {
  LTXMPS_CHECK(l.mode == LinearMode::fp8_matmul, "apply_fp8_matmul: the layer is ", to_string(l.mode),
               ", not fp8 matmul");
  LTXMPS_CHECK(x_fp8.q.dim() == 2 && x_fp8.q.size(1) == l.weight_fp8.size(1) && x_fp8.scale.dim() == 1 &&
                   x_fp8.scale.size(0) == x_fp8.q.size(0),
               "apply_fp8_matmul: expected FP8 rows [M, ", l.weight_fp8.size(1), "] with scales [M], got ",
               x_fp8.q.sizes(), " and ", x_fp8.scale.sizes());
  const bool bias_in_gemm = l.bias.defined() && dtype != at::kFloat;
  auto out = at::_scaled_mm(x_fp8.q, l.weight_fp8.t(), x_fp8.scale.unsqueeze(1), l.weight_scale.unsqueeze(0),
                            bias_in_gemm ? bias_of(l) : std::nullopt, /*scale_result=*/std::nullopt, dtype,
                            /*use_fast_accum=*/false);
  if (l.bias.defined() && !bias_in_gemm) out.add_(l.bias);
  return out;
}

at::Tensor apply_linear(const LinearWeights& l, const at::Tensor& x, const Fp8Rows* x_fp8) {
  switch (l.mode) {
    case LinearMode::dense:
      return at::linear(x, l.weight, bias_of(l));
    case LinearMode::fp8_storage:
      return at::linear(x, dequantize_fp8_rowwise(l.weight_fp8, l.weight_scale, x.scalar_type()), bias_of(l));
    case LinearMode::fp8_matmul:
      LTXMPS_CHECK(x.size(-1) == l.weight_fp8.size(1), "apply_linear: input has ", x.size(-1),
                   " features, the FP8 layer takes ", l.weight_fp8.size(1));
      return scaled_mm_linear(l, x, x_fp8);
  }
  throw Error("apply_linear: unknown LinearMode");
}

}  // namespace ltxmps::pipeline
