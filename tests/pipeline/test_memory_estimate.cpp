// The request memory estimate (Note [Request memory estimate]): exact weights against a built model, the
// directions the activations must move in (frames, height, width, CFG, tiling, slicing, the upcast kernel,
// offload), overflow and bad requests as errors, the refusal message, the warning band, the embedded default
// request against this machine's real available memory, and the layer FP8 storage dequantizes for each matmul.
#include "ltxmps/plan.hpp"
#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/memory_estimate.hpp"
#include "ltxmps_pipeline/released_configs.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/weight_plan.hpp"

#include <cmath>
#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <string>

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

using namespace ltxmps::pipeline;
using ltxmps_test::Contains;

namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

ltxmps::ExecutionPlan make_plan(const ltxmps::Capabilities& caps, const std::string& device, ltxmps::Precision p,
                                bool tiling = false, bool offload = false, bool slicing = false) {
  ltxmps::LoaderSettings s;
  s.device = device;
  s.precision = p;
  s.vae_tiling = tiling;
  s.vae_slicing = slicing;
  s.cpu_offload = offload;
  return ltxmps::resolve(s, caps);
}

ltxmps::ExecutionPlan cuda_bf16(bool tiling = false, bool offload = false, bool slicing = false) {
  return make_plan(ltxmps::Capabilities::cuda(), "cuda", ltxmps::Precision::bf16, tiling, offload, slicing);
}

// LTX-Video 0.9.1 (2B): 28 blocks of 32 heads x 64; the 0.9.1 VAE (convert_ltx_to_diffusers.py): the "090" encoder,
// a (256, 512, 1024) decoder with residual upsamplers, noise injection and timestep conditioning.
TransformerConfig transformer_2b() { return TransformerConfig{}; }
VaeConfig vae_091() {
  VaeConfig v;
  v.decoder_block_out_channels = {256, 512, 1024};
  v.decoder_layers_per_block = {5, 6, 7, 8};
  v.decoder_spatio_temporal_scaling = {true, true, true};
  v.decoder_inject_noise = {true, true, true, false};
  v.upsample_residual = {true, true, true};
  v.upsample_factor = {2, 2, 2};
  v.timestep_conditioning = true;
  return v;
}

MemoryRequest request(int64_t frames, int64_t height, int64_t width, bool guidance = true) {
  MemoryRequest r;
  r.frames = frames;
  r.height = height;
  r.width = width;
  r.guidance = guidance;
  return r;
}

const MemoryPhase& phase(const MemoryEstimate& e, const std::string& name) {
  for (const auto& p : e.phases)
    if (p.name == name) return p;
  FAIL("no phase " << name << " in " << e.describe());
  throw;
}

MemoryRequest embedded_request() {
  MemoryRequest r = request(EmbeddedDefault::num_frames, EmbeddedDefault::height, EmbeddedDefault::width);
  r.text_tokens = EmbeddedDefault::max_sequence_length;
  return r;
}

MemoryEstimate estimate_2b(const MemoryRequest& r, const ltxmps::ExecutionPlan& plan) {
  return estimate_request_memory(transformer_2b(), vae_091(), t5_xxl_config(), plan, r);
}

}  // namespace

