// FP8 (e4m3) rows: the row-wise quantization (amax, scale, codes) in one kernel, and the dequantization of a
// stored weight in one pass. One thread block per row; the arithmetic is the reference's, operation for operation
// (Note [FP8 row quantization] in fused.cpp), so codes, scales and dequantized values are its bits (the GELU variant
// quantizes its own GELU values that way: Note [GELU before the FP8 rows] in fp8.cuh).

#include "fp8.cuh"

namespace ltxmps::kernels::cuda {
namespace {

// The vectors of a row that each thread keeps in registers between the amax and the division (Note [Row kernels
// keep their vectors] in common.cuh): rows up to blockDim.x · VEC · kCachedVectors elements (32768 bfloat16 at the
// 512-thread cap) are read from memory once; a 2048-element bf16 row is one warp, an 8192-element one four.
constexpr int kCachedVectors = 8;

// The GELU variant spends more instructions per value (the GELU, the division, the conversions): its arithmetic,
// not its bytes, bounds it, so it keeps half as many vectors per thread in twice as many threads, which halves its
// registers and doubles the warps that can issue while others wait on memory.
constexpr int kGeluCachedVectors = 4;

template <bool GELU>
constexpr int cached_vectors() {
  return GELU ? kGeluCachedVectors : kCachedVectors;
}

// The register array of kCachedVectors vectors costs up to ~100 registers per thread: the blocks are capped so
// that one always fits an SM's 64 Ki registers (the kernel's launch bounds hold the compiler to it); wider rows
// re-read their remainder.
constexpr int kQuantizeMaxThreads = 512;

// One loaded vector of the row as the quantization sees it: the input, or its tanh GELU (written to `activation`
// when that is given: the rows in dtype beside their codes).
template <typename T, int VEC, bool GELU>
__device__ __forceinline__ Pack<T, VEC> as_quantized(const Pack<T, VEC>& v, T* activation, int64_t c) {
  if constexpr (!GELU) return v;
  const Pack<T, VEC> g = gelu_tanh<T, VEC>(v);
  if (activation) store<T, VEC>(activation + c, g);
  return g;
}

template <typename T, int VEC, bool GELU>
__device__ __forceinline__ Pack<T, VEC> row_vector(const T* x, T* activation, int64_t c) {
  return as_quantized<T, VEC, GELU>(load<T, VEC>(x + c), activation, c);
}

template <typename T, int VEC, bool GELU>
__global__ void __launch_bounds__(kQuantizeMaxThreads) quantize_fp8_kernel(QuantizeFp8Launch p) {
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.row_stride;
  T* activation = p.activation ? static_cast<T*>(p.activation) + row * p.cols : nullptr;
  uint8_t* q = static_cast<uint8_t*>(p.q) + row * p.cols;
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
  constexpr int kCached = cached_vectors<GELU>();
  Pack<T, VEC> cached[kCached];
  // Every load before the first use: a use between two loads would wait for the first one's whole latency.
#pragma unroll
  for (int i = 0; i < kCached; ++i) {
    const int64_t c = first + i * step;
    if (c < p.cols) cached[i] = load<T, VEC>(x + c);
  }
  float amax[1] = {0.f};
#pragma unroll
  for (int i = 0; i < kCached; ++i) {
    const int64_t c = first + i * step;
    if (c < p.cols) {
      cached[i] = as_quantized<T, VEC, GELU>(cached[i], activation, c);
      amax[0] = abs_max<T, VEC>(amax[0], cached[i]);
    }
  }
  for (int64_t c = first + kCached * step; c < p.cols; c += step)
    amax[0] = abs_max<T, VEC>(amax[0], row_vector<T, VEC, GELU>(x, activation, c));
  block_reduce(amax, NanMaxOp{});
  const RowScale scale = row_scale(amax[0]);
  if (threadIdx.x == 0) p.scale[row] = scale.scale;
#pragma unroll
  for (int i = 0; i < kCached; ++i) {
    const int64_t c = first + i * step;
    if (c < p.cols) store_quantized<T, VEC>(q + c, cached[i], scale);
  }
  // The remainder is read again (and its GELU recomputed, the same values: the activation is not re-read).
  for (int64_t c = first + kCached * step; c < p.cols; c += step)
    store_quantized<T, VEC>(q + c, row_vector<T, VEC, GELU>(x, nullptr, c), scale);
}

// Note [FP8 dequantize launch shape]
// A stored weight is a few thousand short rows (4096 or 16384 codes). One block per row with one vector per thread
// kept a single 16-byte load in flight per thread and spent much of its time starting and retiring blocks: the 13B
// forward's 480 dequantizations took about 3.6× what their bytes need at this bandwidth. The kernel walks the
// weight as one sequence of vectors instead (VEC divides cols, so a vector never straddles two rows), each thread
// loading kDequantizeUnroll vectors and their row scales before it converts the first, in blocks of
// kDequantizeThreads. Index is the vector index's type: 32 bits where the count allows (a division per vector
// finds its row), 64 otherwise.
constexpr int kDequantizeUnroll = 2;
constexpr int kDequantizeThreads = 256;
// At least four blocks per SM (at most 64 registers a thread; two 16-code vectors in flight per thread, 8 KiB per
// block): more vectors per thread spill registers in the 16-code variants.
constexpr int kDequantizeMinBlocks = 4;

// q.to(dtype).mul_(scale): the code is exact in dtype, the product is float32, rounded once to T.
template <typename T, int VEC, typename Index>
__global__ void __launch_bounds__(kDequantizeThreads, kDequantizeMinBlocks)
    dequantize_fp8_kernel(DequantizeFp8Launch p) {
  const Index per_row = static_cast<Index>(p.cols / VEC), total = static_cast<Index>(p.rows) * per_row;
  const Index first = static_cast<Index>(blockIdx.x) * (kDequantizeThreads * kDequantizeUnroll) + threadIdx.x;
  const uint8_t* q = static_cast<const uint8_t*>(p.q);
  T* out = static_cast<T*>(p.out);
  Pack<uint8_t, VEC> codes[kDequantizeUnroll];
  float scale[kDequantizeUnroll];
#pragma unroll
  for (int u = 0; u < kDequantizeUnroll; ++u) {
    const Index i = first + u * kDequantizeThreads;
    if (i < total) {
      const Index row = i / per_row;
      codes[u] = load<uint8_t, VEC>(q + int64_t(row) * p.row_stride + (i - row * per_row) * VEC);
      scale[u] = p.scale[row];
    }
  }
  // The row and column again rather than kept: registers, not the division, limit this kernel.
#pragma unroll
  for (int u = 0; u < kDequantizeUnroll; ++u) {
    const Index i = first + u * kDequantizeThreads;
    if (i < total) {
      const Index row = i / per_row;
      float v[VEC];
      from_e4m3<VEC>(codes[u], v);
      Pack<T, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(__fmul_rn(v[j], scale[u]));
      store<T, VEC>(out + int64_t(row) * p.cols + (i - row * per_row) * VEC, o);
    }
  }
}

}  // namespace

void launch_quantize_fp8(const QuantizeFp8Launch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const dim3 grid(static_cast<unsigned>(launch.rows));
  const dim3 block(rows_block_threads(launch.cols, launch.vec, kQuantizeMaxThreads,
                                      launch.gelu ? cached_vectors<true>() : cached_vectors<false>()));
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    if (launch.gelu)
      quantize_fp8_kernel<T, VEC, true><<<grid, block, 0, stream>>>(launch);
    else
      quantize_fp8_kernel<T, VEC, false><<<grid, block, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_dequantize_fp8(const DequantizeFp8Launch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const int64_t vectors = launch.rows * (launch.cols / launch.vec);
  const int64_t per_block = int64_t(kDequantizeThreads) * kDequantizeUnroll;
  const dim3 grid(static_cast<unsigned>((vectors + per_block - 1) / per_block));
  const dim3 block(kDequantizeThreads);
  const bool narrow = vectors + per_block <= int64_t(UINT32_MAX);  // the last block's indices fit too
  dispatch_dtype_vec</*MAX_VEC=*/16>(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    if (narrow)
      dequantize_fp8_kernel<T, VEC, uint32_t><<<grid, block, 0, stream>>>(launch);
    else
      dequantize_fp8_kernel<T, VEC, int64_t><<<grid, block, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ltxmps::kernels::cuda
