// FP8 weights for the transformer's block linears (Note [Weight storage]): the row-wise e4m3 quantization and its
// error bound, zero rows, the three apply_linear modes, a small random transformer in FP8 storage (and FP8 matmul,
// which LibTorch also runs on the CPU) against its dense forward, the plan's FP8 decisions and refusals on
// simulated machines, the tensor visitor over the FP8 tensors, and the CLI flags.
#include "ltxmps_pipeline/fp8.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include "kernels/fp8_test_rows.hpp"
#include "tiny_models.hpp"

#include "ltxmps/plan.hpp"
#include "ltxmps/random.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

using namespace ltxmps::pipeline;
using ltxmps_test::Contains;
using ltxmps_test::ContainsAll;
using ltxmps_test::random_weight;

namespace fp8_test {

// e4m3 keeps 3 mantissa bits: rounding to nearest moves a normal value (|v| >= 2^-6) by at most half a step,
// 2^-4 of the value; below 2^-6 (subnormals) the step is 2^-9, so the error is at most 2^-10 absolute. In weight
// units (v = w / s) an element moves by at most 2^-4·|w| + 2^-10·s; the float32 division adds 2^-24 relative.
constexpr double kRelative = 1.0 / 16.0;
constexpr double kSubnormal = 1.0 / 1024.0;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// D = 64 (head_dim 16): every block linear is a multiple of 16.
TransformerConfig small_config(int64_t head_dim = 16) {
  return ltxmps_test::tiny_transformer_config(/*channels=*/8, /*heads=*/4, head_dim, /*layers=*/2,
                                              /*caption_channels=*/32);
}

TransformerInputs small_inputs() {
  auto in = ltxmps_test::tiny_transformer_inputs(small_config(), /*seed=*/7, /*batch=*/2, {2, 4, 4}, /*text_len=*/8,
                                                 /*masked=*/2);
  in.timestep = at::tensor({500.0f, 20.0f});
  in.rope_interpolation_scale = std::array<double, 3>{8.0 / 25.0, 32.0, 32.0};
  return in;
}

TransformerModel small_model(LinearMode mode, at::ScalarType dtype = at::kFloat, int64_t head_dim = 16) {
  TransformerRuntime runtime;
  runtime.dtype = dtype;
  runtime.block_linears = mode;
  return ltxmps_test::tiny_transformer(small_config(head_dim), runtime);
}

struct Errors {
  double max_scaled = 0;  // max |out - ref| / max |ref|
  double mean_scaled = 0;  // mean |out - ref| / max |ref|
  double rms_relative = 0;  // rms(out - ref) / rms(ref)
};

Errors errors(const at::Tensor& out, const at::Tensor& ref) {
  const auto o = out.to(at::kDouble), r = ref.to(at::kDouble);
  const auto d = (o - r).abs();
  const double scale = r.abs().max().item<double>();
  return {d.max().item<double>() / scale, d.mean().item<double>() / scale,
          std::sqrt(d.pow(2).mean().item<double>() / r.pow(2).mean().item<double>())};
}

#define SKIP_WITHOUT_CPU_ROWWISE_SCALED_MM()                                                                    \
  if (!ltxmps_test::cpu_rowwise_scaled_mm()) {                                                                  \
    WARN("FP8 matmul checks skipped: this LibTorch's CPU at::_scaled_mm takes per-tensor scales only");         \
    return;                                                                                                     \
  }

// A plan resolved on a simulated machine.
ltxmps::ExecutionPlan plan_for(const ltxmps::Capabilities& caps, bool fp8_matmul, ltxmps::WeightStorage storage,
                               ltxmps::Precision precision = ltxmps::Precision::automatic) {
  ltxmps::LoaderSettings s;
  s.fp8_matmul = fp8_matmul;
  s.weight_storage = storage;
  s.precision = precision;
  return ltxmps::resolve(s, caps);
}

}  // namespace fp8_test

using namespace fp8_test;

