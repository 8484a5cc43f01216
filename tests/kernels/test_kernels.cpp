// ltxmps_kernels on the CPU: each reference against its formula written out here element by element (in float64
// for float32 inputs; in float32 with a rounding to the half dtype after every ATen op for bfloat16 / float16, the
// rounding points the CUDA kernels reproduce), odd sizes, strided and broadcast operands; the entry points equal
// their references bit for bit off CUDA, and so does a whole transformer forward with and without the fused
// kernels.
#include "catch_compat.hpp"
#include "kernels/fp8_test_rows.hpp"

#include "ltxmps_kernels/fused.hpp"

#include "ltxmps_pipeline/transformer.hpp"

#include <ltxmps/ltxmps.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace kernels = ltxmps::kernels;

namespace {

// Rounds a float32 value to `dtype` and back: what ATen stores between two ops of that dtype.
float round_to(float v, at::ScalarType dtype) {
  if (dtype == at::kBFloat16) return static_cast<float>(c10::BFloat16(v));
  if (dtype == at::kHalf) return static_cast<float>(c10::Half(v));
  return v;
}

int mantissa_bits(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? 7 : dtype == at::kHalf ? 10 : 23;
}

// Agreement of `out` with `expected`: the largest difference in units in the last place of `dtype` at the
// largest magnitude of `expected`, and the fraction of elements that differ at all.
struct Agreement {
  double ulps = 0;
  double mismatch_fraction = 0;
};

Agreement agreement(const at::Tensor& out, const at::Tensor& expected, at::ScalarType dtype) {
  const auto a = out.to(at::kDouble), b = expected.to(at::kDouble);
  REQUIRE(a.sizes() == b.sizes());
  int e = 0;
  std::frexp(std::max(1e-30, b.abs().max().item<double>()), &e);
  Agreement r;
  r.ulps = (a - b).abs().max().item<double>() / std::ldexp(1.0, e - 1 - mantissa_bits(dtype));
  r.mismatch_fraction = a.ne(b).sum().item<double>() / static_cast<double>(std::max<int64_t>(1, a.numel()));
  return r;
}

double relative_error(const at::Tensor& out, const at::Tensor& expected) {
  const auto a = out.to(at::kDouble), b = expected.to(at::kDouble);
  return (a - b).abs().max().item<double>() / std::max(1e-30, b.abs().max().item<double>());
}

// A [B, S, D] tensor whose rows are strided (a column window of a wider tensor), so the kernels' stride handling
// is exercised in their references' callers too.
at::Tensor strided_rows(int64_t B, int64_t S, int64_t D, at::ScalarType dtype, int64_t seed) {
  auto g = ltxmps::make_cpu_generator(static_cast<uint64_t>(seed));
  return ltxmps::randn({B, S, D + 5}, g).to(dtype).narrow(2, 3, D);
}

// The block's `ada` tensor [B, T, 6, D] and its column slices.
at::Tensor ada_tensor(int64_t B, int64_t T, int64_t D, at::ScalarType dtype, int64_t seed) {
  auto g = ltxmps::make_cpu_generator(static_cast<uint64_t>(seed));
  return ltxmps::randn({B, T, 6, D}, g).mul_(0.5).to(dtype);
}

// Elementwise loop over [B, S, D] float copies (operands broadcast to x's shape).
std::vector<at::Tensor> as_float(const at::Tensor& like, std::initializer_list<at::Tensor> ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.defined() ? t.expand(like.sizes()).to(at::kFloat).contiguous() : t);
  return out;
}

// diffusers RMSNorm + modulation, written out: float32 (float64 when dtype is float32) statistics, the input
// times rsqrt rounded to dtype, times the weight rounded, (1 + scale) rounded, the product rounded, plus shift.
at::Tensor rms_norm_modulate_formula(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& scale,
                                     const at::Tensor& shift) {
  const auto dtype = x.scalar_type();
  const int64_t D = x.size(2), rows = x.numel() / D;
  const auto f = as_float(x, {x, scale, shift});
  const auto w = weight.defined() ? weight.to(at::kFloat).contiguous() : at::Tensor();
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const float *px = f[0].data_ptr<float>(), *ps = f[1].data_ptr<float>(), *ph = f[2].data_ptr<float>();
  float* po = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t d = 0; d < D; ++d) sum += static_cast<double>(px[r * D + d]) * px[r * D + d];
    const double rstd = 1.0 / std::sqrt(sum / D + eps);
    for (int64_t i = r * D; i < (r + 1) * D; ++i) {
      if (dtype == at::kFloat) {
        double n = px[i] * rstd;
        if (w.defined()) n *= w.data_ptr<float>()[i - r * D];
        po[i] = static_cast<float>(n * (1.0 + ps[i]) + ph[i]);
        continue;
      }
      float n = round_to(px[i] * static_cast<float>(rstd), dtype);
      if (w.defined()) n = round_to(n * w.data_ptr<float>()[i - r * D], dtype);
      const float m = round_to(n * round_to(1.f + ps[i], dtype), dtype);
      po[i] = round_to(m + ph[i], dtype);
    }
  }
  return out;
}

