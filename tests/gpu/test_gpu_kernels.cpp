// ltxmps_kernels on CUDA: every fused kernel against its ATen reference on the same device (float32, bfloat16,
// float16; odd sizes that force narrower vector accesses; strided, broadcast and misaligned operands; the FP8 row
// kernels bit for bit, non-finite rows included), the fallback for what a kernel does not take, the SDPA layout,
// and a whole transformer forward with against without the fused kernels. Without CUDA, or in a build without the
// CUDA kernels, the suite reports SKIPPED (exit code 77).
#define CATCH_CONFIG_RUNNER  // Catch2 v2: this file provides main() (v3 ignores the macro)
#include "catch_compat.hpp"
#if LTXMPS_CATCH_V3
#include <catch2/catch_session.hpp>
#endif
#include "gpu/gpu_kernel_checks.hpp"
#include "kernels/fp8_test_rows.hpp"

#include "ltxmps_kernels/fused.hpp"

#include "ltxmps_pipeline/fp8.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include <ltxmps/ltxmps.hpp>

#include <torch/cuda.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <map>

namespace kernels = ltxmps::kernels;
using ltxmps_test::fused_calls_in;
using ltxmps_test::kCuda;
using ltxmps_test::randn;
using ltxmps_test::same_bits;

namespace {

int mantissa_bits(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? 7 : dtype == at::kHalf ? 10 : 23;
}

// A [B, S, D] activation as the model has it (contiguous), as a column window of a wider tensor (strided rows),
// or shifted by one element (rows not 16-byte aligned: the scalar path).
at::Tensor activation(int64_t B, int64_t S, int64_t D, at::ScalarType dtype, uint64_t seed, int layout) {
  if (layout == 0) return randn({B, S, D}, dtype, seed);
  if (layout == 1) return randn({B, S, D + 8}, dtype, seed).narrow(2, 8, D);
  return randn({B * S * D + 1}, dtype, seed).narrow(0, 1, B * S * D).view({B, S, D});
}

// How far the kernel's `out` is from the reference's `ref`, both of `dtype`.
struct Agreement {
  double ulps = 0;            ///< max |out - ref| in units in the last place of dtype at max |ref|
  double relative = 0;        ///< max |out - ref| / max |ref|
  double mismatch_fraction = 0;
};

Agreement agreement(const at::Tensor& out, const at::Tensor& ref) {
  REQUIRE(out.sizes() == ref.sizes());
  REQUIRE(out.scalar_type() == ref.scalar_type());
  const auto a = out.to(at::kCPU, at::kDouble), b = ref.to(at::kCPU, at::kDouble);
  const double scale = std::max(1e-30, b.abs().max().item<double>());
  const double diff = (a - b).abs().max().item<double>();
  int e = 0;
  std::frexp(scale, &e);
  Agreement r;
  r.ulps = diff / std::ldexp(1.0, e - 1 - mantissa_bits(ref.scalar_type()));
  r.relative = diff / scale;
  r.mismatch_fraction = a.ne(b).sum().item<double>() / static_cast<double>(std::max<int64_t>(1, a.numel()));
  return r;
}

// Note [Kernel bounds]
// The kernels round where the references round (Note [Fused kernel rounding]); they differ only where a float32
// row statistic summed in another order moves a value across a rounding boundary. Such a flip is one unit in the
// last place of an intermediate, which the modulation can scale by |1 + scale| (< 3 here) before the output's own
// rounding: at most 4 units at the output's largest magnitude, and rare (a fraction of the elements far below 1%).
// float32 has no intermediate rounding: the bound is float32 reduction-order error.
void check_kernel(const at::Tensor& out, const at::Tensor& ref, bool strict_rounding = true) {
  const auto a = agreement(out, ref);
  INFO("ulps " << a.ulps << ", relative " << a.relative << ", mismatching fraction " << a.mismatch_fraction);
  if (ref.scalar_type() == at::kFloat) {
    CHECK(a.relative <= 1e-5);
    return;
  }
  CHECK(a.ulps <= 4.0);
  if (strict_rounding) CHECK(a.mismatch_fraction <= 0.01);
}

const at::ScalarType kDtypes[] = {at::kFloat, at::kBFloat16, at::kHalf};
const int64_t kDims[] = {2048, 1000, 998, 7};  // vectors of 8, 8 (4 for float32), 2, 1 elements

}  // namespace

TEST_CASE("rms_norm_modulate and layer_norm_modulate: kernel against reference", "[gpu][kernels]") {
  for (const auto dtype : kDtypes)
    for (const int64_t D : kDims)
      for (const int64_t T : {1, 37})
        for (const int layout : {0, 1, 2}) {
          INFO("dtype " << dtype << ", D " << D << ", T " << T << ", layout " << layout);
          const int64_t B = 2, S = 37;
          const auto x = activation(B, S, D, dtype, 1, layout).mul(3);
          const auto ada = randn({B, T, 6, D}, dtype, 2, 0.5);  // the block's ada; columns are strided slices
          const auto shift = ada.select(2, 0), scale = ada.select(2, 1);
          for (const bool with_weight : {false, true}) {
            const auto weight = with_weight ? randn({D}, dtype, 3, 0.1).add(1) : at::Tensor();
            at::Tensor out;
            CHECK(fused_calls_in([&] { out = kernels::rms_norm_modulate(x, weight, 1e-6, scale, shift); }) == 1);
            REQUIRE(out.is_contiguous());
            check_kernel(out, kernels::rms_norm_modulate_reference(x, weight, 1e-6, scale, shift));
          }
          at::Tensor out;
          CHECK(fused_calls_in([&] { out = kernels::layer_norm_modulate(x.add(2), 1e-6, scale, shift); }) == 1);
          check_kernel(out, kernels::layer_norm_modulate_reference(x.add(2), 1e-6, scale, shift));
        }
}

