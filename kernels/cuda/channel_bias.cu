// The bias of a convolution whose output is channels-last: x[r, c] += bias[c] over rows of C contiguous channels
// (Note [Channel bias on channels-last rows] in fused.cpp), rounded as ATen's add.

#include "common.cuh"

namespace ltxmps::kernels::cuda {
namespace {

constexpr int kBiasThreads = 256;
constexpr int kBiasRows = 4;  // rows a thread loads before its first store

// a + b per element, rounded to T once (in pairs: Note [Packed half-precision arithmetic]).
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> add(const Pack<T, VEC>& a, const Pack<T, VEC>& b) {
  Pack<T, VEC> o;
  if constexpr (kPackedPairs<T, VEC>) {
#pragma unroll
    for (int j = 0; j < VEC; j += 2) set_pair(o, j, __hadd2_rn(pair_at(a, j), pair_at(b, j)));
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      o.v[j] = static_cast<T>(__fadd_rn(static_cast<float>(a.v[j]), static_cast<float>(b.v[j])));
  }
  return o;
}

// threadIdx.x walks the row's vectors and keeps that vector of the bias in registers; threadIdx.y and the blocks walk
// the rows, kBiasRows loads in flight per thread. Consecutive lanes touch consecutive vectors of a row (or of the
// next row), so a warp's accesses are one contiguous stretch.
template <typename T, int VEC>
__global__ void __launch_bounds__(kBiasThreads) channel_bias_kernel(ChannelBiasLaunch p) {
  const int64_t vectors = p.channels / VEC;
  T* x = static_cast<T*>(p.x);
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t rows_per_pass = int64_t(blockDim.y) * kBiasRows;
  const int64_t row_step = int64_t(gridDim.x) * rows_per_pass;
  for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
    const Pack<T, VEC> b = load<T, VEC>(bias + v * VEC);
    for (int64_t base = int64_t(blockIdx.x) * rows_per_pass + threadIdx.y; base < p.rows; base += row_step) {
      Pack<T, VEC> h[kBiasRows];
#pragma unroll
      for (int u = 0; u < kBiasRows; ++u) {
        const int64_t r = base + int64_t(u) * blockDim.y;
        if (r < p.rows) h[u] = load<T, VEC>(x + r * p.channels + v * VEC);
      }
#pragma unroll
      for (int u = 0; u < kBiasRows; ++u) {
        const int64_t r = base + int64_t(u) * blockDim.y;
        if (r < p.rows) store<T, VEC>(x + r * p.channels + v * VEC, add<T, VEC>(h[u], b));
      }
    }
  }
}

}  // namespace

void launch_channel_bias(const ChannelBiasLaunch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const int64_t vectors = launch.channels / launch.vec;
  const unsigned bx = static_cast<unsigned>(vectors < kBiasThreads ? vectors : kBiasThreads);
  const unsigned by = kBiasThreads / bx;
  const int64_t blocks = (launch.rows + int64_t(by) * kBiasRows - 1) / (int64_t(by) * kBiasRows);
  const dim3 grid(static_cast<unsigned>(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20)));
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    channel_bias_kernel<T, VEC><<<grid, dim3(bx, by), 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ltxmps::kernels::cuda
