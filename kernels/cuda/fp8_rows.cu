// FP8 (e4m3) rows: the row-wise quantization (amax, scale, codes) in one kernel, and the dequantization of a
// stored weight in one pass. One thread block per row; the arithmetic is the reference's, operation for operation
// (Note [FP8 row quantization] in fused.cpp), so codes, scales and dequantized values are its bits.

#include "common.cuh"

#include <c10/util/Float8_e4m3fn.h>

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cfloat>

namespace ltxmps::kernels::cuda {
namespace {

// float(1/448), the factor the reference multiplies amax by (1/448 in binary repeats 001: rounding it to double
// first cannot land on a float32 midpoint, so this is also float(double(1/448))).
constexpr float kInverseE4m3Max = 1.0f / 448.0f;

// The vectors of a row that each thread keeps in registers between the amax and the division: rows up to
// blockDim.x · VEC · kCachedVectors elements (32768 bfloat16 at the 512-thread cap) are read from memory once.
//
// Note [FP8 row launch shape]
// The transformer's rows are short (2048–16384 elements, 4–32 KiB) and there are many of them (12288 at the 2B
// benchmark shape). With one vector per thread, a block issues one load per thread, then waits through the whole
// DRAM latency and a block-wide reduction before it stores: too few bytes in flight per SM to approach the memory
// bandwidth (the profile measured 63 µs per launch, about 3× what the bytes need). So a quantize block gets only as many
// threads as give each of them kCachedVectors vectors, all loaded before the first use: a 2048-element bf16 row is
// one warp, an 8192-element one four.
constexpr int kCachedVectors = 8;

// The register array of kCachedVectors vectors costs up to ~100 registers per thread: the blocks are capped so
// that one always fits an SM's 64 Ki registers (the kernel's launch bounds hold the compiler to it); wider rows
// re-read their remainder.
constexpr int kQuantizeMaxThreads = 512;

inline unsigned rows_block_threads(int64_t cols, int vec, int max_threads) {
  const int64_t vectors = (cols + vec - 1) / vec;
  const int64_t threads = (vectors + kCachedVectors - 1) / kCachedVectors;
  const int64_t warps = (threads + 31) / 32, max_warps = max_threads / 32;
  return static_cast<unsigned>(32 * (warps < 1 ? 1 : (warps > max_warps ? max_warps : warps)));
}

// Note [e4m3 conversions]
// ATen stores a float as float8_e4m3fn with c10's software conversion (round to nearest even). The hardware
// conversion (cvt.rn.satfinite, two values per instruction on sm_89+, emulated by cuda_fp8.h below) rounds the
// same way for every |v| < 464, the midpoint between 448 and the first value past e4m3's range; above it, for
// infinities and NaN, LibTorch releases differ (NaN or saturation, the NaN's sign kept or not), so those values
// take c10's conversion, the one the reference runs. The other way, every code is exact in float16 and float32;
// only the NaN codes (0x7f, 0xff) take c10's conversion, so that even their payload is the reference's.
template <int VEC>
__device__ __forceinline__ Pack<uint8_t, VEC> to_e4m3(const float (&v)[VEC]) {
  Pack<uint8_t, VEC> out;
  bool in_range = true;
#pragma unroll
  for (int j = 0; j < VEC; ++j) in_range = in_range && fabsf(v[j]) < 464.f;  // false for NaN
  if (!in_range) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out.v[j] = c10::Float8_e4m3fn(v[j]).x;
  } else if constexpr (VEC == 1) {
    out.v[0] = __nv_cvt_float_to_fp8(v[0], __NV_SATFINITE, __NV_E4M3);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; j += 2) {
      const __nv_fp8x2_storage_t two = __nv_cvt_float2_to_fp8x2(make_float2(v[j], v[j + 1]), __NV_SATFINITE, __NV_E4M3);
      out.v[j] = static_cast<uint8_t>(two & 0xffu);  // the low byte holds the first value
      out.v[j + 1] = static_cast<uint8_t>(two >> 8);
    }
  }
  return out;
}

__device__ __forceinline__ float e4m3_value(uint8_t code, unsigned short half_bits) {
  if ((code & 0x7fu) == 0x7fu) return static_cast<float>(c10::Float8_e4m3fn(code, c10::Float8_e4m3fn::from_bits()));
  return __half2float(__ushort_as_half(half_bits));
}

