#pragma once
// e4m3 arithmetic shared by the FP8 row kernels and the kernels that quantize their own output rows: the row scale,
// the conversions to and from e4m3 (bit for bit the reference's, Note [e4m3 conversions]) and the quantization of
// one vector (Note [FP8 row quantization] in fused.cpp).

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

// amax · float(1/448), then clamp_min(FLT_MIN), which keeps a NaN (ATen's clamp_min does).
__device__ __forceinline__ float fp8_row_scale(float amax) {
  const float product = __fmul_rn(amax, kInverseE4m3Max);
  return product != product ? product : fmaxf(product, FLT_MIN);
}

// Note [e4m3 conversions]
// ATen stores a float as float8_e4m3fn with c10's software conversion (round to nearest even). The hardware
// conversion (cvt.rn.satfinite, two values per instruction on sm_89+, emulated by cuda_fp8.h below) rounds the
// same way for every |v| < 464, the midpoint between 448 and the first value past e4m3's range; above it, for
// infinities and NaN, LibTorch releases differ (NaN or saturation, the NaN's sign kept or not), so those values
// take c10's conversion, the one the reference runs. The other way, every code is exact in float16 and float32;
// only the NaN codes (0x7f, 0xff) take c10's conversion, so that even their payload is the reference's.

// The hardware conversion, for values known to be below 464 in magnitude, stored at dst with each pair's two codes
// as one 16-bit value (its low byte, the first code, first in memory): a pack of bytes assigned one by one compiles
// to several shifts and permutes per code.
template <int VEC>
__device__ __forceinline__ void store_e4m3_in_range(uint8_t* dst, const float (&v)[VEC]) {
  if constexpr (VEC == 1) {
    *dst = __nv_cvt_float_to_fp8(v[0], __NV_SATFINITE, __NV_E4M3);
  } else {
    Pack<uint16_t, VEC / 2> pairs;
#pragma unroll
    for (int j = 0; j < VEC; j += 2)
      pairs.v[j / 2] = __nv_cvt_float2_to_fp8x2(make_float2(v[j], v[j + 1]), __NV_SATFINITE, __NV_E4M3);
    store<uint16_t, VEC / 2>(reinterpret_cast<uint16_t*>(dst), pairs);
  }
}

// Any values: the hardware conversion when all are in its range, else c10's conversion for each.
template <int VEC>
__device__ __forceinline__ void store_e4m3(uint8_t* dst, const float (&v)[VEC]) {
  bool in_range = true;
#pragma unroll
  for (int j = 0; j < VEC; ++j) in_range = in_range && fabsf(v[j]) < 464.f;  // false for NaN
  if (in_range) {
    store_e4m3_in_range<VEC>(dst, v);
    return;
  }
  Pack<uint8_t, VEC> out;
#pragma unroll
  for (int j = 0; j < VEC; ++j) out.v[j] = c10::Float8_e4m3fn(v[j]).x;
  store<uint8_t, VEC>(dst, out);
}

__device__ __forceinline__ float e4m3_value(uint8_t code, unsigned short half_bits) {
  if ((code & 0x7fu) == 0x7fu) return static_cast<float>(c10::Float8_e4m3fn(code, c10::Float8_e4m3fn::from_bits()));
  return __half2float(__ushort_as_half(half_bits));
}

// True when a code of the pack is NaN (e4m3fn's only NaNs are 0x7f and 0xff): per 32-bit word, adding one to the
// low seven bits of each byte carries into its top bit only for 0x7f / 0xff. One test per four codes instead of one
// per code keeps the dequantization's fast path to the conversion and the product.
template <int VEC>
__device__ __forceinline__ bool any_e4m3_nan(const Pack<uint8_t, VEC>& codes) {
  if constexpr (VEC % 4 == 0) {
    uint32_t hit = 0;
#pragma unroll
    for (int w = 0; w < VEC / 4; ++w) {
      const uint32_t word = reinterpret_cast<const uint32_t*>(codes.v)[w];
      hit |= ((word & 0x7f7f7f7fu) + 0x01010101u) & 0x80808080u;
    }
    return hit != 0;
  } else {
    bool any = false;
#pragma unroll
    for (int j = 0; j < VEC; ++j) any = any || (codes.v[j] & 0x7fu) == 0x7fu;
    return any;
  }
}

