// The block norms with AdaLN modulation (RMS norm, or the output head's layer norm), optionally preceded by the
// residual sum or followed by the SiLU (the VAE's channel norms), and the gated residual. One thread block per [D]
// row, or a group of lanes per short row (Note [Short rows, several per block]); float32 arithmetic with the
// reference's rounding points (Note [Fused kernel rounding] in fused.hpp). Either may also quantize its output rows
// to FP8 (Note [Fused FP8 rows] in fp8.cuh).

#include "fp8.cuh"

namespace ltxmps::kernels::cuda {
namespace {

// h = x + y·gate (or x + y without a gate) over one vector: rounded after the product and after the sum, as
// `x + y * gate` in ATen (in pairs: Note [Packed half-precision arithmetic]).
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> residual_sum(const T* x, const T* y, const T* gate, int64_t c) {
  const Pack<T, VEC> xv = load<T, VEC>(x + c), yv = load<T, VEC>(y + c);
  Pack<T, VEC> gv;
  if (gate) gv = load<T, VEC>(gate + c);
  Pack<T, VEC> h;
  if constexpr (kPackedPairs<T, VEC>) {
#pragma unroll
    for (int j = 0; j < VEC; j += 2) {
      const auto t = gate ? __hmul2_rn(pair_at(yv, j), pair_at(gv, j)) : pair_at(yv, j);
      set_pair(h, j, __hadd2_rn(pair_at(xv, j), t));
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float y_j = static_cast<float>(yv.v[j]);
      const float t = gate ? round_to<T>(__fmul_rn(y_j, static_cast<float>(gv.v[j]))) : y_j;
      h.v[j] = static_cast<T>(__fadd_rn(static_cast<float>(xv.v[j]), t));
    }
  }
  return h;
}

// Each thread keeps its first kRowVectors vectors of the row in registers (Note [Row kernels keep their vectors]
// in common.cuh); with at most kRowThreads threads that is every vector of rows up to 16384 bfloat16 elements.
constexpr int kRowVectors = 4;
constexpr int kRowThreads = 512;

template <typename T, int VEC, bool LAYER_NORM>
__device__ __forceinline__ float accumulate(float acc, const Pack<T, VEC>& h) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float v = static_cast<float>(h.v[j]);
    acc = LAYER_NORM ? __fadd_rn(acc, v) : __fmaf_rn(v, v, acc);
  }
  return acc;
}

// Pass 1 of a row: the residual sum (written to `residual`) or the input, accumulated into the row statistic:
// the sum of squares (RMS norm) or the sum (layer norm). The thread's first vectors stay in `h`.
template <typename T, int VEC, bool LAYER_NORM>
__device__ float first_pass(const NormModulateLaunch& p, int64_t b, int64_t t, int64_t row,
                           Pack<T, VEC> (&h)[kRowVectors]) {
  const T* x = row_of<T>(p.x, b, t);
  const T* y = p.y.data ? row_of<T>(p.y, b, t) : nullptr;
  const T* gate = p.gate.data ? row_of<T>(p.gate, b, t) : nullptr;
  T* residual = y ? static_cast<T*>(p.residual) + row * p.dim : nullptr;
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
  if (y) {  // the test outside the loops, so that nothing separates the loads
#pragma unroll
    for (int i = 0; i < kRowVectors; ++i)
      h[i] = residual_sum<T, VEC>(x, y, gate, kept_column<VEC>(first + i * step, p.dim));
  } else {
#pragma unroll
    for (int i = 0; i < kRowVectors; ++i) h[i] = load<T, VEC>(x + kept_column<VEC>(first + i * step, p.dim));
  }
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < kRowVectors; ++i) {
    const int64_t c = first + i * step;
    if (c >= p.dim) continue;
    if (y) store<T, VEC>(residual + c, h[i]);
    acc = accumulate<T, VEC, LAYER_NORM>(acc, h[i]);
  }
  for (int64_t c = first + kRowVectors * step; c < p.dim; c += step) {
    const Pack<T, VEC> v = y ? residual_sum<T, VEC>(x, y, gate, c) : load<T, VEC>(x + c);
    if (y) store<T, VEC>(residual + c, v);
    acc = accumulate<T, VEC, LAYER_NORM>(acc, v);
  }
  return acc;
}