template <int VEC>
__device__ __forceinline__ void from_e4m3(const Pack<uint8_t, VEC>& codes, float (&v)[VEC]) {
  if constexpr (VEC == 1) {
    v[0] = e4m3_value(codes.v[0], __nv_cvt_fp8_to_halfraw(codes.v[0], __NV_E4M3).x);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; j += 2) {
      const auto two = static_cast<__nv_fp8x2_storage_t>(codes.v[j] | (codes.v[j + 1] << 8));
      const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(two, __NV_E4M3);
      v[j] = e4m3_value(codes.v[j], h.x);
      v[j + 1] = e4m3_value(codes.v[j + 1], h.y);
    }
  }
}

template <typename T, int VEC>
__device__ __forceinline__ float abs_max(float acc, const Pack<T, VEC>& x) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc = NanMaxOp{}(acc, fabsf(static_cast<float>(x.v[j])));
  return acc;
}

// x / scale in float32, a true division as ATen's for a tensor divisor, rounded once to e4m3.
template <typename T, int VEC>
__device__ __forceinline__ Pack<uint8_t, VEC> quantize(const Pack<T, VEC>& x, float scale) {
  float q[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) q[j] = __fdiv_rn(static_cast<float>(x.v[j]), scale);
  return to_e4m3<VEC>(q);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kQuantizeMaxThreads) quantize_fp8_kernel(QuantizeFp8Launch p) {
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.row_stride;
  uint8_t* q = static_cast<uint8_t*>(p.q) + row * p.cols;
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
  Pack<T, VEC> cached[kCachedVectors];
  float amax[1] = {0.f};
#pragma unroll
  for (int i = 0; i < kCachedVectors; ++i) {
    const int64_t c = first + i * step;
    if (c < p.cols) {
      cached[i] = load<T, VEC>(x + c);
      amax[0] = abs_max<T, VEC>(amax[0], cached[i]);
    }
  }
  for (int64_t c = first + kCachedVectors * step; c < p.cols; c += step)
    amax[0] = abs_max<T, VEC>(amax[0], load<T, VEC>(x + c));
  // One warp (the 2048-wide rows): shuffles only, no shared memory round trip and no barrier.
  if (blockDim.x == 32) amax[0] = warp_reduce(amax[0], NanMaxOp{});
  else block_reduce(amax, NanMaxOp{});
  // amax · float(1/448), then clamp_min(FLT_MIN), which keeps a NaN (ATen's clamp_min does).
  const float product = __fmul_rn(amax[0], kInverseE4m3Max);
  const float scale = product != product ? product : fmaxf(product, FLT_MIN);
  if (threadIdx.x == 0) p.scale[row] = scale;
#pragma unroll
  for (int i = 0; i < kCachedVectors; ++i) {
    const int64_t c = first + i * step;
    if (c < p.cols) store<uint8_t, VEC>(q + c, quantize<T, VEC>(cached[i], scale));
  }
  for (int64_t c = first + kCachedVectors * step; c < p.cols; c += step)
    store<uint8_t, VEC>(q + c, quantize<T, VEC>(load<T, VEC>(x + c), scale));
}

// q.to(dtype).mul_(scale): the code is exact in dtype, the product is float32, rounded once to T.
template <typename T, int VEC>
__global__ void dequantize_fp8_kernel(DequantizeFp8Launch p) {
  const int64_t row = blockIdx.x;
  const uint8_t* q = static_cast<const uint8_t*>(p.q) + row * p.row_stride;
  T* out = static_cast<T*>(p.out) + row * p.cols;
  const float scale = p.scale[row];
  for (int64_t c = int64_t(threadIdx.x) * VEC; c < p.cols; c += int64_t(blockDim.x) * VEC) {
    float v[VEC];
    from_e4m3<VEC>(load<uint8_t, VEC>(q + c), v);
    Pack<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(__fmul_rn(v[j], scale));
    store<T, VEC>(out + c, o);
  }
}

}  // namespace

void launch_quantize_fp8(const QuantizeFp8Launch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const dim3 grid(static_cast<unsigned>(launch.rows));
  const dim3 block(rows_block_threads(launch.cols, launch.vec, kQuantizeMaxThreads));
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    quantize_fp8_kernel<T, VEC><<<grid, block, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_dequantize_fp8(const DequantizeFp8Launch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const dim3 grid(static_cast<unsigned>(launch.rows));
  const dim3 block(row_block_threads(launch.cols, launch.vec));
  dispatch_dtype_vec</*MAX_VEC=*/16>(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    dequantize_fp8_kernel<T, VEC><<<grid, block, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ltxmps::kernels::cuda