// Checks `out` against `expected` with the bounds of its dtype.
void check_close(const at::Tensor& out, const at::Tensor& expected, at::ScalarType dtype) {
  REQUIRE(out.scalar_type() == dtype);
  if (dtype == at::kFloat) {
    // float64 formula against float32 arithmetic: a few float32 roundings of O(1) values.
    CHECK(relative_error(out, expected) <= 1e-5);
    return;
  }
  // Same rounding points: only a float32 statistic computed in another order can move an intermediate across a
  // rounding boundary (one unit in its last place, which the modulation may scale by |1 + scale| < 3 before the
  // output rounds), rarely.
  const auto a = agreement(out, expected, dtype);
  INFO("ulps " << a.ulps << ", mismatching fraction " << a.mismatch_fraction);
  CHECK(a.ulps <= 4.0);
  CHECK(a.mismatch_fraction <= 0.01);
}

const at::ScalarType kDtypes[] = {at::kFloat, at::kBFloat16, at::kHalf};

}  // namespace

TEST_CASE("rms_norm_modulate_reference is diffusers' RMSNorm and AdaLN modulation", "[kernels]") {
  for (const auto dtype : kDtypes) {
    for (const int64_t D : {7, 40}) {
      for (const int64_t T : {1, 5}) {
        INFO("dtype " << dtype << ", D " << D << ", T " << T);
        const int64_t B = 2, S = 5;
        const auto x = strided_rows(B, S, D, dtype, 1).mul(3);
        const auto ada = ada_tensor(B, T, D, dtype, 2);
        const auto scale = ada.select(2, 1), shift = ada.select(2, 0);
        REQUIRE_FALSE(scale.is_contiguous());
        for (const bool with_weight : {false, true}) {
          const auto weight = with_weight ? (at::rand({D}) + 0.5).to(dtype) : at::Tensor();
          const auto out = kernels::rms_norm_modulate_reference(x, weight, 1e-6, scale, shift);
          check_close(out, rms_norm_modulate_formula(x, weight, 1e-6, scale, shift), dtype);
          // Off CUDA the entry point is the reference.
          CHECK(at::equal(kernels::rms_norm_modulate(x, weight, 1e-6, scale, shift), out));
        }
      }
    }
  }
}

// The VAE's channel norm: its rows are the channels of a channels-last activation, its modulation one row per batch
// entry or none.
TEST_CASE("rms_norm_modulate_silu_reference is the norm, the modulation when given, then the SiLU", "[kernels]") {
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    const int64_t B = 2, S = 7, D = 24;
    const auto x = strided_rows(B, S, D, dtype, 5).mul(3);
    auto g = ltxmps::make_cpu_generator(6);
    const auto scale = ltxmps::randn({B, 1, D}, g).mul_(0.5).to(dtype);
    const auto shift = ltxmps::randn({B, 1, D}, g).mul_(0.5).to(dtype);
    const auto zeros = at::zeros({1, 1, D}, x.options());
    // ATen's SiLU: v / (1 + e^-v) in float32 from the dtype's value, rounded once.
    const auto silu_of = [&](const at::Tensor& v) {
      const auto f = v.to(at::kFloat);
      return (f / (1 + at::exp(-f))).to(dtype);
    };
    const auto modulated = kernels::rms_norm_modulate_silu_reference(x, 1e-8, scale, shift);
    check_close(modulated, silu_of(rms_norm_modulate_formula(x, {}, 1e-8, scale, shift).to(dtype)), dtype);
    const auto plain = kernels::rms_norm_modulate_silu_reference(x, 1e-8, {}, {});
    check_close(plain, silu_of(rms_norm_modulate_formula(x, {}, 1e-8, zeros, zeros).to(dtype)), dtype);
    CHECK_FALSE(at::equal(plain, modulated));
    // Off CUDA the entry point is the reference.
    CHECK(at::equal(kernels::rms_norm_modulate_silu(x, 1e-8, scale, shift), modulated));
    CHECK(at::equal(kernels::rms_norm_modulate_silu(x, 1e-8, {}, {}), plain));
    CHECK_THROWS_WITH(kernels::rms_norm_modulate_silu(x, 1e-8, scale, {}),
                      ltxmps_test::Contains("scale and shift must be given together"));
  }
}