// The layer norm's variance: the sum of squared deviations from `mean` over the kept vectors and the rest of the
// row (a second read, from L1/L2).
template <typename T, int VEC>
__device__ float deviation_pass(const Pack<T, VEC> (&h)[kRowVectors], const T* row, int64_t dim, float mean) {
  float acc = 0.f;
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
  auto add = [&](const Pack<T, VEC>& v) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float d = __fsub_rn(static_cast<float>(v.v[j]), mean);
      acc = __fmaf_rn(d, d, acc);
    }
  };
#pragma unroll
  for (int i = 0; i < kRowVectors; ++i)
    if (first + i * step < dim) add(h[i]);
  for (int64_t c = first + kRowVectors * step; c < dim; c += step) add(load<T, VEC>(row + c));
  return acc;
}

template <bool LAYER_NORM, typename T>
__device__ __forceinline__ float normalized(T h, float mean, float rstd) {
  const float v = static_cast<float>(h);
  return LAYER_NORM ? __fmul_rn(__fsub_rn(v, mean), rstd) : __fmul_rn(v, rstd);
}

// Note [SiLU in the norm kernel]
// The SiLU after the VAE's channel norm, x / (1 + e^(-x)) in float32 from the value rounded to the dtype, as ATen's
// kernel, but with the hardware's approximate exponential and division (ex2.approx, div.approx; the GELU of Note
// [GELU before the FP8 rows] takes the same route), then rounded once to the dtype by the caller. With ATen's accurate
// expf and IEEE division the fused kernel was bound by instruction issue: it took 14.5 ms of a bf16 decode's GPU
// time, as long as the norm kernel and a separate SiLU pass together. e^(-x) is then off by about (|x| + 4)·2^-24
// relative (the rounding of x·log2(e), then ex2.approx's own), the division adds 2^-22: below 2^-18 of the value for
// |x| < 48, a few thousandths of a bfloat16 or float16 rounding, which flips a rounding rarely and by one unit. The
// limits are ATen's: silu(+inf) = inf, silu(-inf) = NaN, NaN stays NaN; below x ≈ -87 the result is -0 where ATen's
// is a tiny normal number (under 2^-119).
__device__ __forceinline__ float silu(float x) {
  return __fdividef(x, 1.f + __expf(-x));
}

// The normalized and weighted vector at column c, then norm(h)·(1 + scale) + shift when MODULATE, then its SiLU
// when SILU, with the reference's rounding points (in pairs after the normalization: Note [Packed half-precision
// arithmetic]).
template <typename T, int VEC, bool LAYER_NORM, bool MODULATE, bool SILU>
__device__ __forceinline__ Pack<T, VEC> modulate(const Pack<T, VEC>& hv, const T* weight, const T* scale,
                                                 const T* shift, int64_t c, float mean, float rstd) {
  Pack<T, VEC> sc, sh, w;
  if constexpr (MODULATE) {
    sc = load<T, VEC>(scale + c);
    sh = load<T, VEC>(shift + c);
  }
  if (weight) w = load<T, VEC>(weight + c);
  Pack<T, VEC> o;
  if constexpr (kPackedPairs<T, VEC>) {
    const auto one = round_pair(1.f, 1.f, T{});
#pragma unroll
    for (int j = 0; j < VEC; j += 2) {
      auto n = round_pair(normalized<LAYER_NORM>(hv.v[j], mean, rstd),
                          normalized<LAYER_NORM>(hv.v[j + 1], mean, rstd), T{});
      if (weight) n = __hmul2_rn(n, pair_at(w, j));
      if constexpr (MODULATE) n = __hadd2_rn(__hmul2_rn(n, __hadd2_rn(one, pair_at(sc, j))), pair_at(sh, j));
      set_pair(o, j, n);
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float n = round_to<T>(normalized<LAYER_NORM>(hv.v[j], mean, rstd));
      if (weight) n = round_to<T>(__fmul_rn(n, static_cast<float>(w.v[j])));
      if constexpr (MODULATE) {
        const float one_plus_scale = round_to<T>(__fadd_rn(1.f, static_cast<float>(sc.v[j])));
        const float modulated = round_to<T>(__fmul_rn(n, one_plus_scale));
        n = __fadd_rn(modulated, static_cast<float>(sh.v[j]));
      }
      o.v[j] = static_cast<T>(n);
    }
  }
  if constexpr (SILU) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(silu(static_cast<float>(o.v[j])));
  }
  return o;
}

