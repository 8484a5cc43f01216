// The CPU float32 lowerings of the VAE: which kernel computes each Conv3d (ATen's, or for the fewest output
// positions a product that reads the weight once), chosen by its number of output positions, and the channel
// RMSNorm (with the resnets' modulation) in one pass.

#include "vae_cpu.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LTXMPS_SKINNY_AVX512 1
#include <immintrin.h>
#endif

namespace ltxmps::pipeline::detail {

namespace {

// Note [Small CPU convolutions]
// On the CPU, at::conv3d of a batch-1 float input runs slow_conv3d: vol2col, then weight[M, K] @ columns[K, N] with
// N the output positions. At the smallest latents (2x2 tokens: N = 8 for the 0.9.0 decoder's mid block and its
// 512 -> 4096 upsampler conv, a third of the CPU smoke run's decode) MKL's sgemm runs that product at about half
// the speed of the transposed one, columns^T[N, K] @ weight^T[K, M] (measured: 4.2 vs 2.0 ms for 512x13824x8,
// 34 vs 20 ms for 4096x13824x8; oneDNN, prepacked or not, is slower still at these sizes). The same products and
// sums in another blocking: outputs differ from diffusers' in rounding only. Larger N gains nothing (4.7 ms either
// way for 512x13824x48), so they keep at::conv3d; so do even kernels, whose output is not the input's size.
constexpr int64_t kTransposedProductMaxRows = 16;

// Note [Mid-size CPU convolutions]
// at::conv3d picks oneDNN (mkldnn_convolution) over slow_conv3d on the CPU only when batch·C·F·H of the input
// exceeds 20480 (ATen's use_mkldnn heuristic), which leaves out the middle of the VAE: 256 channels at 7x8x8
// (320 output positions: 7.5 ms in slow_conv3d, 4.8 ms in oneDNN, measured on 2 cores with AVX-512), 48 -> 128
// channels at 11x16x16 (5.9 vs 3.2 ms), 128 -> 1024 at 7x8x8 (14.7 vs 11.8 ms). oneDNN reorders the weight on every
// call, which it earns back only over enough output positions: from 192 on it was faster at every VAE shape
// measured, at 96 about even, at 48–64 slower (512 -> 512 at 5x4x4: 5.3 vs 6.3 ms; 256 -> 2048: 11 vs 29 ms). So
// convolutions with at least kOneDnnMinRows output positions go to oneDNN where ATen has it and the user has not
// disabled it (torch.backends.mkldnn.enabled); fewer keep at::conv3d's choice. Rounding differs from slow_conv3d's
// only (the same sums in another order).
constexpr int64_t kOneDnnMinRows = 128;

// Output positions (batch included) of the convolution with (0, kh/2, kw/2) padding.
int64_t output_rows(const VaeConv3dWeights& c, const at::Tensor& x) {
  int64_t rows = x.size(0);
  for (int64_t d = 0; d < 3; ++d) {
    const int64_t k = c.weight.size(2 + d), pad = d == 0 ? 0 : k / 2;
    rows *= (x.size(2 + d) + 2 * pad - k) / c.stride[static_cast<size_t>(d)] + 1;
  }
  return rows;
}

// Note [Skinny CPU products]
// The transposed product of Note [Small CPU convolutions] has at most 16 rows, so reading the weight bounds it
// (28 MB for a 512-channel 3x3x3 convolution, 226 MB for the 0.9.0 decoder's 512 -> 4096 upsampler), and MKL's sgemm
// copies the whole weight into its packed layout on every call (`sgemm_scopy_*` in perf, as long as its kernel)
// before reading it again: about 9 GB/s of weight on the 2-core VM that reads 29 GB/s. With AVX-512, skinny_product
// reads each weight row once, three rows at a time against eight column rows (24 accumulators of the 32 registers; a
// fourth row spills), the columns staying in L1/L2, with a prefetch 1 KiB ahead in each weight row: 24.5 -> 8.9 ms
// and 3.1 -> 1.0 ms for the two shapes above. Each output is one float32 dot product (16 lanes, then their sum) plus
// the bias: the rounding differs from MKL's only. Elsewhere (no AVX-512, or not x86-64) at::addmm keeps the product.
#ifdef LTXMPS_SKINNY_AVX512
constexpr int64_t kSkinnyColumnRows = 8;
constexpr int64_t kSkinnyWeightRows = 3;
constexpr int64_t kSkinnyPrefetch = 256;  // floats ahead in a weight row

// acc[r][n] += w[r] * x[n] over the 16 floats at k (the lanes of `mask` of them where not Full).
template <int R, bool Full>
__attribute__((target("avx512f"), always_inline)) inline void skinny_step(const float* x, const float* w, int64_t K,
                                                                          int64_t k, __mmask16 mask,
                                                                          __m512 (&acc)[R][kSkinnyColumnRows]) {
  __m512 wr[R];
  for (int r = 0; r < R; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + kSkinnyPrefetch), _MM_HINT_T0);
    wr[r] = Full ? _mm512_loadu_ps(w + r * K + k) : _mm512_maskz_loadu_ps(mask, w + r * K + k);
  }
  for (int n = 0; n < kSkinnyColumnRows; ++n) {
    const __m512 xn = Full ? _mm512_loadu_ps(x + n * K + k) : _mm512_maskz_loadu_ps(mask, x + n * K + k);
    for (int r = 0; r < R; ++r) acc[r][n] = _mm512_fmadd_ps(wr[r], xn, acc[r][n]);
  }
}