TEST_CASE("add_channel_bias_reference_ adds the bias over dimension 1 in place, rounded once", "[kernels]") {
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    auto g = ltxmps::make_cpu_generator(7);
    const auto x = ltxmps::randn({2, 5, 3, 4, 6}, g).to(dtype);
    const auto bias = ltxmps::randn({5}, g).to(dtype);
    const auto expected = (x.to(at::kFloat) + bias.to(at::kFloat).view({1, 5, 1, 1, 1})).to(dtype);
    auto y = x.clone();
    const auto out = kernels::add_channel_bias_reference_(y, bias);
    CHECK(out.data_ptr() == y.data_ptr());
    CHECK(at::equal(y, expected));
    // Off CUDA the entry point is the reference, for a channels-last tensor too (its layout kept).
    auto z = x.contiguous(at::MemoryFormat::ChannelsLast3d);
    kernels::add_channel_bias_(z, bias);
    CHECK(at::equal(z, expected));
    CHECK(z.is_contiguous(at::MemoryFormat::ChannelsLast3d));
    CHECK_THROWS_WITH(kernels::add_channel_bias_(x.clone(), bias.narrow(0, 0, 4)),
                      ltxmps_test::Contains("add_channel_bias_: bias must be [C]"));
  }
}

TEST_CASE("residual_rms_norm_modulate_reference sums the residual, then normalizes and modulates", "[kernels]") {
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    const int64_t B = 2, S = 3, D = 13;
    const auto x = strided_rows(B, S, D, dtype, 3), y = strided_rows(B, S, D, dtype, 4);
    const auto ada = ada_tensor(B, 1, D, dtype, 5);
    const auto scale = ada.select(2, 4), shift = ada.select(2, 3), gate = ada.select(2, 2);
    for (const bool gated : {false, true}) {
      const auto g = gated ? gate : at::Tensor();
      const auto [h, normed] = kernels::residual_rms_norm_modulate_reference(x, y, g, at::Tensor(), 1e-6, scale, shift);
      // h = x + y·gate, each op rounded to dtype
      const auto f = as_float(x, {x, y, gated ? gate : at::ones_like(gate)});
      auto expected_h = at::empty(x.sizes(), x.options().dtype(at::kFloat));
      for (int64_t i = 0; i < x.numel(); ++i) {
        const float t = gated ? round_to(f[1].data_ptr<float>()[i] * f[2].data_ptr<float>()[i], dtype)
                              : f[1].data_ptr<float>()[i];
        expected_h.data_ptr<float>()[i] = round_to(f[0].data_ptr<float>()[i] + t, dtype);
      }
      CHECK(at::equal(h.to(at::kFloat), expected_h));
      check_close(normed, rms_norm_modulate_formula(h, at::Tensor(), 1e-6, scale, shift), dtype);
      const auto [h2, normed2] = kernels::residual_rms_norm_modulate(x, y, g, at::Tensor(), 1e-6, scale, shift);
      CHECK((at::equal(h2, h) && at::equal(normed2, normed)));
    }
  }
}

TEST_CASE("gated_residual_reference is x + y * gate with both roundings", "[kernels]") {
  for (const auto dtype : kDtypes) {
    for (const int64_t T : {1, 4}) {
      INFO("dtype " << dtype << ", T " << T);
      const int64_t B = 3, S = 4, D = 9;
      const auto x = strided_rows(B, S, D, dtype, 6), y = strided_rows(B, S, D, dtype, 7);
      const auto gate = ada_tensor(B, T, D, dtype, 8).select(2, 5);
      const auto out = kernels::gated_residual_reference(x, y, gate);
      const auto f = as_float(x, {x, y, gate});
      auto expected = at::empty(x.sizes(), x.options().dtype(at::kFloat));
      for (int64_t i = 0; i < x.numel(); ++i)
        expected.data_ptr<float>()[i] = round_to(
            f[0].data_ptr<float>()[i] + round_to(f[1].data_ptr<float>()[i] * f[2].data_ptr<float>()[i], dtype), dtype);
      REQUIRE(out.scalar_type() == dtype);
      CHECK(at::equal(out.to(at::kFloat), expected));
      CHECK(at::equal(kernels::gated_residual(x, y, gate), out));
    }
  }
}

