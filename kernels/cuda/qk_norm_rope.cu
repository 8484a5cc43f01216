// The attention's query / key RMS norm across all heads, then the interleaved rotary embedding: one thread block
// per token and batch row normalizes its q row and its k row, kept in registers between the sums and the output,
// and rotates both with one read of the token's float32 cos / sin rows (Note [Fused kernel rounding] in fused.hpp).
//
// Note [Batch rows of a token together]
// The cos / sin rows belong to the token: the transformer computes them once for the batch and passes them with a
// batch stride of 0 (Note [RoPE once per batch] in the pipeline's transformer.cpp), and at the 13B's shape they are
// 2 x 100 MB of float32 per layer, more than L2 holds. Blocks are numbered token-major (block = t·batch + b), so the
// batch rows of one token run as neighbouring blocks and all but the first find the token's cos / sin in L2; with
// batch-major numbering each batch row read them from memory again. Which block computes a row changes nothing in
// what it computes.

#include "fp8.cuh"

namespace ltxmps::kernels::cuda {
namespace {

// Each thread keeps its first kQkRowVectors vectors of the q row and of the k row in registers (Note [Row kernels
// keep their vectors] in common.cuh); with at most 1024 threads that is every vector of rows up to 16384 bfloat16
// elements. The per-thread sums run over the same vectors in the same order as without them.
constexpr int kQkRowVectors = 2;

template <typename T, int VEC>
__device__ __forceinline__ float add_squares(float acc, const Pack<T, VEC>& v) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float f = static_cast<float>(v.v[j]);
    acc = __fmaf_rn(f, f, acc);
  }
  return acc;
}

// at::rms_norm of one vector: x·rstd·weight in float32, rounded once to T (its fused CUDA kernel).
template <typename T, int VEC>
__device__ __forceinline__ void normalize(const Pack<T, VEC>& xv, const T* weight, float rstd, int64_t c,
                                          float (&out)[VEC]) {
  const Pack<T, VEC> wv = load<T, VEC>(weight + c);
#pragma unroll
  for (int j = 0; j < VEC; ++j)
    out[j] = round_to<T>(__fmul_rn(__fmul_rn(static_cast<float>(xv.v[j]), rstd), static_cast<float>(wv.v[j])));
}

