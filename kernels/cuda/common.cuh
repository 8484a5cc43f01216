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

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

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

// Note [Packed half-precision arithmetic]
// Where the reference adds or multiplies two bfloat16 (or float16) tensors, it computes each element in float32
// and rounds the result to the dtype. A float32 product of two such values is exact, and a float32 sum rounded
// again to the dtype is the sum rounded once (double rounding is innocuous for + and × when the wider significand
// has at least 2p + 2 bits, Figueroa 1995: 24 ≥ 18 for bfloat16, 24 ≥ 24 for float16). So one two-lane instruction
// in the dtype (HADD2 / HMUL2; their _rn forms, which the compiler may not contract into a fused multiply-add) gives
// the reference's bits for two elements, where the float32 route costs two conversions, the operation and a rounding
// per element. The norm and residual kernels, bound by instruction issue rather than by memory at the transformer's
// row widths, use them for every step between two T operands.
template <typename T>
struct PairOf {};
template <>
struct PairOf<c10::BFloat16> {
  using type = __nv_bfloat162;
};
template <>
struct PairOf<c10::Half> {
  using type = __half2;
};

/// Whether a Pack<T, VEC> takes the two-lane instructions: half-precision T, an even number of elements.
template <typename T, int VEC>
constexpr bool kPackedPairs = !std::is_same_v<T, float> && VEC % 2 == 0;

/// Elements j and j + 1 of a pack (j even) as the two-lane type.
template <typename T, int VEC>
__device__ __forceinline__ typename PairOf<T>::type pair_at(const Pack<T, VEC>& p, int j) {
  return *reinterpret_cast<const typename PairOf<T>::type*>(&p.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void set_pair(Pack<T, VEC>& p, int j, typename PairOf<T>::type value) {
  *reinterpret_cast<typename PairOf<T>::type*>(&p.v[j]) = value;
}

/// Two float32 values rounded to the dtype (round to nearest even, as the casts) in one instruction.
__device__ __forceinline__ __nv_bfloat162 round_pair(float a, float b, c10::BFloat16) {
  return __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ __half2 round_pair(float a, float b, c10::Half) {
  return __floats2half2_rn(a, b);
}

/// A row of a Rows operand (typed).
template <typename T>
__device__ __forceinline__ const T* row_of(const Rows& r, int64_t b, int64_t t) {
  if (r.token_index) {
    const int64_t row = r.token_index[b * r.index_batch_stride + t];
    t = row < 0 ? 0 : row >= r.index_rows ? r.index_rows - 1 : row;
  }
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

/// Reduces v with `op` over each group of blockDim.x lanes (a power of two, at most 32, with blockDim.x · blockDim.y
/// a multiple of 32): the row groups of Note [Short rows, several per block] in norm_modulate.cu. Every lane of the
/// warp must call it.
template <typename Op>
__device__ __forceinline__ float group_reduce(float v, Op op) {
  for (int offset = blockDim.x >> 1; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
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
  if (warps == 1) return;  // one warp: the shuffles were the whole reduction (uniform over the block)
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

// Note [Row kernels keep their vectors]
// The transformer's rows are short (2048–16384 elements, 4–32 KiB) and there are many of them (12288 at the
// benchmark shapes). With one vector per thread a block issues one load per thread, then waits through the whole
// DRAM latency and a block-wide reduction before it stores: too few bytes in flight per SM to approach the memory
// bandwidth (the 13B profile measured the block norm at about 3× what its bytes need). So a row kernel gets only as
// many threads as give each of them `cached` vectors, loads all of them before the first use or store (a store in
// between would keep the compiler from moving the later loads ahead of it) and keeps them in registers between the
// reduction and the output: a 2048-element bfloat16 row is two warps at four vectors a thread, and a row wider than
// max_threads · vec · cached elements re-reads its remainder.
inline unsigned rows_block_threads(int64_t cols, int vec, int max_threads, int cached) {
  const int64_t vectors = (cols + vec - 1) / vec;
  const int64_t threads = (vectors + cached - 1) / cached;
  const int64_t warps = (threads + 31) / 32, max_warps = max_threads / 32;
  return static_cast<unsigned>(32 * (warps < 1 ? 1 : (warps > max_warps ? max_warps : warps)));
}

/// The column of a thread's kept vector that starts at c: c itself inside the row, else the row's last vector (VEC
/// divides cols). A kept vector past the row's end is loaded from there and never stored or counted, so that no
/// bounds test stands between a thread's loads: the compiler can then issue them together.
template <int VEC>
__device__ __forceinline__ int64_t kept_column(int64_t c, int64_t cols) {
  return c < cols ? c : cols - VEC;
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
