// FP8 attention off CUDA: the per-tensor quantization and the ATen model of cuDNN's FP8 attention against exact
// attention in float64, the errors a bad call gets, the planner's refusals, and a transformer forward with FP8
// self-attention against the one without. The cuDNN kernel itself is tested on the GPU machine
// (tests/gpu/test_gpu_fp8_attention.cpp).
#include "catch_compat.hpp"
#include "kernels/fp8_attention_test_support.hpp"

#include "ltxmps_kernels/fp8_attention.hpp"
#include "ltxmps_kernels/fused.hpp"

#include "ltxmps_pipeline/transformer.hpp"

#include <ltxmps/ltxmps.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <string>

namespace kernels = ltxmps::kernels;
using ltxmps_test::exact_attention;
using ltxmps_test::kFp8AttentionRmsBound;
using ltxmps_test::rms;

namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed, double scale = 1.0) {
  auto g = ltxmps::make_cpu_generator(seed);
  return ltxmps::randn(shape, g).mul_(scale);
}

}  // namespace

TEST_CASE("quantize_fp8_tensor: one scale for the whole tensor, codes within e4m3 precision", "[kernels][fp8]") {
  const auto x = randn({3, 7, 10}, 1, 3.0);
  const auto [q, scale] = kernels::quantize_fp8_tensor(x);
  REQUIRE(q.sizes() == x.sizes());
  REQUIRE(q.scalar_type() == at::kFloat8_e4m3fn);
  REQUIRE(scale.numel() == 1);
  const double amax = x.abs().max().item<double>();
  CHECK(scale.item<float>() == static_cast<float>(static_cast<float>(amax) * static_cast<float>(1.0 / 448.0)));
  const auto back = q.to(at::kDouble) * scale.item<double>();
  CHECK(q.to(at::kFloat).abs().max().item<float>() == 448.0f);  // the largest value takes the largest code
  // e4m3's step is 2^-3 of the binade: a normal value moves by at most 2^-4 of itself, a subnormal one (below
  // 2^-6 · scale) by at most 2^-10 · scale.
  const auto err = (back - x.to(at::kDouble)).abs();
  CHECK(at::all(err <= x.to(at::kDouble).abs() * (1.0 / 16) + scale.item<double>() * std::ldexp(1.0, -10))
            .item<bool>());
  const auto [rq, rscale] = kernels::quantize_fp8_rows_reference(x.reshape({1, -1}));
  CHECK(at::equal(q.view({1, -1}).view(at::kByte), rq.view(at::kByte)));
  CHECK(at::equal(scale, rscale));
}

TEST_CASE("fp8_attention_reference: exact attention within the FP8 bound, and FP8 does round", "[kernels][fp8]") {
  const int64_t B = 2, S = 50, heads = 2, Dh = 16, D = heads * Dh;
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    INFO("dtype " << dtype);
    const auto q = randn({B, S, D}, 2).to(dtype), k = randn({B, S, D}, 3).to(dtype);
    const auto v = randn({B, S, D}, 4, 2.0).to(dtype);
    const auto out = kernels::fp8_attention_reference(q, k, v, heads, scale);
    REQUIRE(out.sizes() == q.sizes());
    CHECK(out.scalar_type() == dtype);
    const auto exact = exact_attention(q, k, v, heads, scale);
    const double err = rms(out.to(at::kDouble) - exact) / rms(v);
    INFO("rms error / rms(v) " << err << ", bound " << kFp8AttentionRmsBound);
    CHECK(err <= kFp8AttentionRmsBound);
    CHECK(err > 1e-3);  // the five roundings are there: bf16 alone moves it by about 2^-9
    // the entry point off CUDA is the reference
    CHECK(at::equal(kernels::fp8_attention(q, k, v, heads, scale), out));
  }
}

TEST_CASE("fp8_attention_reference: a constant v comes back as that constant within e4m3 rounding", "[kernels][fp8]") {
  const auto q = randn({1, 40, 32}, 5), k = randn({1, 40, 32}, 6);
  const auto v = at::full({1, 40, 32}, 0.75f);
  const auto out = kernels::fp8_attention_reference(q, k, v, 2, 0.25);
  // sum(e_q) / sum(e) is within 2^-4 of 1, and 0.75 is exact in e4m3: the output within one e4m3 step of 0.75
  CHECK(at::allclose(out, v, 0.0, 0.75 / 8));
}