// The VAE's channel rows (Note [Short rows, several per block] in norm_modulate.cu): thousands of short rows, one
// modulation row per batch entry, a last block only partly filled.
TEST_CASE("rms_norm_modulate on many short rows: kernel against reference", "[gpu][kernels]") {
  for (const auto dtype : kDtypes)
    for (const int64_t D : {8, 128, 512, 1024}) {
      INFO("dtype " << dtype << ", D " << D);
      const int64_t B = 2, S = 3001;
      const auto x = activation(B, S, D, dtype, 4, 0).mul(3);
      const auto scale = randn({B, 1, D}, dtype, 5, 0.5), shift = randn({B, 1, D}, dtype, 6, 0.5);
      at::Tensor out;
      CHECK(fused_calls_in([&] { out = kernels::rms_norm_modulate(x, {}, 1e-8, scale, shift); }) == 1);
      REQUIRE(out.is_contiguous());
      check_kernel(out, kernels::rms_norm_modulate_reference(x, {}, 1e-8, scale, shift));
      CHECK(fused_calls_in([&] { out = kernels::layer_norm_modulate(x.add(2), 1e-6, scale, shift); }) == 1);
      check_kernel(out, kernels::layer_norm_modulate_reference(x.add(2), 1e-6, scale, shift));
    }
}

// The VAE's norm and activation: short rows and rows of a block each (2048), aligned and strided, with the
// modulation and without.
TEST_CASE("rms_norm_modulate_silu: kernel against reference", "[gpu][kernels]") {
  for (const auto dtype : kDtypes)
    for (const int64_t D : {8, 128, 998, 1024, 2048})
      for (const bool modulated : {true, false}) {
        INFO("dtype " << dtype << ", D " << D << ", modulated " << modulated);
        const int64_t B = 2, S = D == 2048 ? 37 : 3001;
        const auto x = activation(B, S, D, dtype, 7, D == 998 ? 1 : 0).mul(3);
        const auto scale = modulated ? randn({B, 1, D}, dtype, 8, 0.5) : at::Tensor();
        const auto shift = modulated ? randn({B, 1, D}, dtype, 9, 0.5) : at::Tensor();
        at::Tensor out;
        CHECK(fused_calls_in([&] { out = kernels::rms_norm_modulate_silu(x, 1e-8, scale, shift); }) == 1);
        REQUIRE(out.is_contiguous());
        check_kernel(out, kernels::rms_norm_modulate_silu_reference(x, 1e-8, scale, shift));
      }
}

// The VAE's convolution biases: channels-last outputs whose rows take vectors of 8, 2 or 1 element, more vectors
// than a block has threads (4096 channels), and a misaligned start; channels-first output runs the reference.
TEST_CASE("add_channel_bias_: the kernel's values are ATen's add, bit for bit", "[gpu][kernels]") {
  for (const auto dtype : kDtypes)
    for (const int64_t C : {8, 128, 1000, 998, 7, 4096})
      for (const bool aligned : {true, false}) {
        INFO("dtype " << dtype << ", C " << C << ", aligned " << aligned);
        const int64_t n = 2 * 3 * 5 * 7 * C;
        const auto channels_last = [&](const at::Tensor& storage) {
          return storage.narrow(0, aligned ? 0 : 1, n).view({2, 3, 5, 7, C}).permute({0, 4, 1, 2, 3});
        };
        const auto storage = randn({n + 1}, dtype, 10);
        const auto x = channels_last(storage);
        const auto bias = randn({C}, dtype, 11);
        const auto expected = x.add(bias.view({1, C, 1, 1, 1}));
        auto y = channels_last(storage.clone());
        CHECK(fused_calls_in([&] { kernels::add_channel_bias_(y, bias); }) == 1);
        CHECK(same_bits(y, expected));
        auto first = x.contiguous();
        CHECK(fused_calls_in([&] { kernels::add_channel_bias_(first, bias); }) == 0);
        CHECK(same_bits(first, expected));
      }
}

TEST_CASE("residual_rms_norm_modulate and gated_residual: kernel against reference", "[gpu][kernels]") {
  for (const auto dtype : kDtypes)
    for (const int64_t D : kDims)
      for (const int layout : {0, 1, 2}) {
        INFO("dtype " << dtype << ", D " << D << ", layout " << layout);
        const int64_t B = 2, S = 19;
        const auto x = activation(B, S, D, dtype, 4, layout), y = activation(B, S, D, dtype, 5, 2 - layout);
        const auto ada = randn({B, S, 6, D}, dtype, 6, 0.5);  // per-token modulation
        const auto gate = ada.select(2, 2), shift = ada.select(2, 3), scale = ada.select(2, 4);
        const auto weight = randn({D}, dtype, 7, 0.1).add(1);
        for (const bool gated : {false, true}) {
          const auto g = gated ? gate : at::Tensor();
          std::pair<at::Tensor, at::Tensor> fused;
          CHECK(fused_calls_in([&] {
                  fused = kernels::residual_rms_norm_modulate(x, y, g, weight, 1e-6, scale, shift);
                }) == 1);
          const auto ref = kernels::residual_rms_norm_modulate_reference(x, y, g, weight, 1e-6, scale, shift);
          // The residual sum has no reduction: the same bits.
          CHECK(at::equal(fused.first, ref.first));
          check_kernel(fused.second, ref.second);
        }
        at::Tensor out;
        CHECK(fused_calls_in([&] { out = kernels::gated_residual(x, y, gate); }) == 1);
        CHECK(at::equal(out, kernels::gated_residual_reference(x, y, gate)));
        // A gate shared by all tokens (T = 1).
        const auto gate1 = ada.narrow(1, 0, 1).select(2, 5);
        CHECK(at::equal(kernels::gated_residual(x, y, gate1), kernels::gated_residual_reference(x, y, gate1)));
      }
}

