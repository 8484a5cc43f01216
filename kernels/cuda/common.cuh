#pragma once
// Building blocks of the row kernels: vector loads, rounding to the tensor dtype, block reductions (sum, NaN-
// propagating maximum), the launch shape and the dtype / vector-width dispatch.

#include "cuda_launch.hpp"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace ltxmps::kernels::cuda {

/// N consecutive elements, aligned for one (or, above 16 bytes, several) vector accesses.
template <typename T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store(T* p, const Pack<T, N>& value) {
  *reinterpret_cast<Pack<T, N>*>(p) = value;
}

/// The float32 value `v` rounded to T (round to nearest even, as ATen casts) and widened again: where ATen
/// writes an intermediate tensor of dtype T, the kernels round here (Note [Fused kernel rounding]).
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return static_cast<float>(static_cast<T>(v));
}
template <>
__device__ __forceinline__ float round_to<float>(float v) {
  return v;
}

/// A row of a Rows operand (typed).
template <typename T>
__device__ __forceinline__ const T* row_of(const Rows& r, int64_t b, int64_t t) {
  return static_cast<const T*>(r.data) + b * r.batch_stride + t * r.token_stride;
}

/// a + b: the row sums of the norms.
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

/// The larger of a and b, NaN when either is NaN (ATen's max reductions propagate NaN; fmaxf would drop it).
struct NanMaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return (a != a || a > b) ? a : b; }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  return warp_reduce(v, SumOp{});
}

/// Reduces each of the K values over the block with `op`, whose identity must be 0 (a sum, or a maximum of
/// magnitudes); blockDim.x a multiple of 32, at most 1024. Every thread gets the results. Safe to call repeatedly
/// in one kernel.
template <int K, typename Op>
__device__ __forceinline__ void block_reduce(float (&v)[K], Op op) {
  __shared__ float partial[K][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int i = 0; i < K; ++i) v[i] = warp_reduce(v[i], op);
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < K; ++i) partial[i][warp] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < K; ++i) v[i] = warp_reduce(lane < warps ? partial[i][lane] : 0.f, op);
  __syncthreads();
}

/// Sums each of the K values over the block (block_reduce with a sum).
template <int K>
__device__ __forceinline__ void block_sum(float (&v)[K]) {
  block_reduce(v, SumOp{});
}

/// One block per row: enough warps that each thread handles about one vector of the row, at most 1024 threads.
inline unsigned row_block_threads(int64_t dim, int vec) {
  const int64_t vectors = (dim + vec - 1) / vec;
  const int64_t warps = (vectors + 31) / 32;
  return static_cast<unsigned>(32 * (warps < 1 ? 1 : (warps > 32 ? 32 : warps)));
}

/// Calls f(T{}, std::integral_constant<int, VEC>{}) for the launch's dtype and vector width (1, 2, 4, 8, and 16
/// when MAX_VEC allows it: only the kernels that instantiate it pay for its compilation).
template <int MAX_VEC = 8, typename F>
void dispatch_dtype_vec(c10::ScalarType dtype, int vec, const F& f) {
  auto with_vec = [&](auto zero) {
    using T = decltype(zero);
    switch (vec) {
      case 1: f(T{}, std::integral_constant<int, 1>{}); return;
      case 2: f(T{}, std::integral_constant<int, 2>{}); return;
      case 4: f(T{}, std::integral_constant<int, 4>{}); return;
      case 8: f(T{}, std::integral_constant<int, 8>{}); return;
      case 16:
        if constexpr (MAX_VEC >= 16) {
          f(T{}, std::integral_constant<int, 16>{});
          return;
        }
        break;
      default: break;
    }
    TORCH_CHECK(false, "ltxmps_kernels: vector width ", vec, " is not 1, 2, 4, 8", MAX_VEC >= 16 ? " or 16" : "");
  };
  switch (dtype) {
    case c10::ScalarType::Float: with_vec(float{}); return;
    case c10::ScalarType::Half: with_vec(c10::Half{}); return;
    case c10::ScalarType::BFloat16: with_vec(c10::BFloat16{}); return;
    default: TORCH_CHECK(false, "ltxmps_kernels: no kernel for dtype ", dtype);
  }
}

}  // namespace ltxmps::kernels::cuda