TEST_CASE("quantize_fp8_rowwise: e4m3 codes and float32 row scales within the derived bound", "[fp8]") {
  auto g = ltxmps::make_cpu_generator(1);
  // Rows over 12 binades of scale, each with values down to ~2^-12 of its largest (subnormal codes included).
  auto w = ltxmps::randn({64, 96}, g) * at::pow(2.0, at::arange(-6, 6, 0.1875).unsqueeze(1));
  w.mul_(at::pow(2.0, -ltxmps::randn({64, 96}, g).abs().mul(3)));
  const auto rows = quantize_fp8_rowwise(w);
  REQUIRE(rows.q.scalar_type() == at::kFloat8_e4m3fn);
  REQUIRE(rows.scale.scalar_type() == at::kFloat);
  REQUIRE(rows.q.sizes() == w.sizes());
  REQUIRE(rows.scale.sizes() == at::IntArrayRef{64});
  const auto amax = w.abs().amax(1);
  CHECK(at::equal(rows.scale, amax * (1.0f / 448.0f)));
  const auto back = dequantize_fp8_rowwise(rows.q, rows.scale, at::kFloat);
  const auto err = (back - w).abs();
  const auto bound = w.abs() * (kRelative * (1 + 1e-6)) + rows.scale.unsqueeze(1) * kSubnormal;
  CHECK((err <= bound).all().item<bool>());
  // The row bound of the brief (2^-4 of scale·448 = amax) follows, and the largest element of each row is exact.
  CHECK((err.amax(1) <= amax * kRelative).all().item<bool>());
  const auto at_max = w.abs().argmax(1, /*keepdim=*/true);
  CHECK(at::allclose(back.gather(1, at_max), w.gather(1, at_max), 1e-6, 0));
  CHECK(rows.q.to(at::kFloat).abs().amax().item<float>() == 448.0f);
  // The bound is tight where it should be: somewhere an element loses close to 2^-4 of itself.
  const auto normal = rows.q.to(at::kFloat).abs() >= 1.0 / 64;
  const double worst = (err / w.abs()).masked_select(normal).max().item<double>();
  std::printf("fp8 round trip: worst relative error of a normal code %.4f (bound %.4f)\n", worst, kRelative);
  CHECK(worst > kRelative / 2);
  // Values that are e4m3 codes times the scale come back exactly.
  const auto codes = at::tensor({448.0f, -448.0f, 1.0f, 0.875f, -3.5f, 0.015625f, 0.001953125f, 0.0f}).unsqueeze(0);
  const auto exact = quantize_fp8_rowwise(codes * 0.01f);
  CHECK(at::allclose(dequantize_fp8_rowwise(exact.q, exact.scale, at::kFloat), codes * 0.01f, 1e-6, 0));
}

TEST_CASE("quantize_fp8_rowwise: zero rows get the scale floor and stay zero; bad input is refused", "[fp8]") {
  auto w = at::zeros({3, 32});
  w[1].fill_(0.25);
  const auto rows = quantize_fp8_rowwise(w);
  CHECK(rows.scale[0].item<float>() == FLT_MIN);
  CHECK(rows.scale[2].item<float>() == FLT_MIN);
  CHECK(rows.q[0].to(at::kFloat).abs().max().item<float>() == 0.0f);
  const auto back = dequantize_fp8_rowwise(rows.q, rows.scale, at::kBFloat16);
  CHECK(back.scalar_type() == at::kBFloat16);
  CHECK(at::equal(back.to(at::kFloat), w));
  CHECK(at::isfinite(back).all().item<bool>());
  CHECK_THAT(error_of([] { quantize_fp8_rowwise(at::zeros({4})); }), Contains("expected a 2-D floating-point"));
  CHECK_THAT(error_of([] { quantize_fp8_rowwise(at::zeros({2, 2}, at::kInt)); }), Contains("floating-point"));
  CHECK_THAT(error_of([] { quantize_fp8_rowwise(at::zeros({2, 0})); }), Contains("width 0"));
  // The meta device: what the memory estimate builds models on.
  const auto meta = quantize_fp8_rowwise(at::empty({16, 32}, at::TensorOptions().device(c10::kMeta)));
  CHECK(meta.q.is_meta());
  CHECK(meta.q.scalar_type() == at::kFloat8_e4m3fn);
}