TEST_CASE("qk_rms_norm_rope: kernel against reference", "[gpu][kernels]") {
  for (const auto dtype : kDtypes)
    for (const int64_t D : {2048, 1000, 998})  // RoPE needs pairs: even D
      for (const int layout : {0, 1, 2}) {
        INFO("dtype " << dtype << ", D " << D << ", layout " << layout);
        const int64_t B = 2, S = 33;
        const auto q = activation(B, S, D, dtype, 8, layout).mul(4), k = activation(B, S, D, dtype, 9, layout);
        const auto angles = randn({1, S, D}, at::kFloat, 10, 3.0);  // cos / sin shared by the batch
        const auto cos = angles.cos(), sin = angles.sin();
        // Unit weights: at::rms_norm rounds x·rstd·w once or twice depending on the LibTorch release; with w = 1
        // both are one rounding, so the kernel must agree as closely as everywhere else.
        const auto ones = at::ones({D}, q.options());
        std::pair<at::Tensor, at::Tensor> fused;
        // Layout 2 starts one element past an aligned address: no (2i, 2i+1) pair is one aligned vector, so the
        // rotation cannot be done on pairs in registers and the reference runs (docs/kernels.md, "When the reference
        // runs"); the results are still compared below.
        CHECK(fused_calls_in([&] { fused = kernels::qk_rms_norm_rope(q, k, ones, ones, 1e-5, cos, sin); }) ==
              (layout == 2 ? 0 : 1));
        REQUIRE((fused.first.is_contiguous() && fused.second.is_contiguous()));
        auto ref = kernels::qk_rms_norm_rope_reference(q, k, ones, ones, 1e-5, cos, sin);
        check_kernel(fused.first, ref.first);
        check_kernel(fused.second, ref.second);
        // Learned weights: the same 4-unit bound, without the rounding-count check.
        const auto qw = randn({D}, dtype, 11, 0.1).add(1), kw = randn({D}, dtype, 12, 0.1).add(1);
        fused = kernels::qk_rms_norm_rope(q, k, qw, kw, 1e-5, cos, sin);
        ref = kernels::qk_rms_norm_rope_reference(q, k, qw, kw, 1e-5, cos, sin);
        check_kernel(fused.first, ref.first, /*strict_rounding=*/false);
        check_kernel(fused.second, ref.second, /*strict_rounding=*/false);
        // Cross-attention: keys of another length, no RoPE (two launches).
        const auto text = activation(B, 11, D, dtype, 13, 0);
        CHECK(fused_calls_in([&] { fused = kernels::qk_rms_norm_rope(q, text, qw, kw, 1e-5, {}, {}); }) == 2);
        ref = kernels::qk_rms_norm_rope_reference(q, text, qw, kw, 1e-5, {}, {});
        check_kernel(fused.first, ref.first, false);
        check_kernel(fused.second, ref.second, false);
      }
}

TEST_CASE("what a kernel does not take runs the reference", "[gpu][kernels]") {
  const auto x = randn({2, 5, 16}, at::kDouble, 14), ada = randn({2, 1, 6, 16}, at::kDouble, 15);
  const auto scale = ada.select(2, 1), shift = ada.select(2, 0);
  at::Tensor out;
  CHECK(fused_calls_in([&] { out = kernels::rms_norm_modulate(x, {}, 1e-6, scale, shift); }) == 0);
  CHECK(at::equal(out, kernels::rms_norm_modulate_reference(x, {}, 1e-6, scale, shift)));
  // A float32 weight under bfloat16 activations (the reference then promotes to float32).
  const auto xb = x.to(at::kBFloat16);
  const auto w32 = at::ones({16}, x.options().dtype(at::kFloat));
  CHECK(fused_calls_in([&] {
          out = kernels::rms_norm_modulate(xb, w32, 1e-6, scale.to(at::kBFloat16), shift.to(at::kBFloat16));
        }) == 0);
  CHECK(out.scalar_type() == at::kFloat);
  // A transposed last dimension.
  const auto xt = randn({2, 16, 5}, at::kBFloat16, 16).transpose(1, 2);
  const auto g = randn({2, 5, 16}, at::kBFloat16, 17);
  CHECK(fused_calls_in([&] { out = kernels::gated_residual(xt, g, g); }) == 0);
  CHECK(at::equal(out, kernels::gated_residual_reference(xt, g, g)));
}

TEST_CASE("linear_gelu_tanh: the cuBLASLt epilogue against linear then GELU", "[gpu][kernels]") {
  at::globalContext().setAllowTF32CuBLAS(false);
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    const auto x = randn({2, 37, 256}, dtype, 18), w = randn({1024, 256}, dtype, 19, 1.0 / 16);
    const auto b = randn({1024}, dtype, 20);
    at::Tensor out;
    CHECK(fused_calls_in([&] { out = kernels::linear_gelu_tanh(x, w, b); }) == 1);
    const auto ref = kernels::linear_gelu_tanh_reference(x, w, b);
    REQUIRE(out.sizes() == ref.sizes());
    // The epilogue rounds the GELU of the float32 accumulator once; the reference rounds the GEMM output, then
    // the GELU: one unit of the half dtype apart, plus GEMM accumulation order (float32: 1e-5).
    const auto a = agreement(out, ref);
    INFO("ulps " << a.ulps << ", relative " << a.relative);
    CHECK(a.relative <= (dtype == at::kFloat ? 1e-5 : std::ldexp(2.0, -mantissa_bits(dtype))));
  }
}