template <int VEC>
__device__ __forceinline__ void from_e4m3(const Pack<uint8_t, VEC>& codes, float (&v)[VEC]) {
  if constexpr (VEC == 1) {
    v[0] = e4m3_value(codes.v[0], __nv_cvt_fp8_to_halfraw(codes.v[0], __NV_E4M3).x);
  } else {
    const bool nan = any_e4m3_nan<VEC>(codes);
#pragma unroll
    for (int j = 0; j < VEC; j += 2) {
      const auto two = static_cast<__nv_fp8x2_storage_t>(codes.v[j] | (codes.v[j + 1] << 8));
      const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(two, __NV_E4M3);
      if (nan) {
        v[j] = e4m3_value(codes.v[j], h.x);
        v[j + 1] = e4m3_value(codes.v[j + 1], h.y);
      } else {
        v[j] = __half2float(__ushort_as_half(h.x));
        v[j + 1] = __half2float(__ushort_as_half(h.y));
      }
    }
  }
}

// max(acc, |v|), NaN when either is NaN: one instruction (max.NaN) from sm_80 on, NanMaxOp's comparisons before.
__device__ __forceinline__ float nan_max_abs(float acc, float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(acc), "f"(fabsf(v)));
  return r;
#else
  return NanMaxOp{}(acc, fabsf(v));
#endif
}

template <typename T, int VEC>
__device__ __forceinline__ float abs_max(float acc, const Pack<T, VEC>& x) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc = nan_max_abs(acc, static_cast<float>(x.v[j]));
  return acc;
}

// Note [Division by the row scale]
// The reference divides every value of a row by the row's scale, x / s in float32, correctly rounded, and converts
// the quotient to e4m3 in software. Compiled as written, each value costs a reciprocal, refinement steps, a range
// check with a branch to the slow path around it (about ten instructions), and the conversion a test against 464.
// The scale is the same for the whole row, so where it allows, its reciprocal y = RN(1/s) is taken once and each
// value takes q = RN(x·y), r = fma(-q, s, x) and RN(q + r·y): Markstein's correction, which gives RN(x/s) when y is
// the correctly rounded reciprocal, q is within an ulp of x/s and the remainder r is exact; copysign restores the
// sign of a zero quotient (-0 / s is -0 where the fma sum gives +0). That path is taken only for rows with
// 2^-92 ≤ s ≤ FLT_MAX: s = amax·(1/448) of the same finite values, so |x/s| ≤ 448·(1 + 2^-22) < 464 (the hardware
// conversion needs no test), y is normal, and the remainder of every quotient that e4m3 can tell from zero
// (|x/s| ≥ 2^-11) is exact. Rows with a NaN, infinite or clamped (FLT_MIN) scale keep the true division and the
// tested conversion. Checked against the reference for every float32 mantissa over 1024 row scales (GPU suite).
struct RowScale {
  float scale;
  float inverse;
  bool by_inverse;
};

// How store_quantized divides by `scale`: through its reciprocal where that gives the true quotient.
__device__ __forceinline__ RowScale divisor(float scale) {
  const bool by_inverse = scale >= 0x1p-92f && scale <= FLT_MAX;  // false for NaN
  return {scale, by_inverse ? __frcp_rn(scale) : 0.f, by_inverse};
}

__device__ __forceinline__ RowScale row_scale(float amax) {
  return divisor(fp8_row_scale(amax));
}

// x / scale in float32 as the reference divides (Note [Division by the row scale]), rounded once to e4m3 and
// stored at dst (the two paths store separately, so that the fast one keeps its codes in pairs).
template <typename T, int VEC>
__device__ __forceinline__ void store_quantized(uint8_t* dst, const Pack<T, VEC>& x, const RowScale& s) {
  float q[VEC];
  if (s.by_inverse) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float v = static_cast<float>(x.v[j]);
      const float q0 = __fmul_rn(v, s.inverse);
      const float r = __fmaf_rn(-q0, s.scale, v);
      q[j] = copysignf(__fmaf_rn(r, s.inverse, q0), v);
    }
    store_e4m3_in_range<VEC>(dst, q);
    return;
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) q[j] = __fdiv_rn(static_cast<float>(x.v[j]), s.scale);
  store_e4m3<VEC>(dst, q);
}

