// Precision, offload, attention and plan rules on simulated machines.
#include "catch_compat.hpp"

#include <ltxmps/plan.hpp>

#include <nlohmann/json.hpp>

#include <chrono>

using ltxmps::Capabilities;
using ltxmps::has_rule;
using ltxmps::LoaderSettings;
using ltxmps::Precision;
using ltxmps::resolve;

namespace {

LoaderSettings with_precision(Precision p) {
  LoaderSettings s;
  s.precision = p;
  return s;
}

}  // namespace

TEST_CASE("CPU only: fp32 by default, half precision kept with a warning", "[precision]") {
  const auto caps = Capabilities::cpu_only();
  auto plan = resolve(LoaderSettings{}, caps);
  CHECK(plan.device == c10::Device("cpu"));
  CHECK(plan.precision.resolved == Precision::fp32);
  CHECK(plan.precision.transformer.compute == at::kFloat);
  CHECK(plan.precision.text_encoder.keep_in_fp32_modules.empty());
  CHECK(plan.attention.kernel == ltxmps::AttentionKernel::sdpa);
  CHECK_FALSE(plan.memory.release_after_heavy_ops);
  CHECK(plan.warning_count() == 0);

  plan = resolve(with_precision(Precision::bf16), caps);
  CHECK(plan.precision.resolved == Precision::bf16);
  CHECK(plan.precision.transformer.storage == at::kBFloat16);
  CHECK(has_rule(plan.diagnostics, "precision.cpu.half_kept"));
  CHECK(plan.precision.vae.compute == at::kFloat);
  CHECK(plan.precision.latents == at::kFloat);
}

TEST_CASE("CUDA only: bf16 on sm_80+, fp16 below, fp32 below sm_60", "[precision]") {
  CHECK(resolve(LoaderSettings{}, Capabilities::cuda(1, 9, 0)).precision.resolved == Precision::bf16);
  CHECK(resolve(LoaderSettings{}, Capabilities::cuda(1, 7, 5)).precision.resolved == Precision::fp16);
  CHECK(resolve(LoaderSettings{}, Capabilities::cuda(1, 5, 2)).precision.resolved == Precision::fp32);

  auto plan = resolve(with_precision(Precision::bf16), Capabilities::cuda(1, 7, 0));
  CHECK(plan.precision.resolved == Precision::fp16);
  CHECK(has_rule(plan.diagnostics, "precision.cuda.bf16_to_fp16"));
  plan = resolve(with_precision(Precision::bf16), Capabilities::cuda(1, 5, 0));
  CHECK(plan.precision.resolved == Precision::fp32);
  CHECK(has_rule(plan.diagnostics, "precision.cuda.fp16_to_fp32"));
  plan = resolve(with_precision(Precision::fp16), Capabilities::cuda(1, 9, 0));
  CHECK(plan.precision.resolved == Precision::fp16);
  CHECK(plan.warning_count() == 0);

  // The second device's capability decides when it is the one requested.
  auto mixed = Capabilities::cuda(2, 9, 0);
  mixed.cuda_devices[1].major = 7;
  LoaderSettings s = with_precision(Precision::bf16);
  s.device = "cuda:1";
  CHECK(resolve(s, mixed).precision.resolved == Precision::fp16);

  // Unknown capability (headers without CUDA): the request is kept.
  auto unknown = Capabilities::cuda(1, 0, 0);
  CHECK(resolve(with_precision(Precision::bf16), unknown).precision.resolved == Precision::bf16);
}

TEST_CASE("MPS on macOS 13: bf16 is unsupported and becomes fp16 even when allowed", "[precision][mps]") {
  const auto caps = Capabilities::mps(13, 6);
  auto s = with_precision(Precision::bf16);
  s.mps_bf16 = ltxmps::MpsBf16Policy::allow;
  const auto plan = resolve(s, caps);
  CHECK(plan.device == c10::Device("mps"));
  CHECK(plan.precision.resolved == Precision::fp16);
  CHECK(has_rule(plan.diagnostics, "precision.mps.bf16_unsupported_os"));
  CHECK(plan.attention.kernel == ltxmps::AttentionKernel::upcast);
}