TEST_CASE("layer_norm_modulate_reference is the output head's LayerNorm and modulation", "[kernels]") {
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    const int64_t B = 2, S = 3, D = 11;
    const auto x = strided_rows(B, S, D, dtype, 9).add(2);  // a mean far from 0
    const auto mod = ada_tensor(B, 1, D, dtype, 10);
    const auto shift = mod.select(2, 0), scale = mod.select(2, 1);
    const auto out = kernels::layer_norm_modulate_reference(x, 1e-6, scale, shift);
    const auto f = as_float(x, {x, scale, shift});
    auto expected = at::empty(x.sizes(), x.options().dtype(at::kFloat));
    for (int64_t r = 0; r < B * S; ++r) {
      const float* px = f[0].data_ptr<float>() + r * D;
      double mean = 0, var = 0;
      for (int64_t d = 0; d < D; ++d) mean += px[d];
      mean /= D;
      for (int64_t d = 0; d < D; ++d) var += (px[d] - mean) * (px[d] - mean);
      const double rstd = 1.0 / std::sqrt(var / D + 1e-6);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = r * D + d;
        const float sc = f[1].data_ptr<float>()[i], sh = f[2].data_ptr<float>()[i];
        expected.data_ptr<float>()[i] =
            dtype == at::kFloat
                ? static_cast<float>((px[d] - mean) * rstd * (1.0 + sc) + sh)
                : round_to(round_to(round_to(static_cast<float>((px[d] - mean) * rstd), dtype) *
                                        round_to(1.f + sc, dtype),
                                    dtype) +
                               sh,
                           dtype);
      }
    }
    check_close(out, expected, dtype);
    CHECK(at::equal(kernels::layer_norm_modulate(x, 1e-6, scale, shift), out));
  }
}

// Rows [B, K, D] chosen per token by index [B, S] (clamped to [0, K)), written out as a loop: [B, S, D].
at::Tensor gathered_rows(const at::Tensor& rows, const at::Tensor& index) {
  const int64_t B = index.size(0), S = index.size(1), K = rows.size(1);
  auto out = at::empty({B, S, rows.size(2)}, rows.options());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      out[b][s].copy_(rows[b][std::clamp<int64_t>(index[b][s].item<int64_t>(), 0, K - 1)]);
  return out;
}

TEST_CASE("the modulation entry points read per-token rows through a token index", "[kernels]") {
  const int64_t B = 2, S = 5, D = 7, K = 3;
  // Every row used, and two indices outside [0, K) that are clamped.
  const auto index = at::tensor({0, 1, 2, 1, 0, 2, 2, -1, 0, 7}, at::kInt).view({B, S});
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    const auto x = strided_rows(B, S, D, dtype, 21), y = strided_rows(B, S, D, dtype, 22);
    const auto ada = ada_tensor(B, K, D, dtype, 23);
    const auto shift = ada.select(2, 0), scale = ada.select(2, 1), gate = ada.select(2, 2);
    const auto shift_s = gathered_rows(shift, index), scale_s = gathered_rows(scale, index),
               gate_s = gathered_rows(gate, index);
    const auto weight = (at::rand({D}) + 0.5).to(dtype);
    // Each with the index equals the per-token operands gathered first, bit for bit; off CUDA the entry point is
    // the reference.
    const auto norm = kernels::rms_norm_modulate_reference(x, weight, 1e-6, scale, shift, index);
    CHECK(at::equal(norm, kernels::rms_norm_modulate_reference(x, weight, 1e-6, scale_s, shift_s)));
    CHECK(at::equal(kernels::rms_norm_modulate(x, weight, 1e-6, scale, shift, nullptr, index), norm));
    const auto [h, normed] =
        kernels::residual_rms_norm_modulate_reference(x, y, gate, weight, 1e-6, scale, shift, index);
    const auto [h_s, normed_s] =
        kernels::residual_rms_norm_modulate_reference(x, y, gate_s, weight, 1e-6, scale_s, shift_s);
    CHECK((at::equal(h, h_s) && at::equal(normed, normed_s)));
    const auto [h2, normed2] =
        kernels::residual_rms_norm_modulate(x, y, gate, weight, 1e-6, scale, shift, nullptr, index);
    CHECK((at::equal(h2, h) && at::equal(normed2, normed)));
    const auto res = kernels::gated_residual_reference(x, y, gate, index);
    CHECK(at::equal(res, kernels::gated_residual_reference(x, y, gate_s)));
    CHECK(at::equal(kernels::gated_residual(x, y, gate, nullptr, index), res));
    const auto head = kernels::layer_norm_modulate_reference(x, 1e-6, scale, shift, index);
    CHECK(at::equal(head, kernels::layer_norm_modulate_reference(x, 1e-6, scale_s, shift_s)));
    CHECK(at::equal(kernels::layer_norm_modulate(x, 1e-6, scale, shift, index), head));
  }
  const auto x = strided_rows(B, S, D, at::kFloat, 24);
  const auto ada = ada_tensor(B, K, D, at::kFloat, 25);
  CHECK_THROWS_WITH(kernels::rms_norm_modulate(x, {}, 1e-6, ada.select(2, 1), ada.select(2, 0), nullptr,
                                               index.to(at::kLong)),
                    ltxmps_test::Contains("rms_norm_modulate: token_index must be int32 [B, S]"));
  CHECK_THROWS_WITH(kernels::gated_residual(x, x, ada.select(2, 2), nullptr, index.narrow(1, 0, 4)),
                    ltxmps_test::Contains("gated_residual: token_index must be int32 [B, S]"));
}