TEST_CASE("the weights are the bytes of the model the loaders build", "[memory]") {
  const auto plan = make_plan(ltxmps::Capabilities::cpu_only(), "cpu", ltxmps::Precision::fp32);
  auto model = make_embedded_default_model(plan);
  int64_t loaded = 0;
  auto add = [&](at::Tensor& t) { loaded += t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0; };
  for_each_tensor(model.transformer, add);
  for_each_tensor(model.vae, add);
  for_each_tensor(*model.text_encoder, add);
  const auto e = estimate_request_memory(EmbeddedDefault::transformer_config(), EmbeddedDefault::vae_config(),
                                         EmbeddedDefault::text_encoder_config(), plan, embedded_request());
  CHECK(e.weights_bytes == loaded);

  // 2B in bf16: 1.9e9 transformer parameters (the "2B"); T5-XXL's encoder 4.8e9 (its wo may stay float32).
  // Under offload each phase holds its own component only, which separates them.
  const auto r = request(121, 512, 768);
  const auto offloaded = estimate_2b(r, cuda_bf16(false, /*offload=*/true));
  INFO(offloaded.describe());
  CHECK(phase(offloaded, "transformer loop").weights_bytes > int64_t{2} * 1'800'000'000);
  CHECK(phase(offloaded, "transformer loop").weights_bytes < int64_t{2} * 2'000'000'000);
  CHECK(phase(offloaded, "text encoder").weights_bytes > int64_t{2} * 4'700'000'000);
  CHECK(phase(offloaded, "text encoder").weights_bytes < int64_t{2} * 4'700'000'000 + int64_t{2} * 1'100'000'000);
  const auto resident = estimate_2b(r, cuda_bf16());
  CHECK(resident.weights_bytes == offloaded.weights_bytes);
  CHECK(phase(resident, "text encoder").weights_bytes == resident.weights_bytes);  // all loaded while encoding
  CHECK(phase(resident, "transformer loop").weights_bytes ==
        resident.weights_bytes - phase(offloaded, "text encoder").weights_bytes);  // T5 released before the loop
}

TEST_CASE("the estimate grows with frames, height and width", "[memory]") {
  const auto plan = cuda_bf16();
  const auto base = estimate_2b(request(121, 512, 768), plan);
  for (const auto& bigger : {request(161, 512, 768), request(121, 544, 768), request(121, 512, 800)}) {
    const auto e = estimate_2b(bigger, plan);
    INFO(e.describe());
    CHECK(e.peak_bytes > base.peak_bytes);
    CHECK(phase(e, "transformer loop").activation_bytes > phase(base, "transformer loop").activation_bytes);
    CHECK(phase(e, "vae decode").activation_bytes > phase(base, "vae decode").activation_bytes);
  }
}

TEST_CASE("guidance doubles the transformer's activations", "[memory]") {
  const auto plan = cuda_bf16();
  const auto with = estimate_2b(request(121, 512, 768, true), plan);
  const auto without = estimate_2b(request(121, 512, 768, false), plan);
  // Everything in one forward scales with its rows but the fixed runtime allowance and RoPE's float32 cos and sin,
  // computed once for all rows (6144 tokens x 2048 x 8 bytes, with the estimate's 10 % slack).
  const double runtime = 256.0 * (1 << 20), rope = 1.1 * 6144.0 * 2048.0 * 8.0;
  const double ratio = (phase(with, "transformer loop").activation_bytes - runtime - rope) /
                       (phase(without, "transformer loop").activation_bytes - runtime - rope);
  CHECK(std::abs(ratio - 2.0) <= 2e-6);
  CHECK(phase(with, "vae decode").activation_bytes == phase(without, "vae decode").activation_bytes);
}

TEST_CASE("tiling and slicing lower the VAE phases", "[memory]") {
  MemoryRequest r = request(121, 768, 1216);
  r.batch = 2;
  r.encode_frames = r.frames;
  const auto plain = estimate_2b(r, cuda_bf16());
  const auto tiled = estimate_2b(r, cuda_bf16(/*tiling=*/true));
  const auto sliced = estimate_2b(r, cuda_bf16(false, false, /*slicing=*/true));
  for (const char* name : {"vae decode", "vae encode"}) {
    INFO(name);
    CHECK(phase(tiled, name).activation_bytes < phase(plain, name).activation_bytes / 2);
    CHECK(phase(sliced, name).activation_bytes < phase(plain, name).activation_bytes);
  }
  CHECK(phase(tiled, "transformer loop").activation_bytes == phase(plain, "transformer loop").activation_bytes);
  CHECK_THAT(plain.advice, Contains("--vae-tiling"));
  CHECK_THAT(tiled.advice, !Contains("--vae-tiling"));
}

TEST_CASE("the upcast kernel counts the attention scores, SDPA does not", "[memory]") {
  const auto r = request(121, 512, 768);
  const auto mps = make_plan(ltxmps::Capabilities::mps(), "mps", ltxmps::Precision::fp16);
  REQUIRE(mps.attention.kernel == ltxmps::AttentionKernel::upcast);
  const auto sdpa = make_plan(ltxmps::Capabilities::cuda(), "cuda", ltxmps::Precision::fp16);
  const auto upcast = estimate_2b(r, mps);
  const auto fused = estimate_2b(r, sdpa);
  const int64_t tokens = 16 * 16 * 24;
  const int64_t scores = int64_t{2} * 32 * tokens * tokens * (4 + 2);  // CFG rows · heads · S² · (fp32 + fp16)
  const int64_t extra = phase(upcast, "transformer loop").activation_bytes - phase(fused, "transformer loop").activation_bytes;
  CHECK(extra >= scores);
  CHECK(extra < scores + scores / 5);
}

TEST_CASE("CPU offload holds one component on the device and all of them on the host", "[memory]") {
  const auto r = request(121, 512, 768);
  const auto off = estimate_2b(r, cuda_bf16(false, /*offload=*/true));
  const auto on = estimate_2b(r, cuda_bf16());
  CHECK(off.host_bytes == off.weights_bytes);
  CHECK(on.host_bytes == 0);
  CHECK(phase(off, "text encoder").weights_bytes < phase(on, "text encoder").weights_bytes);
  CHECK(phase(off, "vae decode").weights_bytes + phase(off, "transformer loop").weights_bytes ==
        phase(on, "vae decode").weights_bytes);
  CHECK(off.peak_bytes < on.peak_bytes);
  CHECK_THAT(on.advice, Contains("--cpu-offload"));
  CHECK_THAT(off.advice, !Contains("--cpu-offload"));
}

TEST_CASE("a request too large for int64 is an error naming the size", "[memory]") {
  const auto plan = cuda_bf16();
  const int64_t huge = std::numeric_limits<int64_t>::max() / 4;
  CHECK_THROWS_WITH(estimate_2b(request(121, 512, huge), plan), Contains("overflows int64"));
  CHECK_THROWS_WITH(estimate_2b(request(huge, 512, 768), plan), Contains("overflows int64"));
  CHECK_THROWS_WITH(estimate_2b(request(0, 512, 768), plan), Contains("frames must be >= 1"));
  CHECK_THROWS_WITH(estimate_2b(request(121, -32, 768), plan), Contains("height must be >= 1"));
}

TEST_CASE("a limit below the estimate refuses the request with both numbers", "[memory]") {
  const auto e = estimate_2b(request(121, 512, 768), cuda_bf16());
  const MemoryLimit limit{e.peak_bytes - 1, "cuda:0 (test limit)"};
  CHECK_THROWS_WITH(check_request_fits(e, limit, "generate 768x512x121"),
                    Contains("generate 768x512x121 needs about " + format_bytes(e.peak_bytes)) &&
                        Contains("peak in " + e.peak_phase) &&
                        Contains("cuda:0 (test limit) has " + format_bytes(limit.bytes) + " available") &&
                        Contains("--num-frames"));
  CHECK_NOTHROW(check_request_fits(e, MemoryLimit{e.peak_bytes, "exactly enough"}, "generate"));

  // The warning band: above 80 % of the limit but fitting.
  CHECK_FALSE(memory_warning(e, MemoryLimit{e.peak_bytes * 2, "roomy"}).has_value());
  const auto warn = memory_warning(e, MemoryLimit{e.peak_bytes + e.peak_bytes / 10, "tight"});
  REQUIRE(warn.has_value());
  CHECK(warn->severity == ltxmps::Severity::warning);
  CHECK(warn->rule == "memory.near_limit");
}

TEST_CASE("--num-frames 800001 at 704x512 is refused with its estimate", "[memory]") {
  const auto e = estimate_2b(request(800001, 512, 704), cuda_bf16());
  INFO(e.describe());
  CHECK(e.peak_bytes > int64_t{1024} * kGiB);
  CHECK_THROWS_WITH(check_request_fits(e, MemoryLimit{80 * kGiB, "cuda:0 (an H100)"}, "generate"),
                    Contains("needs about") && Contains("has 80.0 GiB available"));
  CHECK_THROWS_WITH(check_request_fits(e, available_host_memory(), "generate"), Contains("the host"));
}

TEST_CASE("the embedded default request fits this machine", "[memory]") {
  const auto plan = make_plan(ltxmps::Capabilities::cpu_only(), "cpu", ltxmps::Precision::fp32);
  const auto e = estimate_request_memory(EmbeddedDefault::transformer_config(), EmbeddedDefault::vae_config(),
                                         EmbeddedDefault::text_encoder_config(), plan, embedded_request());
  const auto limit = available_memory(plan);
  REQUIRE(limit.has_value());
  INFO(e.describe() << "; " << limit->what << ": " << format_bytes(limit->bytes));
  CHECK(limit->bytes > 0);
  CHECK(e.peak_bytes < kGiB);
  CHECK_NOTHROW(check_request_fits(e, plan, "generate (embedded default)"));
}

TEST_CASE("estimates of the released models", "[memory]") {
  // 2B 768x512x121 with CFG in bf16 on CUDA fits an 80 GB card, not a 16 GB one without tiling or offload.
  const auto b2 = estimate_2b(request(121, 512, 768), cuda_bf16());
  INFO("2B 768x512x121 bf16 cuda: " << b2.describe());
  CHECK(b2.peak_bytes > 16 * kGiB);
  CHECK(b2.peak_bytes < 60 * kGiB);
  // 13B 768x512x121 (CFG, bf16): the weights alone are about 26 GB, T5 another 9.
  const auto b13 = estimate_request_memory(ltx_13b_transformer_config(), ltx_097_vae_config(), t5_xxl_config(),
                                           cuda_bf16(), request(121, 512, 768));
  INFO("13B 768x512x121 bf16 cuda: " << b13.describe());
  CHECK(phase(b13, "transformer loop").weights_bytes > 24 * kGiB);
  CHECK(b13.peak_bytes > b2.peak_bytes);
  CHECK(b13.peak_bytes < 120 * kGiB);
  // The effects-mask command alone: encode, one effects forward, no loop, no decode.
  MemoryRequest fx = request(121, 512, 768, false);
  fx.encode_frames = fx.frames;
  fx.denoise = false;
  fx.decode = false;
  fx.release_text_encoder = false;
  fx.effects_query_chunk = 512;
  const auto effects =
      estimate_request_memory(ltx_13b_transformer_config(), ltx_097_vae_config(), t5_xxl_config(), cuda_bf16(), fx);
  INFO("13B effects-mask 768x512x121: " << effects.describe());
  REQUIRE(effects.phases.size() == 3);
  CHECK(phase(effects, "effects pass").weights_bytes == effects.weights_bytes);  // removal keeps the text encoder
}

TEST_CASE("FP8 storage counts one dequantized layer, resident or streamed; FP8 matmul none", "[memory]") {
  // The 13B shapes: the largest block linear is ff.net.0.proj / ff.net.2, 4·D × D, 128 MiB in bf16. Without
  // offload and with T5 released, the loop and the decode hold the same weights except for that layer.
  const int64_t D = 4096, layer = 4 * D * D * 2;
  const auto dequantized = [](const MemoryEstimate& e) {
    INFO(e.describe());
    return phase(e, "transformer loop").weights_bytes - phase(e, "vae decode").weights_bytes;
  };
  const auto r = request(121, 512, 768);
  const auto estimate_13b = [&](const ltxmps::ExecutionPlan& plan) {
    return estimate_request_memory(ltx_13b_transformer_config(), ltx_097_vae_config(), t5_xxl_config(), plan, r);
  };
  ltxmps::LoaderSettings fp8;
  fp8.device = "cuda";
  fp8.precision = ltxmps::Precision::bf16;
  fp8.weight_storage = ltxmps::WeightStorage::fp8;
  const auto resident = ltxmps::resolve(fp8, ltxmps::Capabilities::cuda());
  CHECK(dequantized(estimate_13b(resident)) == layer);
  CHECK(dequantized(estimate_13b(cuda_bf16())) == 0);

  auto streamed_settings = fp8;
  streamed_settings.stream_weights = ltxmps::StreamWeights::on;
  auto streamed = ltxmps::resolve(streamed_settings, ltxmps::Capabilities::cuda());
  plan_model_weights(streamed, ltx_13b_transformer_config(), ltx_097_vae_config(), t5_xxl_config(), r);
  REQUIRE(streamed.weights.transformer.mode == ltxmps::WeightMode::fp8_streamed);
  CHECK(dequantized(estimate_13b(streamed)) == layer);

  // Every 13B block linear is a multiple of 16, so FP8 matmul dequantizes none of them.
  auto matmul_settings = fp8;
  matmul_settings.fp8_matmul = true;
  const auto matmul = ltxmps::resolve(matmul_settings, ltxmps::Capabilities::cuda());
  REQUIRE(matmul.precision.fp8_matmul);
  CHECK(dequantized(estimate_13b(matmul)) == 0);

  auto cpu_settings = fp8;
  cpu_settings.device = "cpu";
  cpu_settings.precision = ltxmps::Precision::fp32;
  // The layer in the compute dtype: float32 has twice bf16's bytes.
  CHECK(dequantized(estimate_13b(ltxmps::resolve(cpu_settings, ltxmps::Capabilities::cpu_only()))) == 2 * layer);

  // The weight plan's sizes say the same for the budget (ltxmps::plan_weights counts them in the loop phase).
  const auto sizes_13b = [&](const ltxmps::ExecutionPlan& plan) {
    return weight_sizes(ltx_13b_transformer_config(), ltx_097_vae_config(), t5_xxl_config(), plan, r).transformer;
  };
  CHECK(sizes_13b(cuda_bf16()).fp8_dequantized_bytes == layer);
  CHECK(sizes_13b(matmul).fp8_dequantized_bytes == 0);
}