// Note [Fused FP8 rows]
// Under FP8 matmul the activation rows that enter a linear layer are quantized (amax, scale, e4m3 codes). Where
// the kernel that produces such a row already holds the whole row in one thread block (the norms with their
// modulation, the gated residual), it quantizes its own output: the amax is taken over the values as they are
// stored (rounded to T), and each thread then quantizes the vectors it stored, from its registers (`kept`: its
// first K vectors, Note [Row kernels keep their vectors]) or, past them, re-read from its own writes (still in
// L1/L2). The codes and scales are therefore quantize_fp8_rows() of the output, bit for bit, without the separate
// pass that reads the row from memory again. The tanh GELU before the feed-forward's second linear goes into the
// quantize kernel instead (gelu_tanh below): its input rows are the first linear's output.
// GROUP: the row is a group of blockDim.x lanes of a warp, one of several rows of the block (Note [Short rows,
// several per block] in norm_modulate.cu), whose maximum is a shuffle across those lanes; `store` false: a group
// that repeats another's row takes part in the shuffles and writes nothing.
template <typename T, int VEC, int K, bool GROUP = false>
__device__ void quantize_written_row(const Pack<T, VEC> (&kept)[K], const T* out, int64_t dim, float amax, uint8_t* q,
                                     float* scale_out, bool store = true) {
  float m[1] = {amax};
  if constexpr (GROUP) m[0] = group_reduce(m[0], NanMaxOp{}); else block_reduce(m, NanMaxOp{});
  if (!store) return;
  const RowScale scale = row_scale(m[0]);
  if (threadIdx.x == 0) *scale_out = scale.scale;
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int64_t c = first + i * step;
    if (c < dim) store_quantized<T, VEC>(q + c, kept[i], scale);
  }
  for (int64_t c = first + K * step; c < dim; c += step) store_quantized<T, VEC>(q + c, load<T, VEC>(out + c), scale);
}

// Note [GELU before the FP8 rows]
// The tanh GELU, 0.5·x·(1 + tanh(u)) with u = β·(x + κ·x³), is computed as x / (1 + e^(-2u)), the same function
// (1 + tanh(u) = 2 / (1 + e^(-2u))), with the hardware's approximate exponential and division (ex2.approx,
// div.approx), then rounded once to T. ATen's tanhf (about 20 instructions and a branch per value) was most of this
// kernel's arithmetic, and the kernel is bound by instruction issue, not by its bytes. The values are therefore not
// ATen's bits (nor are the bf16 path's, whose GELU is cuBLASLt's epilogue), but they are as close to the exact
// GELU: e^(-2u) is off by less than 2^-15 relative (its argument, up to 128 in powers of two, carries five float32
// roundings: 5·128·2^-24·ln 2; ex2.approx and the division add about 2^-22), a hundredth of a bfloat16 rounding;
// where x < 0 they are closer than ATen's, whose 1 + tanh(u) cancels. The limits hold: gelu(+inf) = inf,
// gelu(-inf) = NaN (as ATen's), a large negative x gives -0. The row quantization of these values is still the
// reference's, bit for bit; the GPU suite checks both.
template <typename T>
__device__ __forceinline__ T gelu_tanh(T x) {
  constexpr float kBeta = static_cast<float>(1.41421356237309504880 * 1.12837916709551257390 * 0.5);
  constexpr float kKappa = 0.044715f;
  const float v = static_cast<float>(x);
  const float inner = kBeta * fmaf(kKappa * v, v * v, v);
  return static_cast<T>(__fdividef(v, 1.f + __expf(-2.f * inner)));
}

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> gelu_tanh(const Pack<T, VEC>& x) {
  Pack<T, VEC> y;
#pragma unroll
  for (int j = 0; j < VEC; ++j) y.v[j] = gelu_tanh<T>(x.v[j]);
  return y;
}

}  // namespace
}  // namespace ltxmps::kernels::cuda