TEST_CASE("apply_linear: dense unchanged, FP8 storage = dequantized weight, FP8 matmul = quantized input", "[fp8]") {
  auto g = ltxmps::make_cpu_generator(3);
  LinearWeights dense{ltxmps::randn({48, 64}, g).mul_(0.125), ltxmps::randn({48}, g).mul_(0.05)};
  const auto x = ltxmps::randn({2, 5, 64}, g);
  CHECK(at::equal(apply_linear(dense, x), at::linear(x, dense.weight, dense.bias)));

  LinearWeights stored = dense;
  CHECK(quantize_linear(stored, LinearMode::fp8_storage) == LinearMode::fp8_storage);
  CHECK_FALSE(stored.weight.defined());
  CHECK(stored.in_features() == 64);
  CHECK(stored.out_features() == 48);
  const auto w_hat = dequantize_fp8_rowwise(stored.weight_fp8, stored.weight_scale, at::kFloat);
  const auto y_stored = apply_linear(stored, x);
  CHECK(at::equal(y_stored, at::linear(x, w_hat, dense.bias)));
  // The worst case of one layer: |ŷ - y| <= Σ_j (2^-4 |w_ij| + 2^-10 s_i) |x_j| (+ float32 rounding).
  const auto y = apply_linear(dense, x);
  const auto worst = at::linear(x.abs(), dense.weight.abs() * kRelative + stored.weight_scale.unsqueeze(1) * kSubnormal);
  CHECK(((y_stored - y).abs() <= worst * (1 + 1e-5) + 1e-6).all().item<bool>());
  CHECK_THAT(error_of([&] { quantize_linear(stored, LinearMode::fp8_storage); }), Contains("already fp8 storage"));

  SKIP_WITHOUT_CPU_ROWWISE_SCALED_MM();
  // FP8 matmul: LibTorch runs at::_scaled_mm on the CPU too; it must equal the product of the dequantized
  // operands (the row-quantized input, the row-quantized weight) up to float32 rounding.
  LinearWeights mm = dense;
  CHECK(quantize_linear(mm, LinearMode::fp8_matmul) == LinearMode::fp8_matmul);
  const auto y_mm = apply_linear(mm, x);
  REQUIRE(y_mm.sizes() == y.sizes());
  const auto xq = quantize_fp8_rowwise(x.reshape({-1, 64}));
  const auto x_hat = dequantize_fp8_rowwise(xq.q, xq.scale, at::kFloat).view(x.sizes());
  const auto emulated = at::linear(x_hat, w_hat, dense.bias);
  const auto magnitude = at::linear(x_hat.abs(), w_hat.abs()) + dense.bias.abs();
  CHECK(((y_mm - emulated).abs() <= magnitude * 1e-5).all().item<bool>());
  const auto e = errors(y_mm, y);
  std::printf("fp8 matmul, one layer 64 -> 48: scaled max %.4f, mean %.5f against float32\n", e.max_scaled,
              e.mean_scaled);
  // Both operands rounded: ŵx̂ - wx = δw·x + w·δx + δw·δx with |δw_ij| <= a_ij = 2^-4|w_ij| + 2^-10 s_i and
  // |δx_j| <= b_j = 2^-4|x_j| + 2^-10 t (t: the input row's scale).
  const auto a = dense.weight.abs() * kRelative + stored.weight_scale.unsqueeze(1) * kSubnormal;
  const auto b = x.abs() * kRelative + xq.scale.view({2, 5, 1}) * kSubnormal;
  const auto both = at::linear(x.abs(), a) + at::linear(b, dense.weight.abs()) + at::linear(b, a);
  CHECK(((y_mm - y).abs() <= both * (1 + 1e-5) + magnitude * 1e-5).all().item<bool>());
}