// Stores row `row` of the output (p.out; Launch is either kernel's launch): the kept vectors `h`, then the remainder,
// computed by rest(c) for column c; with FP8 rows asked for (p.q), its codes and scale from the stored values
// (Note [Fused FP8 rows]).
// GROUP and `store`: as quantize_written_row's (a row of a group of lanes; a repeated row stores nothing).
template <typename T, int VEC, bool GROUP = false, typename Launch, typename Rest>
__device__ __forceinline__ void write_row(const Pack<T, VEC> (&h)[kRowVectors], const Launch& p, int64_t row,
                                          const Rest& rest, bool store_row = true) {
  T* out = static_cast<T*>(p.out) + row * p.dim;
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < kRowVectors; ++i) {
    const int64_t c = first + i * step;
    if (c >= p.dim) continue;
    if (store_row) store<T, VEC>(out + c, h[i]);
    if (p.q) amax = abs_max<T, VEC>(amax, h[i]);
  }
  for (int64_t c = first + kRowVectors * step; c < p.dim; c += step) {
    const Pack<T, VEC> v = rest(c);
    if (store_row) store<T, VEC>(out + c, v);
    if (p.q) amax = abs_max<T, VEC>(amax, v);
  }
  if (p.q)
    quantize_written_row<T, VEC, kRowVectors, GROUP>(h, out, p.dim, amax, static_cast<uint8_t*>(p.q) + row * p.dim,
                                                     p.q_scale + row, store_row);
}

// Note [Short rows, several per block]
// The VAE's channel norms (docs/models/vae.md) have rows of 128-1024 channels, and millions of them: one block per
// row then launches a warp for every 256 bytes, most of its lanes idle, and the block launches, not the memory,
// bound the kernel (36 ms per 0.9.7 decode for about 5 ms of bytes). A row that a part of a warp covers (at most 32
// threads of kRowVectors vectors each) goes to a group of G = 2^k lanes instead, and a block holds kShortRowThreads / G
// rows; the group's sums and its FP8 rows' maximum are shuffles across its G lanes (group_reduce). A group past the
// last row repeats the last row's loads and stores nothing, so that every lane of a warp takes part in the shuffles.
// Not for the residual variant (its first pass writes the residual). The order of the row's sum differs from the one
// block per row kernel's, so whether a row is short depends on its width and variant only, never on whether FP8 rows
// are asked for: asking changes no value.
constexpr int kShortRowThreads = 256;