TEST_CASE("rotary_emb_reference rotates interleaved pairs in float32", "[kernels]") {
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    const int64_t B = 2, S = 3, D = 10;
    const auto x = strided_rows(B, S, D, dtype, 11);
    auto g = ltxmps::make_cpu_generator(12);
    const auto angles = ltxmps::randn({1, S, D}, g).mul_(3);  // batch-broadcast cos / sin
    const auto cos = angles.cos(), sin = angles.sin();
    const auto out = kernels::rotary_emb_reference(x, cos, sin);
    REQUIRE(out.scalar_type() == dtype);
    const auto f = as_float(x, {x, cos, sin});
    auto expected = at::empty(x.sizes(), x.options().dtype(at::kFloat));
    const float *px = f[0].data_ptr<float>(), *pc = f[1].data_ptr<float>(), *ps = f[2].data_ptr<float>();
    for (int64_t i = 0; i < x.numel(); i += 2) {
      // y_2i = x_2i cos - x_2i+1 sin, y_2i+1 = x_2i+1 cos + x_2i sin; products and sums in float32
      const float a = px[i] * pc[i], b = -px[i + 1] * ps[i];
      const float c = px[i + 1] * pc[i + 1], d = px[i] * ps[i + 1];
      expected.data_ptr<float>()[i] = round_to(a + b, dtype);
      expected.data_ptr<float>()[i + 1] = round_to(c + d, dtype);
    }
    CHECK(at::equal(out.to(at::kFloat), expected));
  }
}

TEST_CASE("qk_rms_norm_rope_reference normalizes across all heads, then rotates", "[kernels]") {
  for (const auto dtype : kDtypes) {
    INFO("dtype " << dtype);
    const int64_t B = 2, S = 5, D = 12;
    const auto q = strided_rows(B, S, D, dtype, 13).mul(4), k = strided_rows(B, S, D, dtype, 14);
    const auto qw = (at::rand({D}) + 0.5).to(dtype), kw = (at::rand({D}) + 0.5).to(dtype);
    auto g = ltxmps::make_cpu_generator(15);
    const auto angles = ltxmps::randn({B, S, D}, g);
    const auto cos = angles.cos(), sin = angles.sin();
    const auto [qn, kn] = kernels::qk_rms_norm_rope_reference(q, k, qw, kw, 1e-5, at::Tensor(), at::Tensor());
    // torch.nn.RMSNorm: x·rsqrt(mean(x²) + eps)·weight in float32, rounded once to the input dtype
    for (const auto& [in, w, normed] : {std::make_tuple(q, qw, qn), std::make_tuple(k, kw, kn)}) {
      const auto fx = in.to(at::kDouble);
      const auto rstd = (fx.pow(2).mean(-1, true) + 1e-5).rsqrt();
      check_close(normed, (fx * rstd * w.to(at::kDouble)).to(dtype).to(at::kFloat), dtype);
    }
    const auto [qr, kr] = kernels::qk_rms_norm_rope_reference(q, k, qw, kw, 1e-5, cos, sin);
    CHECK(at::equal(qr, kernels::rotary_emb_reference(qn, cos, sin)));
    CHECK(at::equal(kr, kernels::rotary_emb_reference(kn, cos, sin)));
    const auto [qf, kf] = kernels::qk_rms_norm_rope(q, k, qw, kw, 1e-5, cos, sin);
    CHECK((at::equal(qf, qr) && at::equal(kf, kr)));
    // Keys of another length (cross-attention): no rotary embedding.
    const auto text = strided_rows(B, 3, D, dtype, 16);
    const auto [qc, kc] = kernels::qk_rms_norm_rope(q, text, qw, kw, 1e-5, at::Tensor(), at::Tensor());
    CHECK((at::equal(qc, qn) && kc.sizes() == text.sizes()));
  }
}

TEST_CASE("linear_gelu_tanh_reference is the projection and the tanh GELU", "[kernels]") {
  auto g = ltxmps::make_cpu_generator(17);
  const auto x = ltxmps::randn({2, 5, 6}, g), w = ltxmps::randn({9, 6}, g).mul_(0.4), b = ltxmps::randn({9}, g);
  const auto out = kernels::linear_gelu_tanh_reference(x, w, b);
  const auto y = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t()) + b.to(at::kDouble);
  const auto expected = 0.5 * y * (1 + at::tanh(std::sqrt(2.0 / M_PI) * (y + 0.044715 * y.pow(3))));
  CHECK(relative_error(out, expected) <= 1e-5);
  CHECK(at::equal(kernels::linear_gelu_tanh(x, w, b), out));
}