TEST_CASE("FP8 transformer: blocks quantized at load, forward within the derived error of the dense one", "[fp8]") {
  const auto in = small_inputs();
  const auto reference = small_model(LinearMode::dense).forward(in);
  auto stored = small_model(LinearMode::fp8_storage);
  // Which layers: the blocks' attention and feed-forward linears only.
  for (const auto* l : {&stored.proj_in, &stored.proj_out, &stored.time_embed_linear,
                        &stored.time_embed_emb_timestep_embedder_linear_1, &stored.caption_projection_linear_2})
    CHECK((l->mode == LinearMode::dense && l->weight.defined()));
  for (const auto& b : stored.transformer_blocks)
    for (const auto* l : {&b.attn1.to_q, &b.attn1.to_k, &b.attn1.to_v, &b.attn1.to_out_0, &b.attn2.to_q, &b.attn2.to_k,
                          &b.attn2.to_v, &b.attn2.to_out_0, &b.ff_net_0_proj, &b.ff_net_2})
      CHECK((l->mode == LinearMode::fp8_storage && !l->weight.defined() && l->bias.scalar_type() == at::kFloat));

  // Mechanics, exactly: the FP8 forward is the dense forward of the dequantized weights.
  const auto dequantized = TransformerModel::from_weights(
      small_config(), TransformerRuntime{}, [](const std::string& name, const std::vector<int64_t>& shape) {
        auto w = random_weight(name, shape);
        const bool block_linear = name.rfind("transformer_blocks.", 0) == 0 && shape.size() == 2 &&
                                  name.find("scale_shift_table") == std::string::npos;
        if (!block_linear) return w;
        const auto r = quantize_fp8_rowwise(w);
        return dequantize_fp8_rowwise(r.q, r.scale, at::kFloat);
      });
  const auto out = stored.forward(in);
  CHECK(at::equal(out, dequantized.forward(in)));

  // Accuracy. For weights and inputs without correlation, a layer's rounding errors ε_ij (|ε| <= 2^-4, zero mean,
  // E ε² <= 2^-8/3 for a uniform position within a step) give rms(δy)/rms(y) <= 2^-4/√3. The errors of the
  // model's N independently rounded layers add in quadrature; the block norms keep each layer's gain to the
  // output O(1). Bound: 2^-4/√3 · √N, N = 20 here (both blocks); FP8 matmul rounds the inputs too: √(2N).
  const double n = 10.0 * static_cast<double>(small_config().num_layers);
  const double bound_storage = kRelative / std::sqrt(3.0) * std::sqrt(n);
  const auto e = errors(out, reference);
  std::printf("fp8 storage, small transformer (fp32 compute): scaled max %.4f, scaled mean %.5f, rms %.4f (bound %.3f)\n",
              e.max_scaled, e.mean_scaled, e.rms_relative, bound_storage);
  CHECK(e.rms_relative <= bound_storage);
  CHECK(e.max_scaled <= bound_storage);
  CHECK(e.rms_relative > 0);

  // bf16 compute: FP8 storage against the bf16 model, plus what bf16 itself moves (measured against float32,
  // counted twice: both sides are bf16).
  const auto bf16_reference = small_model(LinearMode::dense, at::kBFloat16).forward(in);
  const double bf16_slack = 2 * errors(bf16_reference, reference).rms_relative;
  const auto bf16 = errors(small_model(LinearMode::fp8_storage, at::kBFloat16).forward(in), bf16_reference);
  std::printf("fp8 storage, small transformer (bf16 compute): scaled max %.4f, scaled mean %.5f, rms %.4f (bound %.3f)\n",
              bf16.max_scaled, bf16.mean_scaled, bf16.rms_relative, bound_storage + bf16_slack);
  CHECK(bf16.rms_relative <= bound_storage + bf16_slack);
  CHECK(bf16.max_scaled <= bound_storage + bf16_slack);

  SKIP_WITHOUT_CPU_ROWWISE_SCALED_MM();
  auto matmul = small_model(LinearMode::fp8_matmul);
  CHECK(matmul.transformer_blocks[0].ff_net_2.mode == LinearMode::fp8_matmul);
  const double bound_matmul = kRelative / std::sqrt(3.0) * std::sqrt(2 * n);
  const auto m = errors(matmul.forward(in), reference);
  std::printf("fp8 matmul, small transformer (fp32 compute, CPU _scaled_mm): scaled max %.4f, scaled mean %.5f, rms "
              "%.4f (bound %.3f)\n",
              m.max_scaled, m.mean_scaled, m.rms_relative, bound_matmul);
  CHECK(m.rms_relative <= bound_matmul);
  CHECK(m.max_scaled <= bound_matmul);
}