namespace {

at::Tensor fp8_input(int64_t M, int64_t K, at::ScalarType dtype, uint64_t seed) {
  return ltxmps_test::fp8_test_rows(M, K, seed).to(kCuda, dtype);
}

// The kernel's quantization of `x` against the reference's, bit for bit, and that the kernel ran.
void check_quantize(const at::Tensor& x) {
  std::pair<at::Tensor, at::Tensor> fused;
  CHECK(fused_calls_in([&] { fused = kernels::quantize_fp8_rows(x); }) == 1);
  const auto ref = kernels::quantize_fp8_rows_reference(x);
  REQUIRE((fused.first.is_contiguous() && fused.first.device() == x.device()));
  CHECK(same_bits(fused.first, ref.first));
  CHECK(same_bits(fused.second, ref.second));
}

void check_dequantize(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype) {
  at::Tensor out;
  CHECK(fused_calls_in([&] { out = kernels::dequantize_fp8_rows(q, scale, dtype); }) == 1);
  REQUIRE(out.is_contiguous());
  CHECK(same_bits(out, kernels::dequantize_fp8_rows_reference(q, scale, dtype)));
}

// 1, 7, 2047: one element per access; 4096, 16384: 16-byte vectors; 16385: one element per access and more of
// them per thread than the kernel keeps in registers (the second read of the row).
const int64_t kFp8Cols[] = {1, 7, 2047, 4096, 16384, 16385};
const int64_t kFp8Rows[] = {1, 2, 37, 300};

}  // namespace

TEST_CASE("quantize_fp8_rows: the kernel's codes and scales are the reference's bits", "[gpu][kernels][fp8]") {
  for (const auto dtype : kDtypes)
    for (const int64_t K : kFp8Cols)
      for (const int64_t M : kFp8Rows) {
        INFO("dtype " << dtype << ", M " << M << ", K " << K);
        check_quantize(fp8_input(M, K, dtype, 30 + K + M));
      }
}

TEST_CASE("quantize_fp8_rows: strided, transposed and misaligned rows; infinities and NaN", "[gpu][kernels][fp8]") {
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    const int64_t M = 37, K = 512;
    const auto wide = fp8_input(M, K + 8, dtype, 50);
    check_quantize(wide.narrow(1, 8, K));  // rows read in place, 16-byte aligned
    check_quantize(wide.narrow(1, 1, K));  // rows read in place, one element per access
    check_quantize(fp8_input(K, M, dtype, 51).t());  // a contiguous copy first
    // Non-finite rows: +inf, -inf (scale inf, finite elements code ±0, the infinite ones NaN), NaN (scale and
    // codes NaN), next to a finite row.
    auto special = fp8_input(4, K, at::kFloat, 52);
    special[0][3] = INFINITY;
    special[1][K - 1] = -INFINITY;
    special[2][100] = NAN;
    check_quantize(special.to(dtype));
    const auto [q, scale] = kernels::quantize_fp8_rows(special.to(dtype));
    CHECK(std::isinf(scale[0].item<float>()));
    CHECK(std::isnan(scale[2].item<float>()));
    CHECK(std::isfinite(scale[3].item<float>()));
  }
  // The pipeline's entry points run the kernels (FP8 matmul's activations, FP8 storage's weights).
  const auto x = fp8_input(64, 256, at::kBFloat16, 53);
  ltxmps::pipeline::Fp8Rows rows;
  CHECK(fused_calls_in([&] { rows = ltxmps::pipeline::quantize_fp8_rowwise(x); }) == 1);
  CHECK(fused_calls_in([&] { ltxmps::pipeline::dequantize_fp8_rowwise(rows.q, rows.scale, at::kBFloat16); }) == 1);
  // What the kernels do not take runs the reference: float64 rows, a float64 result.
  const auto x64 = x.to(at::kDouble);
  std::pair<at::Tensor, at::Tensor> ref;
  CHECK(fused_calls_in([&] { ref = kernels::quantize_fp8_rows(x64); }) == 0);
  CHECK(same_bits(ref.first, kernels::quantize_fp8_rows_reference(x64).first));
  CHECK(fused_calls_in([&] { kernels::dequantize_fp8_rows(rows.q, rows.scale, at::kDouble); }) == 0);
}

TEST_CASE("quantize_fp8_rows: the division by the row scale is the reference's for every float32 mantissa",
          "[gpu][kernels][fp8]") {
  // 1024 rows of 8192 float32 values walk all 2^23 mantissas once (alternating signs); column 0 of each row is its
  // amax, 2^1..2^20 above the rest with a random mantissa, so each row has its own scale and quotients from 448 down
  // to ~2^-12 (the rounding boundaries of e4m3's subnormals). 1000 rows spread the scale's exponent over 2^-92 ...
  // 2^118; the last 24 put it around and below 2^-92, down to the FLT_MIN clamp, where quotients underflow.
  const int64_t M = 1024, K = 8192;
  std::vector<float> values(static_cast<size_t>(M * K));
  auto g = ltxmps::make_cpu_generator(95);
  const auto amax_mantissa = ltxmps::randn({M}, g).abs().fmod(1.0).add(1.0);
  const int lower_scales[] = {-128, -120, -100, -95, -93, -92, -91, -90};  // exponents, about
  for (int64_t i = 0; i < M; ++i) {
    const int above = 1 + static_cast<int>(i % 20);
    const int amax_exp = i < 1000 ? -83 + static_cast<int>((i * 7919) % 210) : lower_scales[i % 8] + 9;
    for (int64_t j = 0; j < K; ++j) {
      const double mantissa = 1.0 + std::ldexp(static_cast<double>(i * K + j), -23);
      values[static_cast<size_t>(i * K + j)] =
          static_cast<float>((j % 2 ? -1.0 : 1.0) * std::ldexp(mantissa, amax_exp - above));
    }
    values[static_cast<size_t>(i * K)] = static_cast<float>(std::ldexp(amax_mantissa[i].item<double>(), amax_exp));
  }
  const auto x = at::from_blob(values.data(), {M, K}, at::kFloat).to(kCuda);
  const auto scales = kernels::quantize_fp8_rows_reference(x).second.cpu();
  CHECK(scales.lt(std::ldexp(1.0, -92)).sum().item<int64_t>() >= 12);
  CHECK(scales.ge(std::ldexp(1.0, 100)).sum().item<int64_t>() >= 50);
  check_quantize(x);
}