// y[n * ldy + r] = bias[r] + sum_k x[n * K + k] * w[r * K + k] for n < 8, r < R.
template <int R>
__attribute__((target("avx512f"))) void skinny_block(const float* x, const float* w, int64_t K, const float* bias,
                                                     float* y, int64_t ldy) {
  __m512 acc[R][kSkinnyColumnRows];
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < kSkinnyColumnRows; ++n) acc[r][n] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) skinny_step<R, true>(x, w, K, k, __mmask16(0xFFFF), acc);
  if (k < K) skinny_step<R, false>(x, w, K, k, __mmask16((1u << (K - k)) - 1u), acc);
  alignas(64) float lanes[16];
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < kSkinnyColumnRows; ++n) {
      _mm512_store_ps(lanes, acc[r][n]);
      for (int half = 8; half > 0; half /= 2)
        for (int i = 0; i < half; ++i) lanes[i] += lanes[i + half];
      y[n * ldy + r] = lanes[0] + (bias != nullptr ? bias[r] : 0.0f);
    }
}
#endif

// at::conv3d(x, weight, bias, 1, {0, kh / 2, kw / 2}) as one [B·N, K] x [K, M] product (Note [Small CPU
// convolutions]); the columns keep slow_conv3d's (C, kt, kh, kw) order, the order of the weight's rows.
at::Tensor transposed_product_conv3d(const VaeConv3dWeights& c, const at::Tensor& x) {
  const int64_t M = c.weight.size(0), kt = c.weight.size(2), kh = c.weight.size(3), kw = c.weight.size(4);
  const int64_t B = x.size(0), F = x.size(2) - kt + 1, H = x.size(3), W = x.size(4);
  const auto padded = at::constant_pad_nd(x, {kw / 2, kw / 2, kh / 2, kh / 2});
  const auto columns = padded.unfold(2, kt, 1).unfold(3, kh, 1).unfold(4, kw, 1)  // [B, C, F, H, W, kt, kh, kw]
                           .permute({0, 2, 3, 4, 1, 5, 6, 7})
                           .reshape({B * F * H * W, -1});
  const auto out = skinny_product_available() ? skinny_product(columns, c.weight.reshape({M, -1}), c.bias)
                  : c.bias.defined()           ? at::addmm(c.bias, columns, c.weight.reshape({M, -1}).t())
                                               : at::mm(columns, c.weight.reshape({M, -1}).t());
  return out.view({B, F, H, W, M}).permute({0, 4, 1, 2, 3}).contiguous();
}

bool one_dnn_enabled() { return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn(); }

// Note [CPU channel RMSNorm]
// channel_rms_norm (Note [VAE RMSNorm] in vae.cpp) and the resnets' modulation as ATen ops are six passes over the
// activation (pow, mean, add, rsqrt, mul, then mul and add of the modulation) and two full-size temporaries. On the
// CPU one pass per block of kNormBlock positions does it: the sums of squares over the channels (the block's
// channels stay in cache for the second read), then each value times rsqrt(mean + eps), times (1 + scale) plus
// shift where modulated, in the same float32 operations as diffusers'. Only the order of the channel sum differs
// (rounding). SiLU stays ATen's vectorized kernel, in place on the result.
constexpr int64_t kNormBlock = 128;

// Normalizes positions [p0, p0 + n) of one sample: x and out point at channel 0, channels are `stride` apart.
// factor / offset: per channel (1 + scale, shift) or null.
void rms_norm_block(const float* x, float* out, int64_t channels, int64_t stride, int64_t n, const float* factor,
                    const float* offset) {
  float inv[kNormBlock] = {};
  for (int64_t c = 0; c < channels; ++c) {
    const float* row = x + c * stride;
    for (int64_t j = 0; j < n; ++j) inv[j] += row[j] * row[j];
  }
  for (int64_t j = 0; j < n; ++j) inv[j] = 1.0f / std::sqrt(inv[j] / static_cast<float>(channels) + kChannelRmsNormEps);
  for (int64_t c = 0; c < channels; ++c) {
    const float* row = x + c * stride;
    float* dst = out + c * stride;
    if (factor == nullptr) {
      for (int64_t j = 0; j < n; ++j) dst[j] = row[j] * inv[j];
    } else {
      const float f = factor[c], o = offset[c];
      for (int64_t j = 0; j < n; ++j) dst[j] = row[j] * inv[j] * f + o;
    }
  }
}

}  // namespace