TEST_CASE("FP8 matmul falls back to FP8 storage where the sizes are not multiples of 16, and says so", "[fp8]") {
  auto model = small_model(LinearMode::fp8_matmul, at::kFloat, /*head_dim=*/6);  // D = 24
  for (const auto& s : block_linear_shapes(model.config))
    CHECK_FALSE(fp8_matmul_supported(s.in_features, s.out_features));
  CHECK(model.transformer_blocks[1].attn1.to_q.mode == LinearMode::fp8_storage);
  CHECK(model.transformer_blocks[1].ff_net_0_proj.mode == LinearMode::fp8_storage);
  const auto diagnostics = fp8_diagnostics(model);
  REQUIRE(diagnostics.size() == 11);
  CHECK_THAT(diagnostics[0].message, ContainsAll({"20 block linears in FP8", "0 FP8 matmul", "20 FP8 storage"}));
  CHECK(diagnostics[1].severity == ltxmps::Severity::warning);
  CHECK_THAT(diagnostics[1].message, ContainsAll({"attn1.to_k", "24 -> 24", "multiples of 16"}));
  auto in = small_inputs();
  CHECK(at::isfinite(model.forward(in)).all().item<bool>());
  // Sizes that qualify: every block linear uses _scaled_mm, one info line, no warning.
  const auto ok = fp8_diagnostics(small_model(LinearMode::fp8_matmul));
  REQUIRE(ok.size() == 1);
  CHECK_THAT(ok[0].message, ContainsAll({"20 FP8 matmul", "0 FP8 storage", "MiB instead of"}));
  CHECK(fp8_diagnostics(small_model(LinearMode::dense)).empty());
}

TEST_CASE("quantize_transformer converts a loaded dense model once", "[fp8]") {
  auto model = small_model(LinearMode::dense);
  const auto in = small_inputs();
  const auto expected = small_model(LinearMode::fp8_storage).forward(in);
  quantize_transformer(model, LinearMode::fp8_storage);
  CHECK(model.runtime.block_linears == LinearMode::fp8_storage);
  CHECK(at::equal(model.forward(in), expected));
  CHECK_THAT(error_of([&] { quantize_transformer(model, LinearMode::fp8_matmul); }), Contains("already fp8 storage"));
}