template <typename T, int VEC, bool LAYER_NORM, bool SHORT, bool MODULATE, bool SILU>
__global__ void __launch_bounds__(SHORT ? kShortRowThreads : kRowThreads) norm_modulate_kernel(NormModulateLaunch p) {
  const int64_t rows = p.batch * p.tokens;
  const int64_t own_row = SHORT ? int64_t(blockIdx.x) * blockDim.y + threadIdx.y : int64_t(blockIdx.x);
  const int64_t row = own_row < rows ? own_row : rows - 1, b = row / p.tokens, t = row % p.tokens;
  Pack<T, VEC> h[kRowVectors];
  float stat[1] = {first_pass<T, VEC, LAYER_NORM>(p, b, t, row, h)};
  if constexpr (SHORT) stat[0] = group_reduce(stat[0], SumOp{}); else block_sum<1>(stat);
  const T* h_row = p.y.data ? static_cast<const T*>(p.residual) + row * p.dim : row_of<T>(p.x, b, t);
  const float inv_dim = 1.f / static_cast<float>(p.dim);
  float mean = 0.f, rstd;
  if constexpr (LAYER_NORM) {
    mean = stat[0] * inv_dim;
    float var[1] = {deviation_pass<T, VEC>(h, h_row, p.dim, mean)};
    if constexpr (SHORT) var[0] = group_reduce(var[0], SumOp{}); else block_sum<1>(var);
    rstd = rsqrtf(__fadd_rn(var[0] * inv_dim, p.eps));
  } else {
    rstd = rsqrtf(__fadd_rn(stat[0] * inv_dim, p.eps));
  }
  const T* weight = static_cast<const T*>(p.weight);
  const T* scale = MODULATE ? row_of<T>(p.scale, b, t) : nullptr;
  const T* shift = MODULATE ? row_of<T>(p.shift, b, t) : nullptr;
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
#pragma unroll
  for (int i = 0; i < kRowVectors; ++i)  // every modulation load before the first store
    h[i] = modulate<T, VEC, LAYER_NORM, MODULATE, SILU>(h[i], weight, scale, shift,
                                                        kept_column<VEC>(first + i * step, p.dim), mean, rstd);
  write_row<T, VEC, SHORT>(
      h, p, row,
      [&](int64_t c) {
        return modulate<T, VEC, LAYER_NORM, MODULATE, SILU>(load<T, VEC>(h_row + c), weight, scale, shift, c, mean,
                                                            rstd);
      },
      own_row == row);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kRowThreads) gated_residual_kernel(GatedResidualLaunch p) {
  const int64_t row = blockIdx.x, b = row / p.tokens, t = row % p.tokens;
  const T* x = row_of<T>(p.x, b, t);
  const T* y = row_of<T>(p.y, b, t);
  const T* gate = row_of<T>(p.gate, b, t);
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
  Pack<T, VEC> h[kRowVectors];
#pragma unroll
  for (int i = 0; i < kRowVectors; ++i) h[i] = residual_sum<T, VEC>(x, y, gate, kept_column<VEC>(first + i * step, p.dim));
  write_row<T, VEC>(h, p, row, [&](int64_t c) { return residual_sum<T, VEC>(x, y, gate, c); });
}

}  // namespace

void launch_norm_modulate(const NormModulateLaunch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const int64_t rows = launch.batch * launch.tokens;
  // Note [Short rows, several per block]: the lanes a row needs, rounded up to a power of two.
  const int64_t vectors = (launch.dim + launch.vec - 1) / launch.vec;
  unsigned group = 1;
  while (group < 32 && group * kRowVectors < vectors) group *= 2;
  const bool short_rows = group * kRowVectors >= vectors && !launch.y.data;
  const unsigned rows_per_block = kShortRowThreads / group;
  const dim3 grid(static_cast<unsigned>(short_rows ? (rows + rows_per_block - 1) / rows_per_block : rows));
  const dim3 block = short_rows ? dim3(group, rows_per_block)
                                : dim3(rows_block_threads(launch.dim, launch.vec, kRowThreads, kRowVectors));
  // The instances: the layer norm modulated (the output head); the RMS norm modulated (the transformer's blocks), then
  // with the SiLU (the VAE's conditioned norms), or with the SiLU alone (its unconditioned ones).
  const bool modulate = launch.scale.data != nullptr;
  TORCH_CHECK(modulate == (launch.shift.data != nullptr) && (modulate || launch.silu) &&
                  !(launch.layer_norm && (launch.silu || !modulate)),
              "ltxmps_kernels: launch_norm_modulate has no instance for this combination of norm and epilogue");
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    const auto run = [&](auto short_kernel) {
      constexpr bool SHORT = decltype(short_kernel)::value;
      if (launch.layer_norm)
        norm_modulate_kernel<T, VEC, true, SHORT, true, false><<<grid, block, 0, stream>>>(launch);
      else if (!launch.silu)
        norm_modulate_kernel<T, VEC, false, SHORT, true, false><<<grid, block, 0, stream>>>(launch);
      else if (modulate)
        norm_modulate_kernel<T, VEC, false, SHORT, true, true><<<grid, block, 0, stream>>>(launch);
      else
        norm_modulate_kernel<T, VEC, false, SHORT, false, true><<<grid, block, 0, stream>>>(launch);
    };
    if (short_rows)
      run(std::true_type{});
    else
      run(std::false_type{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_gated_residual(const GatedResidualLaunch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const dim3 grid(static_cast<unsigned>(launch.batch * launch.tokens));
  const dim3 block(rows_block_threads(launch.dim, launch.vec, kRowThreads, kRowVectors));
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    gated_residual_kernel<T, VEC><<<grid, block, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ltxmps::kernels::cuda