bool skinny_product_available() {
#ifdef LTXMPS_SKINNY_AVX512
  static const bool available = __builtin_cpu_supports("avx512f");
  return available;
#else
  return false;
#endif
}

at::Tensor skinny_product(const at::Tensor& columns, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(skinny_product_available(), "skinny_product: needs an x86-64 CPU with AVX-512");
  TORCH_CHECK(is_cpu_float(columns) && is_cpu_float(weight) && columns.dim() == 2 && weight.dim() == 2 &&
                  columns.size(1) == weight.size(1),
              "skinny_product: expected CPU float32 columns [N, K] and weight [M, K], got ", columns.sizes(), " and ",
              weight.sizes());
  TORCH_CHECK(!bias.defined() || (is_cpu_float(bias) && bias.numel() == weight.size(0)),
              "skinny_product: expected a float32 bias of ", weight.size(0), " values");
#ifdef LTXMPS_SKINNY_AVX512
  const int64_t N = columns.size(0), K = columns.size(1), M = weight.size(0);
  const int64_t rows = (N + kSkinnyColumnRows - 1) / kSkinnyColumnRows * kSkinnyColumnRows;
  const auto x = at::constant_pad_nd(columns, {0, 0, 0, rows - N}).contiguous();
  const auto w = weight.contiguous();
  const auto b = bias.defined() ? bias.contiguous() : bias;
  auto y = at::empty({rows, M}, columns.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, (M + kSkinnyWeightRows - 1) / kSkinnyWeightRows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t m = block * kSkinnyWeightRows;
      for (int64_t n = 0; n < rows; n += kSkinnyColumnRows) {
        if (m + kSkinnyWeightRows <= M) {
          skinny_block<kSkinnyWeightRows>(xp + n * K, wp + m * K, K, bp ? bp + m : nullptr, yp + n * M + m, M);
          continue;
        }
        for (int64_t r = m; r < M; ++r)
          skinny_block<1>(xp + n * K, wp + r * K, K, bp ? bp + r : nullptr, yp + n * M + r, M);
      }
    }
  });
  return y.narrow(0, 0, N);
#else
  return at::Tensor();
#endif
}

bool is_cpu_float(const at::Tensor& x) { return x.device().is_cpu() && x.scalar_type() == at::kFloat; }

at::Tensor cpu_conv3d(const VaeConv3dWeights& c, const at::Tensor& x) {
  const int64_t kh = c.weight.size(3), kw = c.weight.size(4);
  const std::array<int64_t, 3> padding{0, kh / 2, kw / 2};
  const int64_t rows = output_rows(c, x);
  const bool odd_stride_1 = c.stride == std::array<int64_t, 3>{1, 1, 1} && kh % 2 == 1 && kw % 2 == 1;
  if (odd_stride_1 && rows <= kTransposedProductMaxRows) return transposed_product_conv3d(c, x);
  if (rows >= kOneDnnMinRows && one_dnn_enabled())
    return at::mkldnn_convolution(x.contiguous(), c.weight, c.bias, padding, c.stride, {1, 1, 1}, 1);
  return at::conv3d(x, c.weight, c.bias, c.stride, padding);
}

at::Tensor cpu_channel_rms_norm(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  const auto in = x.contiguous();
  auto out = at::empty_like(in);
  const int64_t B = in.size(0), C = in.size(1), P = in.numel() / std::max<int64_t>(1, B * C);
  at::Tensor factor, offset;  // [B, C]
  if (shift.defined()) {
    factor = (1 + scale).reshape({-1, C}).expand({B, C}).contiguous();
    offset = shift.reshape({-1, C}).expand({B, C}).contiguous();
  }
  const int64_t blocks = (P + kNormBlock - 1) / kNormBlock;
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / blocks, p0 = i % blocks * kNormBlock, offset_bp = b * C * P + p0;
      rms_norm_block(src + offset_bp, dst + offset_bp, C, P, std::min(kNormBlock, P - p0),
                     factor.defined() ? factor.data_ptr<float>() + b * C : nullptr,
                     offset.defined() ? offset.data_ptr<float>() + b * C : nullptr);
    }
  });
  return out;
}

}  // namespace ltxmps::pipeline::detail