TEST_CASE("the tensor visitor reaches the FP8 tensors; moves and byte counts see them", "[fp8]") {
  int64_t created = 0;
  auto counting = [&created](const std::string& name, const std::vector<int64_t>& shape) {
    ++created;
    return random_weight(name, shape);
  };
  TransformerRuntime runtime;
  runtime.block_linears = LinearMode::fp8_storage;
  auto model = TransformerModel::from_weights(small_config(), runtime, counting);
  // Each quantized linear traded one weight for two tensors (codes and scales).
  CHECK(count_tensors(model) == created + 10 * small_config().num_layers);
  int64_t fp8 = 0;
  for_each_tensor(model, [&](at::Tensor& t) { fp8 += t.defined() && t.scalar_type() == at::kFloat8_e4m3fn; });
  CHECK(fp8 == 10 * small_config().num_layers);
  move_model(model, c10::Device(c10::kMeta));
  bool all_moved = true;
  for_each_tensor(model, [&](at::Tensor& t) { all_moved = all_moved && (!t.defined() || t.is_meta()); });
  CHECK(all_moved);

  // On the meta device (as the memory estimate builds models): one byte per block weight plus 4 per row.
  runtime.device = c10::kMeta;
  runtime.dtype = at::kBFloat16;
  auto meta = TransformerModel::from_weights(small_config(), runtime, [](const std::string&, const std::vector<int64_t>& s) {
    return at::empty(s, at::TensorOptions().device(c10::kMeta));
  });
  int64_t fp8_bytes = 0, expected = 0;
  for_each_tensor(meta, [&](at::Tensor& t) {
    if (t.defined() && t.scalar_type() == at::kFloat8_e4m3fn) fp8_bytes += t.numel();
  });
  for (const auto& s : block_linear_shapes(small_config())) expected += s.in_features * s.out_features;
  CHECK(fp8_bytes == expected * small_config().num_layers);
}

TEST_CASE("plan: FP8 matmul only on CUDA sm_89+ in bf16, FP8 storage anywhere but MPS, each with its reason",
          "[fp8][plan]") {
  using ltxmps::Capabilities;
  using ltxmps::WeightStorage;
  const auto h100 = plan_for(Capabilities::cuda(1, 9, 0), true, WeightStorage::automatic);
  CHECK(h100.precision.fp8_matmul);
  CHECK(h100.precision.transformer_weights == WeightStorage::fp8);
  CHECK(ltxmps::has_rule(h100.diagnostics, "precision.weights.fp8_matmul"));
  CHECK(transformer_runtime(h100).block_linears == LinearMode::fp8_matmul);
  CHECK_THAT(ltxmps::to_text(h100), Contains("block linears: fp8 storage, fp8 matmul"));
  const auto ada = plan_for(Capabilities::cuda(1, 8, 9), true, WeightStorage::fp8);
  CHECK(ada.precision.fp8_matmul);

  const std::string cpu = error_of([] { plan_for(Capabilities::cpu_only(), true, WeightStorage::automatic); });
  CHECK_THAT(cpu, ContainsAll({"fp8_matmul", "compute capability >= 8.9", "the plan's device is cpu",
                               "weight_storage=fp8"}));
  const std::string mps = error_of([] { plan_for(Capabilities::mps(15, 0), true, WeightStorage::automatic); });
  CHECK_THAT(mps, ContainsAll({"fp8_matmul", "mps"}));
  const std::string a100 = error_of([] { plan_for(Capabilities::cuda(1, 8, 0), true, WeightStorage::automatic); });
  CHECK_THAT(a100, ContainsAll({"sm_80", "no FP8 tensor cores", "--weight-storage fp8"}));
  const std::string fp16 = error_of(
      [] { plan_for(Capabilities::cuda(1, 9, 0), true, WeightStorage::automatic, ltxmps::Precision::fp16); });
  CHECK_THAT(fp16, ContainsAll({"bf16", "resolved to fp16"}));
  const std::string contradiction = error_of([] { plan_for(Capabilities::cuda(1, 9, 0), true, WeightStorage::compute); });
  CHECK_THAT(contradiction, ContainsAll({"fp8_matmul", "weight_storage is compute"}));

  const std::string mps_storage = error_of([] { plan_for(Capabilities::mps(15, 0), false, WeightStorage::fp8); });
  CHECK_THAT(mps_storage, ContainsAll({"weight_storage=fp8", "MPS has no float8"}));
  const auto a100_storage = plan_for(Capabilities::cuda(1, 8, 0), false, WeightStorage::fp8);
  CHECK(a100_storage.precision.transformer_weights == WeightStorage::fp8);
  CHECK_FALSE(a100_storage.precision.fp8_matmul);
  CHECK(ltxmps::has_rule(a100_storage.diagnostics, "precision.weights.fp8_storage"));
  CHECK(transformer_runtime(a100_storage).block_linears == LinearMode::fp8_storage);
  const auto cpu_storage = plan_for(Capabilities::cpu_only(), false, WeightStorage::fp8);
  CHECK(transformer_runtime(cpu_storage).block_linears == LinearMode::fp8_storage);

  const auto automatic = plan_for(Capabilities::cuda(1, 9, 0), false, WeightStorage::automatic);
  CHECK(automatic.precision.transformer_weights == WeightStorage::compute);
  CHECK(ltxmps::has_rule(automatic.diagnostics, "precision.weights.compute"));
  CHECK(transformer_runtime(automatic).block_linears == LinearMode::dense);
  const auto json = nlohmann::json::parse(ltxmps::to_json(h100));
  CHECK(json.at("precision").at("transformer_weights") == "fp8");
  CHECK(json.at("precision").at("fp8_matmul") == true);
  CHECK(json.at("settings").at("weight_storage") == "auto");

  CHECK(ltxmps::parse_weight_storage("fp8") == WeightStorage::fp8);
  CHECK_THAT(error_of([] { ltxmps::parse_weight_storage("int8"); }), Contains("not one of auto, compute, fp8"));
}