TEST_CASE("MPS on macOS 14+: bf16 becomes fp16 by default, allow keeps it", "[precision][mps]") {
  const auto caps = Capabilities::mps(14, 4);
  auto plan = resolve(with_precision(Precision::bf16), caps);
  CHECK(plan.precision.resolved == Precision::fp16);
  CHECK(plan.precision.transformer.storage == at::kHalf);
  CHECK(has_rule(plan.diagnostics, "precision.mps.bf16_to_fp16"));

  auto s = with_precision(Precision::bf16);
  s.mps_bf16 = ltxmps::MpsBf16Policy::allow;
  plan = resolve(s, caps);
  CHECK(plan.precision.resolved == Precision::bf16);
  CHECK(has_rule(plan.diagnostics, "precision.mps.bf16_allowed"));

  CHECK(resolve(LoaderSettings{}, caps).precision.resolved == Precision::fp16);
  CHECK(resolve(with_precision(Precision::fp32), caps).attention.kernel == ltxmps::AttentionKernel::sdpa);
}

TEST_CASE("VAE float32 by default; off follows the model with a warning for fp16", "[precision]") {
  const auto caps = Capabilities::mps(15, 0);
  auto plan = resolve(with_precision(Precision::fp16), caps);
  CHECK(plan.precision.vae.storage == at::kFloat);
  CHECK(plan.precision.vae.compute == at::kFloat);
  CHECK(has_rule(plan.diagnostics, "precision.vae.fp32"));

  auto s = with_precision(Precision::fp16);
  s.vae_float32 = false;
  plan = resolve(s, caps);
  CHECK(plan.precision.vae.compute == at::kHalf);
  CHECK(has_rule(plan.diagnostics, "precision.vae.fp16_risk"));

  s.precision = Precision::bf16;
  plan = resolve(s, Capabilities::cuda(1, 9, 0));
  CHECK(plan.precision.vae.compute == at::kBFloat16);
  CHECK(has_rule(plan.diagnostics, "precision.vae.model_dtype"));
}

TEST_CASE("T5 keeps 'wo' in float32 under fp16 only, as transformers does", "[precision]") {
  auto plan = resolve(with_precision(Precision::fp16), Capabilities::cuda(1, 9, 0));
  REQUIRE(plan.precision.text_encoder.keep_in_fp32_modules.size() == 1);
  CHECK(plan.precision.text_encoder.keep_in_fp32_modules[0] == "wo");
  CHECK(has_rule(plan.diagnostics, "precision.t5.wo_fp32"));
  plan = resolve(with_precision(Precision::bf16), Capabilities::cuda(1, 9, 0));
  CHECK(plan.precision.text_encoder.keep_in_fp32_modules.empty());
  CHECK_FALSE(has_rule(plan.diagnostics, "precision.t5.wo_fp32"));
  plan = resolve(with_precision(Precision::fp32), Capabilities::cuda(1, 9, 0));
  CHECK(plan.precision.text_encoder.keep_in_fp32_modules.empty());
}

TEST_CASE("offload: honoured on CUDA, ignored with a diagnostic on MPS and the CPU", "[offload]") {
  LoaderSettings s;
  s.cpu_offload = true;
  auto plan = resolve(s, Capabilities::cuda(1));
  CHECK(plan.offload.enabled);
  CHECK(plan.offload.home == c10::Device("cpu"));
  CHECK(plan.offload.execution == c10::Device("cuda:0"));
  plan = resolve(s, Capabilities::mps(14, 0));
  CHECK_FALSE(plan.offload.enabled);
  CHECK(plan.offload.home == c10::Device("mps"));
  CHECK(has_rule(plan.diagnostics, "offload.ignored.mps"));
  plan = resolve(s, Capabilities::cpu_only());
  CHECK_FALSE(plan.offload.enabled);
  CHECK(has_rule(plan.diagnostics, "offload.ignored.cpu"));
  s.cpu_offload = false;
  CHECK(has_rule(resolve(s, Capabilities::cuda(1)).diagnostics, "offload.off"));
}