namespace {

at::Tensor fp8_rows(int64_t M, int64_t K, at::ScalarType dtype, uint64_t seed) {
  return ltxmps_test::fp8_test_rows(M, K, seed).to(dtype);
}

// e4m3 code bits of a float, as ATen converts (round to nearest even).
uint8_t e4m3(float v) {
  return c10::Float8_e4m3fn(v).x;
}

}  // namespace

TEST_CASE("quantize_fp8_rows_reference: amax scale, clamp and e4m3 codes, element by element", "[kernels][fp8]") {
  for (const auto dtype : kDtypes)
    for (const int64_t K : {1, 7, 33, 64}) {
      INFO("dtype " << dtype << ", K " << K);
      const int64_t M = 9;
      const auto x = fp8_rows(M, K, dtype, 30 + K);
      const auto [q, scale] = kernels::quantize_fp8_rows_reference(x);
      REQUIRE(q.scalar_type() == at::kFloat8_e4m3fn);
      REQUIRE(scale.scalar_type() == at::kFloat);
      REQUIRE((q.sizes() == x.sizes() && scale.sizes() == at::IntArrayRef{M}));
      const auto fx = x.to(at::kFloat).contiguous();
      const auto codes = q.view(at::kByte).contiguous();
      for (int64_t r = 0; r < M; ++r) {
        const float* row = fx.data_ptr<float>() + r * K;
        float amax = 0.f;
        for (int64_t c = 0; c < K; ++c) amax = std::max(amax, std::abs(row[c]));
        const float expected_scale = std::max(amax * static_cast<float>(1.0 / kernels::kFp8E4m3Max), FLT_MIN);
        CHECK(scale[r].item<float>() == expected_scale);
        int64_t wrong = 0;
        for (int64_t c = 0; c < K; ++c) wrong += codes.data_ptr<uint8_t>()[r * K + c] != e4m3(row[c] / expected_scale);
        CHECK(wrong == 0);
      }
      CHECK(scale[0].item<float>() == FLT_MIN);
      CHECK(q[0].to(at::kFloat).abs().max().item<float>() == 0.0f);
      // Off CUDA the entry point is the reference, bit for bit; so for a strided view.
      const auto [q2, scale2] = kernels::quantize_fp8_rows(x);
      CHECK((at::equal(q2.view(at::kByte), codes) && at::equal(scale2, scale)));
      const auto strided = at::cat({x, x}, 1).narrow(1, K, K);
      CHECK(at::equal(kernels::quantize_fp8_rows(strided).first.view(at::kByte), codes));
    }
}

TEST_CASE("quantize_fp8_rows: codes round-trip within e4m3 precision; non-finite rows", "[kernels][fp8]") {
  const auto x = fp8_rows(64, 96, at::kFloat, 40);
  const auto [q, scale] = kernels::quantize_fp8_rows(x);
  const auto back = kernels::dequantize_fp8_rows(q, scale, at::kFloat).to(at::kDouble);
  const auto dx = x.to(at::kDouble);
  // Half a step of e4m3's 3 mantissa bits for normal codes, half the subnormal step 2^-9 (times the scale) below;
  // in float64, where the float32 subnormals of the clamped row stay exact.
  const auto bound = dx.abs() * (1.0 / 16) * (1 + 1e-6) + scale.to(at::kDouble).unsqueeze(1) * std::ldexp(1.0, -10);
  CHECK(((back - dx).abs() <= bound).all().item<bool>());
  // Each row's largest element lands on ±448 and comes back within the two float32 roundings of the scale (rows 0
  // and 1 are the zero and the clamped row).
  const auto at_max = x.abs().argmax(1, /*keepdim=*/true).narrow(0, 2, 62);
  CHECK(q.narrow(0, 2, 62).to(at::kFloat).gather(1, at_max).abs().eq(448).all().item<bool>());
  const auto largest = dx.narrow(0, 2, 62).gather(1, at_max);
  CHECK(((back.narrow(0, 2, 62).gather(1, at_max) - largest).abs() <= largest.abs() * std::ldexp(1.0, -22))
            .all()
            .item<bool>());
  // An infinity makes the row's scale inf: finite elements code ±0 and the infinite one NaN (inf / inf; the NaN's
  // sign is the division's, which differs between the CPU and CUDA). A NaN makes scale and codes NaN.
  auto special = at::ones({2, 5});
  special[0][2] = INFINITY;
  special[1][3] = NAN;
  const auto [qs, ss] = kernels::quantize_fp8_rows(special);
  CHECK(std::isinf(ss[0].item<float>()));
  CHECK(std::isnan(ss[1].item<float>()));
  const auto codes = qs.view(at::kByte).to(at::kInt);
  CHECK(at::equal(codes[0].bitwise_and(0x7f), at::tensor({0, 0, 0x7f, 0, 0}, at::kInt)));  // NaN: 0x7f, 0xff
  CHECK(codes[1].bitwise_and(0x7f).eq(0x7f).all().item<bool>());
}