TEST_CASE("the embedded default model follows the plan's weight storage", "[fp8][plan]") {
  const auto plan = plan_for(ltxmps::Capabilities::cpu_only(), false, ltxmps::WeightStorage::fp8);
  auto model = make_embedded_default_model(plan);
  CHECK(model.transformer.transformer_blocks.at(0).attn1.to_q.mode == LinearMode::fp8_storage);
  CHECK(model.transformer.proj_in.mode == LinearMode::dense);
}

#if defined(LTXMPS_CLI_PATH)
namespace fp8_test {

struct Run {
  int code = -1;
  std::string out, err;
};

std::string slurp(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

Run ltxmps_cli(const std::string& args) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto out = dir / "ltxmps_fp8_cli.stdout", err = dir / "ltxmps_fp8_cli.stderr";
  const std::string command = std::string("LTXMPS_DEVICE= '") + LTXMPS_CLI_PATH + "' " + args + " >'" + out.string() +
                              "' 2>'" + err.string() + "'";
  const int status = std::system(command.c_str());
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

}  // namespace fp8_test

TEST_CASE("CLI: --fp8-matmul and --weight-storage reach the plan, refusals exit with the reason", "[fp8][cli]") {
  const auto h100 = ltxmps_cli("plan --simulate cuda --fp8-matmul");
  CHECK(h100.code == 0);
  CHECK_THAT(h100.out, ContainsAll({"block linears: fp8 storage, fp8 matmul", "precision.weights.fp8_matmul"}));
  const auto json = ltxmps_cli("plan --simulate cpu --weight-storage fp8 --json");
  REQUIRE(json.code == 0);
  const auto parsed = nlohmann::json::parse(json.out);
  CHECK(parsed.at("settings").at("weight_storage") == "fp8");
  CHECK(parsed.at("precision").at("transformer_weights") == "fp8");
  CHECK(parsed.at("precision").at("fp8_matmul") == false);
  const auto cpu = ltxmps_cli("plan --simulate cpu --fp8-matmul");
  CHECK(cpu.code != 0);
  CHECK_THAT(cpu.err, ContainsAll({"fp8_matmul", "compute capability >= 8.9"}));
  const auto mps = ltxmps_cli("plan --simulate mps --weight-storage fp8");
  CHECK(mps.code != 0);
  CHECK_THAT(mps.err, Contains("float8"));
  const auto bad = ltxmps_cli("plan --weight-storage int8");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, ContainsAll({"--weight-storage", "int8"}));
}
#endif