TEST_CASE("dequantize_fp8_rows: the kernel's values are the reference's bits", "[gpu][kernels][fp8]") {
  for (const auto dtype : kDtypes)
    for (const int64_t K : kFp8Cols)
      for (const int64_t N : kFp8Rows) {
        INFO("dtype " << dtype << ", N " << N << ", K " << K);
        auto g = ltxmps::make_cpu_generator(60 + K + N);
        // Every code, NaN codes included; scales over many binades (float16 results overflow at the top).
        const auto q = at::randint(256, {N, K}, g, at::TensorOptions().dtype(at::kByte)).view(at::kFloat8_e4m3fn);
        const auto scale = at::pow(2.0, ltxmps::randn({N}, g).mul_(10)).to(at::kFloat);
        check_dequantize(q.to(kCuda), scale.to(kCuda), dtype);
      }
  // Codes read in place (a column window, 16 or 1 per access), transposed codes (a contiguous copy first), a
  // strided scale.
  const int64_t N = 37, K = 512;
  const auto stored = kernels::quantize_fp8_rows(fp8_input(N, K + 16, at::kBFloat16, 61));
  const auto scales = at::stack({stored.second, stored.second.mul(3)}, 1);
  const auto transposed = kernels::quantize_fp8_rows(fp8_input(K, N, at::kBFloat16, 62)).first.t();
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    check_dequantize(stored.first.narrow(1, 16, K), stored.second, dtype);
    check_dequantize(stored.first.narrow(1, 1, K), scales.select(1, 1), dtype);
    check_dequantize(transposed, at::rand({N}, transposed.options().dtype(at::kFloat)).add_(0.5), dtype);
  }
}

namespace {

// The FP8 rows a kernel wrote beside its output `out` against the reference quantization of `out`, bit for bit.
void check_rows_of(const at::Tensor& out, const kernels::Fp8Rows& rows) {
  const auto ref = kernels::quantize_fp8_rows_reference(out.reshape({-1, out.size(-1)}));
  REQUIRE((rows.q.defined() && rows.q.device() == out.device()));
  CHECK(same_bits(rows.q, ref.first));
  CHECK(same_bits(rows.scale, ref.second));
}

}  // namespace

TEST_CASE("the norm and residual kernels' FP8 rows are quantize_fp8_rows of their outputs, bit for bit",
          "[gpu][kernels][fp8]") {
  // 16384: two vectors per thread (the written row is re-read across vectors).
  for (const auto dtype : kDtypes)
    for (const int64_t D : {int64_t{2048}, int64_t{1000}, int64_t{998}, int64_t{7}, int64_t{16384}})
      for (const int layout : {0, 2}) {
        INFO("dtype " << dtype << ", D " << D << ", layout " << layout);
        const int64_t B = 2, S = 19;
        const auto x = activation(B, S, D, dtype, 70, layout).mul(3), y = activation(B, S, D, dtype, 71, layout);
        const auto ada = randn({B, S, 6, D}, dtype, 72, 0.5);
        const auto gate = ada.select(2, 2), shift = ada.select(2, 3), scale = ada.select(2, 4);
        const auto weight = randn({D}, dtype, 73, 0.1).add(1);
        kernels::Fp8Rows rows;
        at::Tensor out;
        CHECK(fused_calls_in([&] { out = kernels::rms_norm_modulate(x, weight, 1e-6, scale, shift, &rows); }) == 1);
        check_rows_of(out, rows);
        CHECK(at::equal(out, kernels::rms_norm_modulate(x, weight, 1e-6, scale, shift)));  // asking changes nothing
        std::pair<at::Tensor, at::Tensor> hn;
        CHECK(fused_calls_in([&] {
                hn = kernels::residual_rms_norm_modulate(x, y, gate, weight, 1e-6, scale, shift, &rows);
              }) == 1);
        check_rows_of(hn.second, rows);
        CHECK(fused_calls_in([&] { out = kernels::gated_residual(x, y, gate, &rows); }) == 1);
        check_rows_of(out, rows);
        CHECK(at::equal(out, kernels::gated_residual_reference(x, y, gate)));
      }
  // Non-finite rows (inf, NaN) beside finite ones, and what the kernels do not take (float64: the references).
  auto x = randn({1, 4, 256}, at::kFloat, 74);
  x[0][1][5] = INFINITY;
  x[0][2][7] = NAN;
  const auto y = randn({1, 4, 256}, at::kFloat, 75), gate = randn({1, 1, 256}, at::kFloat, 76);
  kernels::Fp8Rows rows;
  const auto out = kernels::gated_residual(x, y, gate, &rows);
  check_rows_of(out, rows);
  CHECK(std::isinf(rows.scale[1].item<float>()));
  CHECK(std::isnan(rows.scale[2].item<float>()));
  const auto x64 = x.to(at::kDouble).nan_to_num(0, 0, 0);
  CHECK(fused_calls_in([&] { kernels::gated_residual(x64, y.to(at::kDouble), gate.to(at::kDouble), &rows); }) == 0);
  check_rows_of(kernels::gated_residual_reference(x64, y.to(at::kDouble), gate.to(at::kDouble)), rows);
}