TEST_CASE("dequantize_fp8_rows_reference: code times row scale, one rounding to the dtype", "[kernels][fp8]") {
  auto g = ltxmps::make_cpu_generator(41);
  for (const auto dtype : kDtypes)
    for (const int64_t K : {1, 7, 256}) {
      INFO("dtype " << dtype << ", K " << K);
      const int64_t N = 5;
      // Every finite code (NaN codes 0x7f / 0xff excluded), scales over many binades.
      auto bytes = at::arange(N * K, at::kInt).remainder(254).to(at::kByte);
      bytes = bytes + bytes.ge(0x7f).to(at::kByte);  // 0..126, 128..254
      const auto q = bytes.view({N, K}).view(at::kFloat8_e4m3fn);
      const auto scale = at::pow(2.0, ltxmps::randn({N}, g).mul_(20)).to(at::kFloat);
      const auto out = kernels::dequantize_fp8_rows_reference(q, scale, dtype);
      REQUIRE((out.scalar_type() == dtype && out.sizes() == q.sizes()));
      const auto fq = q.to(at::kFloat).contiguous();
      auto expected = at::empty({N, K});
      for (int64_t i = 0; i < N * K; ++i)
        expected.data_ptr<float>()[i] = round_to(fq.data_ptr<float>()[i] * scale[i / K].item<float>(), dtype);
      CHECK(at::equal(out.to(at::kFloat), expected));
      CHECK(at::equal(kernels::dequantize_fp8_rows(q, scale, dtype), out));
    }
}

TEST_CASE("kernel_report explains the choice per kernel; the CPU runs the references", "[kernels]") {
  const auto calls = kernels::fused_calls();
  const auto report = kernels::kernel_report(c10::Device("cpu"), at::kBFloat16);
  REQUIRE(report.size() == 13);
  for (size_t i = 0; i + 1 < report.size(); ++i) {
    CHECK(report[i].topic == "kernels");
    CHECK(report[i].rule == "kernels.reference");
    CHECK_THAT(report[i].message, ltxmps_test::Contains("CUDA only"));
  }
  CHECK(report.back().rule == "kernels.sdpa");
  CHECK_THAT(report.back().message, ltxmps_test::ContainsAll({"self-attention", "cross-attention", "BFloat16"}));
  // A CUDA device that this build or machine may lack: the kernels or the build's reason, never the CPU's.
  const auto cuda = kernels::kernel_report(c10::Device("cuda:0"), at::kBFloat16);
  CHECK(cuda.front().rule == (kernels::built_with_cuda() ? "kernels.cuda" : "kernels.reference"));
  CHECK(kernels::fused_calls() == calls);
}

namespace {

// A two-block transformer (D = 20: RoPE padding of 2) and its random weights (norm weights near 1).
ltxmps::pipeline::TransformerConfig tiny_config() {
  ltxmps::pipeline::TransformerConfig config;
  config.in_channels = config.out_channels = 8;
  config.num_attention_heads = 2;
  config.attention_head_dim = 10;
  config.cross_attention_dim = 20;
  config.num_layers = 2;
  config.caption_channels = 12;
  config.norm_elementwise_affine = true;
  return config;
}

at::Tensor tiny_weight(const std::string& name, const std::vector<int64_t>& shape) {
  auto g = ltxmps::make_cpu_generator(std::hash<std::string>{}(name));
  auto t = ltxmps::randn(shape, g).mul_(shape.size() == 1 ? 0.1 : 0.3);
  return shape.size() == 1 && name.find("norm") != std::string::npos ? t.add_(1.0) : t;
}

}  // namespace

TEST_CASE("a transformer forward is bit-identical with and without the fused kernels off CUDA", "[kernels]") {
  using namespace ltxmps::pipeline;
  const auto config = tiny_config();
  const auto weights = tiny_weight;
  auto g = ltxmps::make_cpu_generator(18);
  TransformerInputs in;
  in.hidden_states = ltxmps::randn({2, 2 * 3 * 3, 8}, g);
  in.encoder_hidden_states = ltxmps::randn({2, 5, 12}, g);
  in.timestep = at::tensor({0.f, 700.f}).unsqueeze(1).expand({2, 18}).contiguous();  // per token
  in.encoder_attention_mask = at::ones({2, 5});
  in.encoder_attention_mask->narrow(1, 3, 2).zero_();
  in.num_frames = 2;
  in.height = 3;
  in.width = 3;
  in.rope_interpolation_scale = std::array<double, 3>{8.0 / 25.0, 32.0, 32.0};
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    INFO("dtype " << dtype);
    TransformerRuntime fused{c10::kCPU, dtype, {}};
    TransformerRuntime unfused = fused;
    unfused.fused_kernels = false;
    const auto a = TransformerModel::from_weights(config, fused, weights).forward(in);
    const auto b = TransformerModel::from_weights(config, unfused, weights).forward(in);
    CHECK(at::equal(a, b));
    CHECK(a.abs().max().item<double>() > 0);
  }
}