TEST_CASE("qk_rms_norm_rope_fp8_reference: codes under the bound scale, within e4m3 precision of the norm",
          "[kernels][fp8]") {
  const int64_t B = 2, S = 12, D = 48;
  const auto q = randn({B, S, D}, 20, 3.0).to(at::kBFloat16), k = randn({B, S, D}, 21).to(at::kBFloat16);
  const auto wq = randn({D}, 22, 0.5).add_(1.0).to(at::kBFloat16), wk = randn({D}, 23, 2.0).to(at::kBFloat16);
  const auto angles = randn({1, S, D / 2}, 24, 3.0).repeat_interleave(2, -1);
  const auto cos = angles.cos(), sin = angles.sin();
  const auto [qn, kn] = kernels::qk_rms_norm_rope_reference(q, k, wq, wk, 1e-5, cos, sin);
  const auto [q8, k8] = kernels::qk_rms_norm_rope_fp8_reference(q, k, wq, wk, 1e-5, cos, sin);
  const auto check = [&](const kernels::Fp8Tensor& t, const at::Tensor& normed, const at::Tensor& w) {
    REQUIRE(t.q.scalar_type() == at::kFloat8_e4m3fn);
    REQUIRE(t.q.sizes() == normed.sizes());
    const float factor = kernels::fp8_qk_bound_factor(D);
    const float expected = w.abs().max().item<float>() * factor;  // one float32 product
    CHECK(t.scale.item<float>() == expected);
    CHECK(factor == static_cast<float>(std::sqrt(48.0) * (1 + 1.0 / 64) / 448));
    const auto codes = t.q.to(at::kFloat);
    CHECK(codes.abs().max().item<float>() <= 448.0f);  // the bound holds: no code saturates, none is NaN
    CHECK_FALSE(codes.isnan().any().item<bool>());
    const auto back = codes.to(at::kDouble) * t.scale.item<double>(), x = normed.to(at::kDouble);
    CHECK(at::all((back - x).abs() <= x.abs() / 16 + t.scale.item<double>() * std::ldexp(1.0, -10)).item<bool>());
  };
  check(q8, qn, wq);
  check(k8, kn, wk);
}

TEST_CASE("fp8_attention_rows_reference: the output's codes carry v's scale on every row", "[kernels][fp8]") {
  const auto x = randn({2, 20, 32}, 25);
  const auto quantize = [](const at::Tensor& t) { return kernels::quantize_fp8_tensor_reference(t); };
  const auto v = quantize(x * 3);
  const auto rows = kernels::fp8_attention_rows_reference(quantize(x), quantize(x.flip(1)), v, 2, 0.25);
  CHECK(rows.q.sizes() == at::IntArrayRef({40, 32}));
  CHECK(at::equal(rows.scale, v.scale.expand({40})));
  CHECK(at::equal(kernels::fp8_attention_reference(x, x.flip(1), x * 3, 2, 0.25),
                  kernels::dequantize_fp8_rows_reference(rows.q, rows.scale, at::kFloat).view({2, 20, 32})));
}

TEST_CASE("fp8_attention: bad arguments name what was expected", "[kernels][fp8]") {
  const auto q = randn({1, 8, 16}, 7);
  const auto is_error = [](auto f, const std::string& what) {
    try {
      f();
    } catch (const ltxmps::Error& e) {
      return std::string(e.what()).find(what) != std::string::npos;
    }
    return false;
  };
  CHECK(is_error([&] { kernels::fp8_attention(q, q.narrow(1, 0, 4), q, 2, 0.25); }, "self-attention"));
  CHECK(is_error([&] { kernels::fp8_attention(q, q, q, 3, 0.25); }, "not a multiple of 3 heads"));
  CHECK(is_error([&] { kernels::fp8_attention(q, q.to(at::kBFloat16), q, 2, 0.25); }, "share a dtype"));
  CHECK(!kernels::fp8_attention_unavailable(c10::kCPU).empty());
  CHECK_THAT(kernels::fp8_attention_unsupported(c10::kCPU, 4, 8), ltxmps_test::Contains("CUDA only"));
}

TEST_CASE("the planner refuses FP8 attention off Hopper and reports it where it runs", "[kernels][fp8]") {
  using ltxmps::Capabilities;
  ltxmps::LoaderSettings settings;
  settings.fp8_attention = true;
  settings.precision = ltxmps::Precision::bf16;
  const auto refused = [&](const Capabilities& caps, const std::string& what) {
    try {
      (void)ltxmps::resolve(settings, caps);
    } catch (const ltxmps::Error& e) {
      INFO(e.what());
      return std::string(e.what()).find(what) != std::string::npos;
    }
    return false;
  };
  CHECK(refused(Capabilities::cpu_only(), "fp8_attention (--fp8-attention) needs an NVIDIA GPU"));
  CHECK(refused(Capabilities::mps(15, 0), "fp8_attention (--fp8-attention) needs an NVIDIA GPU"));
  CHECK(refused(Capabilities::cuda(1, 8, 9), "no cuDNN FP8 attention"));
  const auto plan = ltxmps::resolve(settings, Capabilities::cuda(1, 9, 0));
  CHECK(plan.precision.fp8_attention);
  bool noted = false;
  for (const auto& d : plan.diagnostics) noted = noted || d.rule == "precision.attention.fp8";
  CHECK(noted);
  CHECK(ltxmps::to_text(plan).find("self-attention: fp8") != std::string::npos);
  settings.precision = ltxmps::Precision::fp32;
  CHECK(refused(Capabilities::cuda(1, 9, 0), "takes bf16 or fp16 activations"));
  settings.fp8_attention = false;
  settings.precision = ltxmps::Precision::bf16;
  CHECK_FALSE(ltxmps::resolve(settings, Capabilities::cuda(1, 9, 0)).precision.fp8_attention);  // never unasked
}

TEST_CASE("a transformer forward with FP8 self-attention stays within the FP8 bound of the one without",
          "[kernels][fp8]") {
  // Two blocks, each adding one FP8 attention's error (Note [FP8 attention error bound], in units of the
  // attention's v, whose scale the block's output keeps through to_out and the residual): twice the bound of one,
  // in units of the output's rms.
  const double err = ltxmps_test::fp8_attention_forward_error({c10::kCPU, at::kFloat, {}}, 2, 8, 2, 3, 4);
  INFO("rms error / rms(output) " << err);
  CHECK(err > 0);
  CHECK(err <= 2 * kFp8AttentionRmsBound);
}