TEST_CASE("a token index reads per-token modulation rows: the same bits as the gathered operands",
          "[gpu][kernels]") {
  // Note [Per-token modulation rows]: the kernels with [B, K, D] rows and an index against the same kernels with
  // the rows gathered to [B, S, D] first (the only difference is where a row is read from), and against the
  // reference with the index; two indices outside [0, K) are clamped.
  for (const auto dtype : kDtypes)
    for (const int64_t D : {int64_t{2048}, int64_t{998}, int64_t{7}}) {
      INFO("dtype " << dtype << ", D " << D);
      const int64_t B = 2, S = 19, K = 2;
      auto index = (randn({B, S}, at::kFloat, 80) > 0).to(at::kInt);
      index[0][3] = -4;
      index[1][5] = 9;
      const auto gather = [&](const at::Tensor& rows) {
        const auto i = index.to(at::kLong).clamp(0, K - 1).unsqueeze(-1).expand({B, S, D});
        return at::gather(rows, 1, i);
      };
      const auto x = activation(B, S, D, dtype, 81, 0).mul(3), y = activation(B, S, D, dtype, 82, 1);
      const auto ada = randn({B, K, 6, D}, dtype, 83, 0.5);
      const auto shift = ada.select(2, 0), scale = ada.select(2, 1), gate = ada.select(2, 2);
      const auto weight = randn({D}, dtype, 84, 0.1).add(1);
      at::Tensor out;
      CHECK(fused_calls_in([&] {
              out = kernels::rms_norm_modulate(x, weight, 1e-6, scale, shift, nullptr, index);
            }) == 1);
      CHECK(same_bits(out, kernels::rms_norm_modulate(x, weight, 1e-6, gather(scale), gather(shift))));
      check_kernel(out, kernels::rms_norm_modulate_reference(x, weight, 1e-6, scale, shift, index));
      std::pair<at::Tensor, at::Tensor> hn;
      kernels::Fp8Rows rows;
      CHECK(fused_calls_in([&] {
              hn = kernels::residual_rms_norm_modulate(x, y, gate, weight, 1e-6, scale, shift, &rows, index);
            }) == 1);
      const auto hn_gathered =
          kernels::residual_rms_norm_modulate(x, y, gather(gate), weight, 1e-6, gather(scale), gather(shift));
      CHECK((same_bits(hn.first, hn_gathered.first) && same_bits(hn.second, hn_gathered.second)));
      check_rows_of(hn.second, rows);
      CHECK(fused_calls_in([&] { out = kernels::gated_residual(x, y, gate, &rows, index); }) == 1);
      CHECK(same_bits(out, kernels::gated_residual_reference(x, y, gate, index)));
      check_rows_of(out, rows);
      CHECK(fused_calls_in([&] { out = kernels::layer_norm_modulate(x, 1e-6, scale, shift, index); }) == 1);
      CHECK(same_bits(out, kernels::layer_norm_modulate(x, 1e-6, gather(scale), gather(shift))));
    }
}

namespace {

// The tanh GELU in float64 as x / (1 + e^(-2u)), the form without cancellation where x < 0, of `x` as stored.
at::Tensor exact_gelu_tanh(const at::Tensor& x) {
  const auto v = x.to(at::kCPU, at::kDouble);
  const double beta = std::sqrt(2.0 / 3.14159265358979323846), kappa = static_cast<double>(0.044715f);
  return v / (1 + at::exp(-2 * beta * (v + kappa * v.pow(3))));
}

// The kernel's GELU against the exact one: one rounding to the dtype plus the fast exponential and division
// (Note [GELU before the FP8 rows]: relative 2^-15), and below the dtype's smallest normal numbers an absolute
// bound (float16's subnormal step; for float32 and bfloat16, flushed products 16 · 2^-126 from zero).
void check_gelu_values(const at::Tensor& x, const at::Tensor& activation) {
  const auto exact = exact_gelu_tanh(x), got = activation.to(at::kCPU, at::kDouble);
  const double relative = std::ldexp(1.0, -mantissa_bits(x.scalar_type()) - 1) + std::ldexp(1.0, -15);
  const double absolute = x.scalar_type() == at::kHalf ? std::ldexp(1.0, -25) : std::ldexp(1.0, -122);
  const auto finite = exact.isfinite();
  const auto excess = ((got - exact).abs() - (relative * exact.abs() + absolute)).masked_fill(~finite, 0);
  INFO("largest excess over the bound " << excess.max().item<double>());
  CHECK(excess.max().item<double>() <= 0);
  CHECK(at::equal(got.isnan(), exact.isnan()));
  CHECK(at::equal(got.masked_fill(finite, 0).nan_to_num(0), exact.masked_fill(finite, 0).nan_to_num(0)));
}

}  // namespace

TEST_CASE("quantize_fp8_rows_gelu_tanh: the tanh GELU and the row quantization of its values in one kernel",
          "[gpu][kernels][fp8]") {
  for (const auto dtype : kDtypes)
    for (const int64_t K : kFp8Cols)
      for (const int64_t M : {int64_t{1}, int64_t{37}, int64_t{300}}) {
        INFO("dtype " << dtype << ", M " << M << ", K " << K);
        // Around GELU's bend (|x| < 6) and far out on both sides.
        const auto x = fp8_input(M, K, dtype, 80 + K + M).mul(0.05);
        std::pair<at::Tensor, at::Tensor> rows;
        at::Tensor activation;
        CHECK(fused_calls_in([&] { rows = kernels::quantize_fp8_rows_gelu_tanh(x, &activation); }) == 1);
        check_gelu_values(x, activation);
        // The quantization of the values the kernel computed is the reference's, bit for bit.
        const auto ref = kernels::quantize_fp8_rows_reference(activation);
        CHECK(same_bits(rows.first, ref.first));
        CHECK(same_bits(rows.second, ref.second));
        CHECK(fused_calls_in([&] { rows = kernels::quantize_fp8_rows_gelu_tanh(x); }) == 1);
        CHECK(same_bits(rows.first, ref.first));
      }
  // Infinities and NaN: ATen's limits (gelu(+inf) = inf, gelu(-inf) = NaN).
  const auto special = at::tensor({INFINITY, -INFINITY, NAN, -1e30f, 1e30f, -0.f}).to(kCuda).reshape({1, 6});
  at::Tensor activation;
  kernels::quantize_fp8_rows_gelu_tanh(special, &activation);
  const auto aten = at::gelu(special, "tanh").cpu();
  CHECK(at::equal(activation.cpu().isnan(), aten.isnan()));
  CHECK(at::equal(activation.cpu().nan_to_num(0), aten.nan_to_num(0)));
  // Rows read in place from a column window; float64 runs the ATen ops.
  const auto wide = fp8_input(37, 520, at::kBFloat16, 90);
  const auto window = wide.narrow(1, 8, 512);
  kernels::quantize_fp8_rows_gelu_tanh(window, &activation);
  check_gelu_values(window, activation);
  CHECK(same_bits(kernels::quantize_fp8_rows_gelu_tanh(window).first,
                  kernels::quantize_fp8_rows_reference(activation).first));
  const auto x64 = window.to(at::kDouble);
  std::pair<at::Tensor, at::Tensor> rows;
  CHECK(fused_calls_in([&] { rows = kernels::quantize_fp8_rows_gelu_tanh(x64); }) == 0);
  CHECK(same_bits(rows.first, kernels::quantize_fp8_rows_reference(at::gelu(x64, "tanh")).first));
}

