// FP8 (e4m3) quantization of a whole tensor with one scale, the input format of cuDNN's FP8 attention: an amax
// pass and a quantize pass, each reading the tensor once with every SM busy. The arithmetic is the row
// quantization's (fp8.cuh) on a single row, so codes and scale are quantize_fp8_rows_reference(x.reshape({1, -1}))
// bit for bit.

#include "fp8.cuh"

namespace ltxmps::kernels::cuda {
namespace {

constexpr int kTensorThreads = 256;
constexpr int kTensorUnroll = 4;  // vectors a thread loads before it uses the first

// Calls f(i, vector i) for every vector of x that this thread owns: a grid-stride walk in which each thread loads
// kTensorUnroll vectors, kTensorThreads apart, before it hands the first to f.
template <typename T, int VEC, typename F>
__device__ __forceinline__ void for_each_vector(const T* x, int64_t vectors, const F& f) {
  const int64_t step = int64_t(gridDim.x) * kTensorThreads * kTensorUnroll;
  for (int64_t base = int64_t(blockIdx.x) * kTensorThreads * kTensorUnroll + threadIdx.x; base < vectors;
       base += step) {
    Pack<T, VEC> v[kTensorUnroll];
#pragma unroll
    for (int u = 0; u < kTensorUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kTensorThreads;
      if (i < vectors) v[u] = load<T, VEC>(x + i * VEC);
    }
#pragma unroll
    for (int u = 0; u < kTensorUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kTensorThreads;
      if (i < vectors) f(i, v[u]);
    }
  }
}

// Note [Tensor amax by integer maximum]
// Non-negative float32 values order as their bit patterns read as unsigned integers, and every NaN pattern
// (exponent all ones, mantissa non-zero, sign cleared by fabsf) is above +inf's: an atomicMax on the bits of |x|
// is therefore the NaN-propagating maximum that ATen's reduction computes (a NaN wins, whatever its payload; the
// scale is NaN in both and so are the codes). The buffer starts at +0.
template <typename T, int VEC>
__global__ void __launch_bounds__(kTensorThreads) tensor_amax_kernel(const T* x, int64_t vectors, unsigned* amax) {
  float m[1] = {0.f};
  for_each_vector<T, VEC>(x, vectors, [&](int64_t, const Pack<T, VEC>& v) { m[0] = abs_max<T, VEC>(m[0], v); });
  block_reduce(m, NanMaxOp{});
  if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(fabsf(m[0])));
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kTensorThreads)
    tensor_quantize_kernel(const T* x, int64_t vectors, const unsigned* amax, uint8_t* q, float* scale_out) {
  const RowScale scale = row_scale(__uint_as_float(*amax));
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale_out = scale.scale;
  for_each_vector<T, VEC>(x, vectors,
                          [&](int64_t i, const Pack<T, VEC>& v) { store_quantized<T, VEC>(q + i * VEC, v, scale); });
}

}  // namespace

void launch_quantize_fp8_tensor(const QuantizeFp8TensorLaunch& launch) {
  const auto index = static_cast<c10::DeviceIndex>(launch.device_index);
  const c10::cuda::CUDAGuard guard(index);
  const auto stream = c10::cuda::getCurrentCUDAStream(index);
  const int64_t vectors = launch.numel / launch.vec;
  const int64_t per_block = int64_t(kTensorThreads) * kTensorUnroll;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, launch.device_index));
  // A few blocks per SM, each walking the tensor with a grid stride: enough loads in flight to fill the memory
  // pipes, few enough blocks that the amax's atomics stay a handful per SM.
  const int64_t wanted = (vectors + per_block - 1) / per_block, cap = int64_t(sms) * 8;
  const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, cap))));
  C10_CUDA_CHECK(cudaMemsetAsync(launch.amax, 0, sizeof(unsigned), stream));
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    const T* x = static_cast<const T*>(launch.x);
    tensor_amax_kernel<T, VEC><<<grid, kTensorThreads, 0, stream>>>(x, vectors, launch.amax);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    tensor_quantize_kernel<T, VEC><<<grid, kTensorThreads, 0, stream>>>(x, vectors, launch.amax,
                                                                         static_cast<uint8_t*>(launch.q), launch.scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ltxmps::kernels::cuda