TEST_CASE("attention: upcast for half on MPS, overridable both ways", "[attention]") {
  LoaderSettings s;
  s.upcast_attention = false;
  auto plan = resolve(s, Capabilities::mps(14, 0));
  CHECK(plan.attention.kernel == ltxmps::AttentionKernel::sdpa);
  CHECK(plan.attention.reason.severity == ltxmps::Severity::warning);
  s.upcast_attention = true;
  plan = resolve(s, Capabilities::cuda(1));
  CHECK(plan.attention.kernel == ltxmps::AttentionKernel::upcast);
  CHECK(plan.attention.reason.rule == "attention.upcast.requested");
  CHECK(resolve(LoaderSettings{}, Capabilities::cuda(1)).attention.kernel == ltxmps::AttentionKernel::sdpa);
}

TEST_CASE("CUDA and MPS together: CUDA wins for auto, MPS rules apply when MPS is asked for", "[precision][mps]") {
  auto caps = Capabilities::cuda(1, 8, 9);
  caps.mps_available = true;
  caps.macos_version = ltxmps::MacOSVersion{14, 0};
  auto s = with_precision(Precision::bf16);
  CHECK(resolve(s, caps).device == c10::Device("cuda:0"));
  CHECK(resolve(s, caps).precision.resolved == Precision::bf16);
  s.device = "mps";
  CHECK(resolve(s, caps).precision.resolved == Precision::fp16);
}

TEST_CASE("parse and name precisions", "[precision]") {
  CHECK(ltxmps::parse_precision("bf16") == Precision::bf16);
  CHECK(ltxmps::parse_precision("float16") == Precision::fp16);
  CHECK(ltxmps::parse_precision("auto") == Precision::automatic);
  CHECK_THROWS_AS(ltxmps::parse_precision("int8"), ltxmps::Error);
  CHECK_THROWS_AS(ltxmps::to_scalar_type(Precision::automatic), ltxmps::Error);
  CHECK(ltxmps::to_scalar_type(Precision::bf16) == at::kBFloat16);
}

TEST_CASE("the plan prints as text and as valid JSON with every reason", "[plan]") {
  LoaderSettings s = with_precision(Precision::bf16);
  s.cpu_offload = true;
  s.vae_tiling = true;
  const auto plan = resolve(s, Capabilities::mps(14, 0));
  const auto text = ltxmps::to_text(plan);
  CHECK_THAT(text, ltxmps_test::Contains("device:    mps"));
  CHECK_THAT(text, ltxmps_test::Contains("precision: fp16 (requested bf16)"));
  CHECK_THAT(text, ltxmps_test::Contains("offload.ignored.mps"));
  CHECK_THAT(text, ltxmps_test::Contains("tiling on"));

  const auto json = nlohmann::json::parse(ltxmps::to_json(plan));
  CHECK(json["device"] == "mps");
  CHECK(json["precision"]["resolved"] == "fp16");
  CHECK(json["precision"]["vae"]["compute"] == "float32");
  CHECK(json["precision"]["text_encoder"]["keep_in_fp32_modules"][0] == "wo");
  CHECK(json["attention"] == "upcast");
  CHECK(json["offload"]["enabled"] == false);
  CHECK(json["settings"]["upcast_attention"].is_null());
  CHECK(json["diagnostics"].size() == plan.diagnostics.size());
  CHECK(json["diagnostics"][0]["rule"] == "device.auto.mps");
}

TEST_CASE("JSON strings are escaped", "[plan]") {
  auto plan = resolve(LoaderSettings{}, Capabilities::cpu_only());
  plan.diagnostics.push_back({ltxmps::Severity::info, "t", "r", "quote \" backslash \\ newline \n tab \t ctl \x01"});
  const auto json = nlohmann::json::parse(ltxmps::to_json(plan));
  CHECK(json["diagnostics"].back()["message"] == "quote \" backslash \\ newline \n tab \t ctl \x01");
}

TEST_CASE("an explicit impossible device fails the whole plan", "[plan]") {
  LoaderSettings s;
  s.device = "mps";
  CHECK_THROWS_AS(resolve(s, Capabilities::cuda(1)), ltxmps::Error);
}