TEST_CASE("SDPA reads the head-split views in place and its output merges heads without a copy", "[gpu][kernels]") {
  const int64_t B = 2, S = 256, H = 8, Dh = 64;
  const auto split = [&](const at::Tensor& t) { return t.unflatten(2, {H, Dh}).permute({0, 2, 1, 3}); };
  const auto q = split(randn({B, S, H * Dh}, at::kBFloat16, 21)), k = split(randn({B, S, H * Dh}, at::kBFloat16, 22)),
             v = split(randn({B, S, H * Dh}, at::kBFloat16, 23));
  const auto choice = at::_fused_sdp_choice(q, k, v);
  INFO("at::_fused_sdp_choice = " << choice << " (0 math, 1 flash, 2 efficient, 3 cudnn)");
  CHECK(choice != 0);  // a fused attention kernel, not the math fallback
  const auto out = at::scaled_dot_product_attention(q, k, v);
  // flash / efficient attention write [B, S, H, Dh] and return its [B, H, S, Dh] view: merging heads is free.
  CHECK(out.permute({0, 2, 1, 3}).is_contiguous());
  const auto report = kernels::kernel_report(kCuda, at::kBFloat16);
  std::string lines;
  for (const auto& d : report) lines += d.message + "\n";
  INFO(lines);
  CHECK(report.front().rule == "kernels.cuda");
  CHECK(report.back().rule == "kernels.sdpa");
}

namespace {

// A two-block transformer (D = 64: 8-element vectors, RoPE padding of 4, every block linear a multiple of 16 for
// FP8 matmul), its random weights and inputs with a partly masked text.
ltxmps::pipeline::TransformerConfig small_config() {
  ltxmps::pipeline::TransformerConfig config;
  config.in_channels = config.out_channels = 16;
  config.num_attention_heads = 4;
  config.attention_head_dim = 16;
  config.cross_attention_dim = 64;
  config.num_layers = 2;
  config.caption_channels = 32;
  config.norm_elementwise_affine = true;
  return config;
}

at::Tensor small_weight(const std::string& name, const std::vector<int64_t>& shape) {
  auto g = ltxmps::make_cpu_generator(std::hash<std::string>{}(name));
  const bool bias = name.find("bias") != std::string::npos;
  if (shape.size() == 1) return ltxmps::randn(shape, g).mul_(0.05).add_(bias ? 0.0 : 1.0);
  return ltxmps::randn(shape, g).mul_(1.0 / std::sqrt(static_cast<double>(shape[1])));
}

ltxmps::pipeline::TransformerInputs small_inputs() {
  auto g = ltxmps::make_cpu_generator(24);
  ltxmps::pipeline::TransformerInputs in;
  in.hidden_states = ltxmps::randn({2, 3 * 4 * 5, 16}, g);
  in.encoder_hidden_states = ltxmps::randn({2, 9, 32}, g);
  in.timestep = at::tensor({500.0f, 20.0f});
  in.encoder_attention_mask = at::ones({2, 9});
  in.encoder_attention_mask->narrow(1, 6, 3).zero_();
  in.num_frames = 3;
  in.height = 4;
  in.width = 5;
  in.rope_interpolation_scale = std::array<double, 3>{8.0 / 25.0, 32.0, 32.0};
  return in;
}

}  // namespace

TEST_CASE("a transformer forward with the fused kernels matches the unfused forward", "[gpu][kernels]") {
  using namespace ltxmps::pipeline;
  at::globalContext().setAllowTF32CuBLAS(false);
  const auto config = small_config();
  const auto weights = small_weight;
  const auto in = small_inputs();
  const auto reference = TransformerModel::from_weights(config, {c10::kCPU, at::kFloat, {}}, weights).forward(in);
  const auto scaled_error = [](const at::Tensor& a, const at::Tensor& b) {
    const auto x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
    return (x - y).abs().max().item<double>() / std::max(1.0, y.abs().max().item<double>());
  };
  // Bounds as fractions of the output scale: float32 differs by reduction order only; bfloat16 by a unit of the
  // last place here and there, carried through two blocks (the unfused bfloat16 forward is itself 5e-2 from the
  // float32 CPU forward, test_gpu_models.cpp).
  for (const auto& [dtype, bound] : std::map<at::ScalarType, double>{{at::kFloat, 1e-4}, {at::kBFloat16, 3e-2}}) {
    INFO("dtype " << dtype);
    TransformerRuntime fused{kCuda, dtype, {}};
    TransformerRuntime unfused = fused;
    unfused.fused_kernels = false;
    at::Tensor a, b;
    const auto calls = fused_calls_in([&] { a = TransformerModel::from_weights(config, fused, weights).forward(in); });
    // Per block: norm1, attn1's q/k, its gated residual, attn2's q and k (two lengths: two launches), the residual
    // with norm2, the GELU GEMM, the feed-forward's gated residual; then the output head.
    CHECK(calls == 2 * 8 + 1);
    CHECK(fused_calls_in([&] { b = TransformerModel::from_weights(config, unfused, weights).forward(in); }) == 0);
    CHECK(scaled_error(a, b) <= bound);
    CHECK(scaled_error(a, reference) <= (dtype == at::kFloat ? 1e-4 : 5e-2));
  }
  // The effects-mask capture reads q and k before RoPE: that layer takes the unfused q/k path, the output stays.
  std::map<int64_t, at::Tensor> maps;
  auto capture = head_mean_capture({1}, {0, 60}, {0, 60}, maps);
  capture.apply_rope = false;
  const auto model = TransformerModel::from_weights(config, {kCuda, at::kBFloat16, {}}, weights);
  const auto with_capture = model.forward(in, &capture);
  CHECK(scaled_error(with_capture, model.forward(in)) <= 3e-2);
  REQUIRE(maps.count(1) == 1);
  CHECK(maps[1].isfinite().all().item<bool>());
}