// diffusers apply_rotary_emb on the pairs (2i, 2i + 1) of one vector: x·cos + (-x_odd, x_even)·sin, each product
// and the sum in float32.
template <int VEC>
__device__ __forceinline__ void rotate(float (&v)[VEC], const float (&cos)[VEC], const float (&sin)[VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; j += 2) {
    const float even = v[j], odd = v[j + 1];
    v[j] = __fadd_rn(__fmul_rn(even, cos[j]), __fmul_rn(-odd, sin[j]));
    v[j + 1] = __fadd_rn(__fmul_rn(odd, cos[j + 1]), __fmul_rn(even, sin[j + 1]));
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_rounded(T* out, int64_t c, const float (&v)[VEC]) {
  Pack<T, VEC> o;
#pragma unroll
  for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(v[j]);
  store<T, VEC>(out + c, o);
}

template <int VEC>
__device__ __forceinline__ void load_floats(const float* p, int64_t c, float (&out)[VEC]) {
  const Pack<float, VEC> v = load<float, VEC>(p + c);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = v.v[j];
}

// Where one of q and k goes: the row in dtype, or (FP8) its e4m3 codes with the tensor's scale.
template <typename T>
struct QkOut {
  T* out = nullptr;
  uint8_t* codes = nullptr;
  RowScale scale{};
};

template <typename T, int VEC, bool FP8>
__device__ __forceinline__ void store_out(const QkOut<T>& o, int64_t c, const float (&v)[VEC]) {
  if constexpr (FP8) {
    Pack<T, VEC> r;
#pragma unroll
    for (int j = 0; j < VEC; ++j) r.v[j] = static_cast<T>(v[j]);
    store_quantized<T, VEC>(o.codes + c, r, o.scale);
  } else {
    store_rounded<T, VEC>(o.out, c, v);
  }
}

// q (and k, where k is given) of one vector at column c from `qv` (`kv`): normalized, rotated, rounded and
// stored.
template <typename T, int VEC, bool ROPE, bool FP8>
__device__ __forceinline__ void finish_vector(const QkNormRopeLaunch& p, const float* cos_row, const float* sin_row,
                                              int64_t c, const Pack<T, VEC>& qv, const Pack<T, VEC>& kv,
                                              float q_rstd, float k_rstd, const QkOut<T>& q_out, bool k,
                                              const QkOut<T>& k_out) {
  float cos[VEC], sin[VEC], v[VEC];
  if constexpr (ROPE) {
    load_floats<VEC>(cos_row, c, cos);
    load_floats<VEC>(sin_row, c, sin);
  }
  normalize<T, VEC>(qv, static_cast<const T*>(p.q_weight), q_rstd, c, v);
  if constexpr (ROPE) rotate<VEC>(v, cos, sin);
  store_out<T, VEC, FP8>(q_out, c, v);
  if (k) {
    normalize<T, VEC>(kv, static_cast<const T*>(p.k_weight), k_rstd, c, v);
    if constexpr (ROPE) rotate<VEC>(v, cos, sin);
    store_out<T, VEC, FP8>(k_out, c, v);
  }
}

// Note [FP8 q and k]
// FP8 attention takes q and k as e4m3 with one scale per tensor. An amax pass over them would read both again
// before the quantization; a bound known before the kernel runs avoids it: RMS-normalized, |x_i|·rstd <= √D, so
// every output element, rotated pairs included (a rotation keeps the pair's length, at most the row's), is at most
// √D · max|w| in magnitude, up to the roundings to the dtype. The scale max|w| · float(√D · (1 + 2^-6) / 448) keeps
// every code within e4m3's range with room for those roundings. A one-block kernel launched just before the row
// kernel reduces max|w| and stores both scales, which every row block then reads: reducing the weights in each of the
// B·S row blocks instead made the row kernel a third slower (10.1 against 7.6 ms per 13B forward). Typical values then
// sit a factor of about √D below the range's top, which costs e4m3 nothing while they stay normal (above 2^-6 of it).
template <typename T, int VEC>
__device__ __forceinline__ float weight_abs_max(const T* w, int64_t first, int64_t step, int64_t dim) {
  float m = 0.f;
  for (int64_t c = first; c < dim; c += step) m = abs_max<T, VEC>(m, load<T, VEC>(w + c));
  return m;
}

__device__ __forceinline__ float fp8_bound_scale(float weight_max, float factor) {
  const float s = __fmul_rn(weight_max, factor);
  return s != s ? s : fmaxf(s, FLT_MIN);
}

// One block: the scales of Note [FP8 q and k] into p.q_scale and p.k_scale.
template <typename T, int VEC>
__global__ void qk_fp8_scales_kernel(QkNormRopeLaunch p) {
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
  const bool k = p.k.data != nullptr;
  float wmax[2] = {weight_abs_max<T, VEC>(static_cast<const T*>(p.q_weight), first, step, p.dim),
                   k ? weight_abs_max<T, VEC>(static_cast<const T*>(p.k_weight), first, step, p.dim) : 0.f};
  block_reduce(wmax, NanMaxOp{});
  if (threadIdx.x != 0) return;
  *p.q_scale = fp8_bound_scale(wmax[0], p.fp8_bound_factor);
  if (k) *p.k_scale = fp8_bound_scale(wmax[1], p.fp8_bound_factor);
}

template <typename T, int VEC, bool ROPE, bool FP8>
__global__ void qk_norm_rope_kernel(QkNormRopeLaunch p) {
  static_assert(!ROPE || VEC % 2 == 0, "the rotary embedding works on whole pairs");
  const int64_t b = blockIdx.x % p.batch, t = blockIdx.x / p.batch, row = b * p.tokens + t;
  const T* q = row_of<T>(p.q, b, t);
  const T* k = p.k.data ? row_of<T>(p.k, b, t) : nullptr;
  const int64_t first = int64_t(threadIdx.x) * VEC, step = int64_t(blockDim.x) * VEC;
  Pack<T, VEC> qv[kQkRowVectors], kv[kQkRowVectors];
#pragma unroll
  for (int i = 0; i < kQkRowVectors; ++i) qv[i] = load<T, VEC>(q + kept_column<VEC>(first + i * step, p.dim));
  if (k) {  // the test outside the loop, so that nothing separates the loads
#pragma unroll
    for (int i = 0; i < kQkRowVectors; ++i) kv[i] = load<T, VEC>(k + kept_column<VEC>(first + i * step, p.dim));
  }
  float sums[2] = {0.f, 0.f};
#pragma unroll
  for (int i = 0; i < kQkRowVectors; ++i) {
    if (first + i * step >= p.dim) continue;
    sums[0] = add_squares<T, VEC>(sums[0], qv[i]);
    if (k) sums[1] = add_squares<T, VEC>(sums[1], kv[i]);
  }
  for (int64_t c = first + kQkRowVectors * step; c < p.dim; c += step) {
    sums[0] = add_squares<T, VEC>(sums[0], load<T, VEC>(q + c));
    if (k) sums[1] = add_squares<T, VEC>(sums[1], load<T, VEC>(k + c));
  }
  block_sum<2>(sums);
  const float inv_dim = 1.f / static_cast<float>(p.dim);
  const float q_rstd = rsqrtf(__fadd_rn(sums[0] * inv_dim, p.eps));
  const float k_rstd = rsqrtf(__fadd_rn(sums[1] * inv_dim, p.eps));
  QkOut<T> q_out, k_out;
  if constexpr (FP8) {  // the scales come from qk_fp8_scales_kernel, launched just before on this stream
    q_out.codes = static_cast<uint8_t*>(p.q_fp8) + row * p.dim;
    q_out.scale = divisor(*p.q_scale);
    if (k) {
      k_out.codes = static_cast<uint8_t*>(p.k_fp8) + row * p.dim;
      k_out.scale = divisor(*p.k_scale);
    }
  } else {
    q_out.out = static_cast<T*>(p.q_out) + row * p.dim;
    if (k) k_out.out = static_cast<T*>(p.k_out) + row * p.dim;
  }
  const float* cos_row = ROPE ? row_of<float>(p.cos, b, t) : nullptr;
  const float* sin_row = ROPE ? row_of<float>(p.sin, b, t) : nullptr;
  const bool has_k = k != nullptr;
#pragma unroll
  for (int i = 0; i < kQkRowVectors; ++i) {
    const int64_t c = first + i * step;
    if (c >= p.dim) continue;
    finish_vector<T, VEC, ROPE, FP8>(p, cos_row, sin_row, c, qv[i], kv[i], q_rstd, k_rstd, q_out, has_k, k_out);
  }
  for (int64_t c = first + kQkRowVectors * step; c < p.dim; c += step) {
    const Pack<T, VEC> qr = load<T, VEC>(q + c);
    Pack<T, VEC> kr;
    if (k) kr = load<T, VEC>(k + c);
    finish_vector<T, VEC, ROPE, FP8>(p, cos_row, sin_row, c, qr, kr, q_rstd, k_rstd, q_out, has_k, k_out);
  }
}

template <typename T, int VEC, bool ROPE>
void launch_qk_kernel(const QkNormRopeLaunch& launch, dim3 grid, dim3 block, cudaStream_t stream) {
  if (launch.q_fp8) {
    qk_fp8_scales_kernel<T, VEC><<<1, block, 0, stream>>>(launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    qk_norm_rope_kernel<T, VEC, ROPE, true><<<grid, block, 0, stream>>>(launch);
  } else
    qk_norm_rope_kernel<T, VEC, ROPE, false><<<grid, block, 0, stream>>>(launch);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_qk_norm_rope(const QkNormRopeLaunch& launch) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(launch.device_index));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(launch.device_index));
  const dim3 grid(static_cast<unsigned>(launch.batch * launch.tokens));
  const dim3 block(rows_block_threads(launch.dim, launch.vec, 1024, kQkRowVectors));
  const bool rope = launch.cos.data != nullptr;
  dispatch_dtype_vec(launch.dtype, launch.vec, [&](auto zero, auto vec) {
    using T = decltype(zero);
    constexpr int VEC = decltype(vec)::value;
    if constexpr (VEC % 2 == 0) {
      if (rope) {
        launch_qk_kernel<T, VEC, true>(launch, grid, block, stream);
        return;
      }
    } else {
      TORCH_CHECK(!rope, "ltxmps_kernels: the rotary embedding needs an even vector width, got ", VEC);
    }
    launch_qk_kernel<T, VEC, false>(launch, grid, block, stream);
  });
}

}  // namespace ltxmps::kernels::cuda