TEST_CASE("a transformer forward with timestep rows and a token index equals the per-token forward", "[kernels]") {
  using namespace ltxmps::pipeline;
  const auto config = tiny_config();
  const auto weights = tiny_weight;
  auto g = ltxmps::make_cpu_generator(19);
  const int64_t B = 2, S = 2 * 3 * 3;
  // Object removal's timesteps: min(t, (1 - m)·1000) for a binary mask m, the same mask in both CFG rows.
  const auto m = (ltxmps::randn({1, S}, g) > 0).to(at::kFloat).expand({B, S});
  const float t = 713.25f;
  TransformerInputs per_token;
  per_token.hidden_states = ltxmps::randn({B, S, 8}, g);
  per_token.encoder_hidden_states = ltxmps::randn({B, 5, 12}, g);
  per_token.timestep = at::minimum(at::full({B, 1}, t), (1 - m) * 1000.0);
  per_token.num_frames = 2;
  per_token.height = 3;
  per_token.width = 3;
  TransformerInputs rows = per_token;
  rows.timestep = at::tensor({t, 0.f}).expand({B, 2});
  rows.timestep_index = m.to(at::kInt);
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    INFO("dtype " << dtype);
    const auto model = TransformerModel::from_weights(config, TransformerRuntime{c10::kCPU, dtype, {}}, weights);
    const auto a = model.forward(per_token).to(at::kFloat), b = model.forward(rows).to(at::kFloat);
    // The same modulation values, except that the time embedding's products see 2 rows instead of 18, which the
    // CPU's BLAS may round differently: float32 within a few roundings, bfloat16 within one rounding of the
    // modulation carried through two blocks.
    const double bound = dtype == at::kFloat ? 1e-5 : 2e-2;
    CHECK((a - b).abs().max().item<double>() <= bound * std::max(1.0, a.abs().max().item<double>()));
  }
  TransformerInputs bad = rows;
  bad.timestep_index = at::zeros({B, S - 1}, at::kInt);
  const auto model = TransformerModel::from_weights(config, TransformerRuntime{c10::kCPU, at::kFloat, {}}, weights);
  CHECK_THROWS_WITH(model.forward(bad), ltxmps_test::Contains("timestep_index must be an integer [2, 18] tensor"));
}

TEST_CASE("an FP8-matmul forward with the fused kernels' FP8 rows is bit-identical to one quantizing per layer",
          "[kernels][fp8]") {
  if (!ltxmps_test::cpu_rowwise_scaled_mm()) {
    WARN("FP8 matmul checks skipped: this LibTorch's CPU at::_scaled_mm takes per-tensor scales only");
    return;
  }
  // Off CUDA the entry points run the references and quantize their outputs separately: the same rows that each
  // layer would quantize itself, if the forward hands each layer its own input's rows (attn1's q/k/v norm1's,
  // attn2's query the gated residual's, its keys and values the context's, ff.net.2 the GELU's).
  using namespace ltxmps::pipeline;
  TransformerConfig config;
  config.in_channels = config.out_channels = 8;
  config.num_attention_heads = 2;
  config.attention_head_dim = 16;  // D = 32: every block linear a multiple of 16
  config.cross_attention_dim = 32;
  config.num_layers = 2;
  config.caption_channels = 16;
  const auto weights = [](const std::string& name, const std::vector<int64_t>& shape) {
    auto g = ltxmps::make_cpu_generator(std::hash<std::string>{}(name) + 1);
    return ltxmps::randn(shape, g).mul_(shape.size() == 1 ? 0.1 : 0.3);
  };
  auto g = ltxmps::make_cpu_generator(19);
  TransformerInputs in;
  in.hidden_states = ltxmps::randn({2, 2 * 2 * 3, 8}, g);
  in.encoder_hidden_states = ltxmps::randn({2, 5, 16}, g);
  in.timestep = at::tensor({30.f, 900.f});
  in.num_frames = 2;
  in.height = 2;
  in.width = 3;
  TransformerRuntime fused{c10::kCPU, at::kFloat, {}};
  fused.block_linears = LinearMode::fp8_matmul;
  TransformerRuntime unfused = fused;
  unfused.fused_kernels = false;
  const auto model = TransformerModel::from_weights(config, fused, weights);
  REQUIRE(model.transformer_blocks[0].ff_net_2.mode == LinearMode::fp8_matmul);
  const auto a = model.forward(in);
  const auto b = TransformerModel::from_weights(config, unfused, weights).forward(in);
  CHECK(at::equal(a, b));
  CHECK(a.abs().max().item<double>() > 0);
}
