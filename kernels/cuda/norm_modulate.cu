// The block norms with AdaLN modulation (RMS norm, or the output head's layer norm), optionally preceded by the
// residual sum, and the gated residual. One thread block per [D] row; float32 arithmetic with the reference's
// rounding points (Note [Fused kernel rounding] in fused.hpp). Either may also quantize its output rows to FP8
// (Note [Fused FP8 rows] in fp8.cuh).

#include "fp8.cuh"

namespace ltxmps::kernels::cuda {
namespace {

// h = x + y·gate (or x + y without a gate) over one vector: rounded after the product and after the sum, as
// `x + y * gate` in ATen.
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> residual_sum(const T* x, const T* y, const T* gate, int64_t c) {
  const Pack<T, VEC> xv = load<T, VEC>(x + c), yv = load<T, VEC>(y + c);
  Pack<T, VEC> gv;
  if (gate) gv = load<T, VEC>(gate + c);
  Pack<T, VEC> h;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float y_j = static_cast<float>(yv.v[j]);
    const float t = gate ? round_to<T>(__fmul_rn(y_j, static_cast<float>(gv.v[j]))) : y_j;
    h.v[j] = static_cast<T>(__fadd_rn(static_cast<float>(xv.v[j]), t));
  }
  return h;
}

// Pass 1 of a row: the residual sum (written to `residual`) or the input, accumulated into the row statistic:
// the sum of squares (RMS norm) or the sum (layer norm).
template <typename T, int VEC, bool LAYER_NORM>
__device__ float first_pass(const NormModulateLaunch& p, int64_t b, int64_t t, int64_t row) {
  const T* x = row_of<T>(p.x, b, t);
  const T* y = p.y.data ? row_of<T>(p.y, b, t) : nullptr;
  const T* gate = p.gate.data ? row_of<T>(p.gate, b, t) : nullptr;
  T* residual = y ? static_cast<T*>(p.residual) + row * p.dim : nullptr;
  float acc = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * VEC; c < p.dim; c += int64_t(blockDim.x) * VEC) {
    Pack<T, VEC> h;
    if (y) {
      h = residual_sum<T, VEC>(x, y, gate, c);
      store<T, VEC>(residual + c, h);
    } else {
      h = load<T, VEC>(x + c);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float v = static_cast<float>(h.v[j]);
      acc = LAYER_NORM ? __fadd_rn(acc, v) : __fmaf_rn(v, v, acc);
    }
  }
  return acc;
}

// The layer norm's variance: the sum of squared deviations from `mean` (a second read of the row, from L1/L2).
template <typename T, int VEC>
__device__ float deviation_pass(const T* h, int64_t dim, float mean) {
  float acc = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * VEC; c < dim; c += int64_t(blockDim.x) * VEC) {
    const Pack<T, VEC> v = load<T, VEC>(h + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float d = __fsub_rn(static_cast<float>(v.v[j]), mean);
      acc = __fmaf_rn(d, d, acc);
    }
  }
  return acc;
}

template <typename T, int VEC, bool LAYER_NORM>
__global__ void norm_modulate_kernel(NormModulateLaunch p) {
  const int64_t row = blockIdx.x, b = row / p.tokens, t = row % p.tokens;
  float stat[1] = {first_pass<T, VEC, LAYER_NORM>(p, b, t, row)};
  block_sum<1>(stat);
  const T* h = p.y.data ? static_cast<const T*>(p.residual) + row * p.dim : row_of<T>(p.x, b, t);
  const float inv_dim = 1.f / static_cast<float>(p.dim);
  float mean = 0.f, rstd;
  if constexpr (LAYER_NORM) {
    mean = stat[0] * inv_dim;
    float var[1] = {deviation_pass<T, VEC>(h, p.dim, mean)};
    block_sum<1>(var);
    rstd = rsqrtf(__fadd_rn(var[0] * inv_dim, p.eps));
  } else {
    rstd = rsqrtf(__fadd_rn(stat[0] * inv_dim, p.eps));
  }
  const T* weight = static_cast<const T*>(p.weight);
  const T* scale = row_of<T>(p.scale, b, t);
  const T* shift = row_of<T>(p.shift, b, t);
  T* out = static_cast<T*>(p.out) + row * p.dim;
  float amax = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * VEC; c < p.dim; c += int64_t(blockDim.x) * VEC) {
    const Pack<T, VEC> hv = load<T, VEC>(h + c), sc = load<T, VEC>(scale + c), sh = load<T, VEC>(shift + c);
    Pack<T, VEC> w;
    if (weight) w = load<T, VEC>(weight + c);
    Pack<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float v = static_cast<float>(hv.v[j]);
      float n = round_to<T>(LAYER_NORM ? __fmul_rn(__fsub_rn(v, mean), rstd) : __fmul_rn(v, rstd));
      if (weight) n = round_to<T>(__fmul_rn(n, static_cast<float>(w.v[j])));
      const float one_plus_scale = round_to<T>(__fadd_rn(1.f, static_cast<float>(sc.v[j])));
      const float modulated = round_to<T>(__fmul_rn(n, one_plus_scale));
      o.v[j] = static_cast<T>(__fadd_rn(modulated, static_cast<float>(sh.v[j])));
    }
    store<T, VEC>(out + c, o);
    if (p.q) amax = abs_max<T, VEC>(amax, o);
  }
  if (p.q) quantize_written_row<T, VEC>(out, p.dim, amax, static_cast<uint8_t*>(p.q) + row * p.dim, p.q_scale + row);
}

template <typename T, int VEC>
__global__ void gated_residual_kernel(GatedResidualLaunch p) {
  const int64_t row = blockIdx.x, b = row / p.tokens, t = row % p.tokens;
  const T* x = row_of<T>(p.x, b, t);
  const T* y = row_of<T>(p.y, b, t);
  const T* gate = row_of<T>(p.gate, b, t);
  T* out = static_cast<T*>(p.out) + row * p.dim;
  float amax = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * VEC; c < p.dim; c += int64_t(blockDim.x) * VEC) {
    const Pack<T, VEC> h = residual_sum<T, VEC>(x, y, gate, c);
    store<T, VEC>(out + c, h);
    if (p.q) amax = abs_max<T, VEC>(amax, h);
  }
  if (p.q) quantize_written_row<T, VEC>(out, p.dim, amax, static_cast<uint8_t*>(p.q) + row * p.dim, p.q_scale + row);
}

}  // namespace

void launch_norm_modulate(const NormModulateLaunch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const dim3 grid(static_cast<unsigned>(launch.batch * launch.tokens));
  const dim3 block(row_block_threads(launch.dim, launch.vec));
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    if (launch.layer_norm)
      norm_modulate_kernel<T, VEC, true><<<grid, block, 0, stream>>>(launch);
    else
      norm_modulate_kernel<T, VEC, false><<<grid, block, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_gated_residual(const GatedResidualLaunch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const dim3 grid(static_cast<unsigned>(launch.batch * launch.tokens));
  const dim3 block(row_block_threads(launch.dim, launch.vec));
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    gated_residual_kernel<T, VEC><<<grid, block, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ltxmps::kernels::cuda