TEST_CASE("a forward with timestep rows and a token index on CUDA equals the per-token forward", "[gpu][kernels]") {
  using namespace ltxmps::pipeline;
  const auto config = small_config();
  auto per_token = small_inputs();
  const int64_t B = per_token.hidden_states.size(0), S = per_token.hidden_states.size(1);
  const auto m = (randn({1, S}, at::kFloat, 85) > 0).to(at::kFloat).expand({B, S}).cpu();
  const float t = 613.5f;
  per_token.timestep = at::minimum(at::full({B, 1}, t), (1 - m) * 1000.0);
  auto rows = per_token;
  rows.timestep = at::tensor({t, 0.f}).expand({B, 2});
  rows.timestep_index = m.to(at::kInt);
  // The same modulation values; the time embedding's GEMMs see 2 rows instead of S (cuBLAS may round them
  // differently): float32 within reduction order, bfloat16 within one rounding carried through two blocks.
  for (const auto& [dtype, bound] : std::map<at::ScalarType, double>{{at::kFloat, 1e-4}, {at::kBFloat16, 3e-2}}) {
    INFO("dtype " << dtype);
    const auto model = TransformerModel::from_weights(config, {kCuda, dtype, {}}, small_weight);
    const auto a = model.forward(per_token).to(at::kCPU, at::kDouble), b = model.forward(rows).to(at::kCPU, at::kDouble);
    CHECK((a - b).abs().max().item<double>() <= bound * std::max(1.0, a.abs().max().item<double>()));
  }
}

TEST_CASE("an FP8-matmul forward takes its FP8 rows from the fused kernels", "[gpu][kernels][fp8]") {
  using namespace ltxmps::pipeline;
  const auto caps = ltxmps::current_capabilities();
  const auto* info = ltxmps::cuda_info(caps, kCuda);
  if (info == nullptr || !info->supports_fp8_matmul()) {
    WARN("FP8 matmul needs compute capability >= 8.9: skipped");
    return;
  }
  const auto config = small_config();
  const auto in = small_inputs();
  TransformerRuntime runtime{kCuda, at::kBFloat16, {}};
  runtime.block_linears = LinearMode::fp8_matmul;
  const auto model = TransformerModel::from_weights(config, runtime, small_weight);
  at::Tensor out;
  const auto calls = fused_calls_in([&] { out = model.forward(in); });
  // Per block: norm1 with the rows of q/k/v, attn1's q/k, the quantization of its output, its gated residual with
  // the rows of attn2's query, attn2's q and k (two lengths), the quantization of its output, the residual with norm2
  // and the rows of ff.net.0, the GELU with the rows of ff.net.2, the feed-forward's gated residual. Per forward:
  // the text context's rows (once for every block) and the output head.
  CHECK(calls == 2 * 10 + 2);
  // Against the bf16 forward, the bound test_gpu_fp8.cpp derives: 2^-4/√3 · √(2N) for N = 20 rounded layers with
  // rounded inputs, plus twice what bf16 itself moves against float32.
  runtime.block_linears = LinearMode::dense;
  const auto as_double = [](const at::Tensor& t) { return t.to(at::kCPU, at::kDouble); };
  const auto dense = as_double(TransformerModel::from_weights(config, runtime, small_weight).forward(in));
  const auto fp32 = as_double(TransformerModel::from_weights(config, {c10::kCPU, at::kFloat, {}}, small_weight).forward(in));
  const auto rms = [](const at::Tensor& t) { return t.pow(2).mean().sqrt().item<double>(); };
  const double bound = (1.0 / 16) / std::sqrt(3.0) * std::sqrt(2.0 * 20) + 2 * rms(dense - fp32) / rms(fp32);
  const auto fp8 = as_double(out);
  INFO("scaled max error " << (fp8 - dense).abs().max().item<double>() / dense.abs().max().item<double>()
                           << ", bound " << bound);
  CHECK((fp8 - dense).abs().max().item<double>() / dense.abs().max().item<double>() <= bound);
  CHECK(rms(fp8 - dense) > 0);
}

int main(int argc, char* argv[]) {
  if (!torch::cuda::is_available()) {
    std::cout << "SKIPPED: no CUDA device on this machine (torch::cuda::is_available() is false); "
                 "the fused kernels are tested on the GPU machine\n";
    return 77;
  }
  if (!kernels::built_with_cuda()) {
    std::cout << "SKIPPED: this build has no CUDA kernels (ltxmps_kernels was configured without a CUDA compiler "
                 "or with a LibTorch without CUDA; see the CMake output)\n";
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
