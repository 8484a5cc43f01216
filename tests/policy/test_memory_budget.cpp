// The memory budget (memory_budget.hpp, plan_weights()): size parsing, the per-component weight decisions on
// simulated machines (80 GB and 24 GB and 8 GB CUDA cards, 64 GB and 32 GB Macs, the CPU), explicit requests that
// narrow the automatic choice, and the refusals.
#include "catch_compat.hpp"

#include <ltxmps/plan.hpp>

#include <nlohmann/json.hpp>

using ltxmps::Capabilities;
using ltxmps::has_rule;
using ltxmps::LoaderSettings;
using ltxmps::StreamWeights;
using ltxmps::WeightMode;
using ltxmps::WeightSizes;
using ltxmps::WeightStorage;
using ltxmps_test::Contains;

namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

int64_t gib(double v) { return static_cast<int64_t>(v * static_cast<double>(kGiB)); }

// The 13B LTX-Video transformer (D = 4096, 48 blocks, caption 4096, in/out 128) in bf16, counted from its layers:
// a block holds 16·D² + 23·D parameters (attn1 and attn2: four D×D linears with biases and two D norms each; the
// feed-forward D→4D→D with biases; the 6×D table), the rest 8·D² + 4621·D + 128 (proj_in, the time embedding
// 256→D→D→6D, the caption projection 4096→D→D, proj_out, the 2×D table). FP8 storage keeps one byte per block
// linear weight plus a float32 scale per output channel (13·D of them) and leaves biases, norms and tables in bf16.
// T5-XXL's encoder is 4.76e9 parameters: 24 blocks of 4·D² (attention) + 3·D·10240 (gated feed-forward) + 2·D
// (norms), block 0 also the 32×64 position bias, beside the 32128×D embedding and the final norm. The VAE and the
// activations are round figures of the right order.
WeightSizes ltx_13b(bool text_encoder = true) {
  const int64_t D = 4096;
  WeightSizes s;
  auto& t = s.transformer;
  t.blocks = 48;
  t.block_bytes = 2 * (16 * D * D + 23 * D);
  t.bytes = t.blocks * t.block_bytes + 2 * (8 * D * D + 4621 * D + 128);
  t.fp8_block_bytes = 16 * D * D + 4 * 13 * D + 2 * 23 * D;
  t.fp8_bytes = t.blocks * t.fp8_block_bytes + 2 * (8 * D * D + 4621 * D + 128);
  s.text_encoder = text_encoder ? 2 * int64_t{4'762'310'656} : 0;
  if (text_encoder) {
    const int64_t t5_block = 2 * (4 * D * D + 3 * D * 10240 + 2 * D);
    s.text_encoder_blocks = 24;
    s.text_encoder_blocks_bytes = 24 * t5_block + 2 * 32 * 64;
    s.text_encoder_block_bytes = t5_block + 2 * 32 * 64;
    REQUIRE(s.text_encoder - s.text_encoder_blocks_bytes == 2 * (32128 * D + D));  // the embedding and final norm
  }
  s.vae = gib(1);
  s.text_encoder_activations = text_encoder ? gib(0.5) : 0;
  s.transformer_activations = gib(3);
  s.vae_activations = gib(2);
  return s;
}

ltxmps::ExecutionPlan planned(LoaderSettings settings, const Capabilities& caps, const WeightSizes& sizes) {
  auto plan = ltxmps::resolve(settings, caps);
  ltxmps::plan_weights(plan, sizes);
  return plan;
}

Capabilities cuda_card(double gib_memory, int major = 8, int minor = 9) {
  return Capabilities::cuda(1, major, minor, static_cast<uint64_t>(gib(gib_memory)));
}

}  // namespace

TEST_CASE("memory sizes: units, spaces, bytes; errors name the option", "[memory_budget]") {
  using ltxmps::parse_memory_size;
  CHECK(parse_memory_size("8GiB") == 8 * kGiB);
  CHECK(parse_memory_size("8 GiB") == 8 * kGiB);
  CHECK(parse_memory_size("8gib") == 8 * kGiB);
  CHECK(parse_memory_size("8GB") == 8'000'000'000ULL);
  CHECK(parse_memory_size("512MiB") == 512ULL << 20);
  CHECK(parse_memory_size("1.5 GiB") == 3 * kGiB / 2);
  CHECK(parse_memory_size("8000000000") == 8'000'000'000ULL);
  CHECK(parse_memory_size("4096 B") == 4096);
  CHECK(parse_memory_size("2TiB") == 2 * 1024 * kGiB);
  CHECK(parse_memory_size("auto") == 0);
  const auto bad = [](const std::string& text) {
    try {
      ltxmps::parse_memory_size(text, "--max-gpu-memory");
    } catch (const ltxmps::Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK_THAT(bad("8 parsecs"), ltxmps_test::ContainsAll({"--max-gpu-memory '8 parsecs'", "unknown unit", "8GiB"}));
  CHECK_THAT(bad("-8GiB"), ltxmps_test::ContainsAll({"--max-gpu-memory", "negative"}));
  CHECK_THAT(bad(""), ltxmps_test::ContainsAll({"--max-gpu-memory ''", "expected a size"}));
  CHECK_THAT(bad("GiB"), Contains("expected a size"));
  CHECK_THAT(bad("0"), Contains("more than 0 bytes"));
  CHECK_THAT(bad("99999999999999999999"), Contains("overflows 64 bits"));
  CHECK_THAT(bad("9000000 TiB"), Contains("overflows 64 bits"));
  CHECK_THAT(bad("8 GiB extra"), Contains("unknown unit"));
  CHECK_THAT(bad("1.2.3GiB"), Contains("unknown unit"));
  CHECK(ltxmps::describe_bytes(gib(24.25)) == "24.2 GiB");
  CHECK(ltxmps::describe_bytes(512 << 20) == "512 MiB");
  CHECK(ltxmps::parse_stream_weights("on") == StreamWeights::on);
  CHECK_THROWS_WITH(ltxmps::parse_stream_weights("yes", "--stream-weights"),
                    Contains("--stream-weights 'yes' is not one of auto, on, off"));
}

TEST_CASE("80 GB card: the 13B model, the text encoder and the VAE stay resident", "[memory_budget]") {
  const auto plan = planned(LoaderSettings{}, cuda_card(80, 9, 0), ltx_13b());
  const auto& w = plan.weights;
  REQUIRE(w.planned);
  CHECK(w.budget == gib(80));
  CHECK(w.budget_source == "free memory of cuda:0");
  CHECK(w.transformer.mode == WeightMode::resident);
  CHECK(w.text_encoder.mode == WeightMode::resident);
  CHECK(w.vae.mode == WeightMode::resident);
  CHECK_FALSE(w.offload);
  CHECK_FALSE(plan.offload.enabled);
  CHECK(w.fits);
  CHECK(w.peak_phase == "text encoder");  // everything is loaded while T5 runs
  CHECK(w.peak_bytes <= w.budget);
  CHECK(has_rule(plan.diagnostics, "weights.transformer.resident"));
}

TEST_CASE("24 GB card: the transformer is streamed 2 blocks ahead, the rest stays resident", "[memory_budget]") {
  const auto sizes = ltx_13b();
  const auto plan = planned(LoaderSettings{}, cuda_card(24), sizes);
  const auto& t = plan.weights.transformer;
  CHECK(t.mode == WeightMode::streamed);
  CHECK(t.blocks_ahead == 2);
  CHECK(t.ring_blocks == 3);
  CHECK(t.device_bytes == sizes.transformer.bytes - 45 * sizes.transformer.block_bytes);
  CHECK(plan.weights.text_encoder.mode == WeightMode::resident);
  CHECK_FALSE(plan.offload.enabled);
  CHECK(plan.weights.fits);
  CHECK(plan.weights.peak_bytes <= gib(24));
  CHECK(has_rule(plan.diagnostics, "weights.transformer.streamed"));
  CHECK_THAT(t.reason.message, ltxmps_test::ContainsAll({"transformer 24.3 GiB bfloat16 resident needs",
                                                         "> 24.0 GiB budget (free memory of cuda:0)",
                                                         "streamed from pinned host memory, 2 blocks ahead",
                                                         "3 block buffers of 512 MiB"}));
  const auto text = ltxmps::to_text(plan);
  CHECK_THAT(text, ltxmps_test::ContainsAll({"weights:   budget 24.0 GiB", "transformer : streamed, 2 blocks ahead"}));
  const auto json = nlohmann::json::parse(ltxmps::to_json(plan));
  CHECK(json.at("weights").at("transformer").at("mode") == "streamed");
  CHECK(json.at("weights").at("transformer").at("ring_blocks") == 3);
  CHECK(json.at("settings").at("stream_weights") == "auto");
}

TEST_CASE("8 GB card: the budget switches CPU offload on and streams T5-XXL and the transformer", "[memory_budget]") {
  const auto sizes = ltx_13b();
  auto plan = planned(LoaderSettings{}, cuda_card(8, 8, 6), sizes);
  const auto& w = plan.weights;
  CHECK(w.fits);
  CHECK(w.peak_bytes <= gib(8));
  CHECK(w.offload);
  CHECK(w.offload_by_budget);
  // The stages follow the plan's offload decision: components live on the CPU and run on the card.
  CHECK(plan.offload.enabled);
  CHECK(plan.offload.home == c10::Device(c10::kCPU));
  CHECK(plan.offload.execution == plan.device);
  CHECK(plan.offload.reason.rule == "weights.offload.enabled");
  CHECK(has_rule(plan.diagnostics, "weights.offload.enabled"));
  CHECK_THAT(w.offload_reason.message,
             ltxmps_test::ContainsAll({"switched on by the memory budget", "> 8.0 GiB budget (free memory of cuda:0)",
                                       "transformer (24.3 GiB)", "text encoder (8.9 GiB)", "VAE (1.0 GiB)"}));
  CHECK(w.transformer.mode == WeightMode::streamed);
  CHECK(w.transformer.blocks_ahead == 2);
  CHECK(w.transformer.ring_bytes == 3 * sizes.transformer.block_bytes);
  CHECK(w.vae.mode == WeightMode::offloaded);
  // T5-XXL alone (8.9 GiB) does not fit: its blocks stream, one on the device at a time.
  CHECK(w.text_encoder.mode == WeightMode::streamed);
  CHECK(w.text_encoder.device_bytes ==
        sizes.text_encoder - sizes.text_encoder_blocks_bytes + sizes.text_encoder_block_bytes);
  CHECK(w.text_encoder.device_bytes < gib(1));
  CHECK(has_rule(plan.diagnostics, "weights.text_encoder.streamed"));
  CHECK_THAT(w.text_encoder.reason.message,
             ltxmps_test::ContainsAll({"text encoder 8.9 GiB", "even under model-level CPU offload", "24 blocks",
                                       "pinned host memory"}));
  CHECK_THAT(w.transformer.reason.message, Contains("with model-level CPU offload and the text encoder streamed"));
  CHECK(plan.warning_count() == 0);
  const auto text = ltxmps::to_text(plan);
  CHECK_THAT(text, ltxmps_test::ContainsAll({"offload:   model-level, home cpu (switched on by the memory budget)",
                                             "text encoder: streamed"}));
  const auto json = nlohmann::json::parse(ltxmps::to_json(plan));
  CHECK(json.at("weights").at("offload_by_budget") == true);
  CHECK(json.at("offload").at("enabled") == true);
  CHECK(json.at("weights").at("text_encoder").at("mode") == "streamed");

  // Kept weight plans carry the offload to another plan of the same job (the CLI plans once, loads later).
  auto again = ltxmps::resolve(LoaderSettings{}, cuda_card(8, 8, 6));
  CHECK_FALSE(again.offload.enabled);
  ltxmps::apply_weight_plan(again, w);
  CHECK(again.offload.enabled);
  CHECK(again.offload.home == c10::Device(c10::kCPU));

  // Without a text encoder (a prompt cache) the transformer streams and nothing needs offload.
  plan = planned(LoaderSettings{}, cuda_card(8, 8, 6), ltx_13b(false));
  CHECK(plan.weights.fits);
  CHECK_FALSE(plan.offload.enabled);
  CHECK(plan.weights.transformer.mode == WeightMode::streamed);
  CHECK(plan.weights.transformer.blocks_ahead == 2);
  CHECK(has_rule(plan.diagnostics, "weights.text_encoder.none"));
  CHECK_FALSE(has_rule(plan.diagnostics, "weights.offload.enabled"));

  // Streaming off: T5 cannot stream either; offload alone leaves T5-XXL over the budget, which the plan says.
  LoaderSettings off;
  off.stream_weights = StreamWeights::off;
  plan = planned(off, cuda_card(8, 8, 6), sizes);
  CHECK_FALSE(plan.weights.fits);
  CHECK(plan.weights.text_encoder.mode != WeightMode::streamed);
  CHECK(plan.weights.transformer.reason.severity == ltxmps::Severity::warning);
  CHECK_THAT(plan.weights.transformer.reason.message, ltxmps_test::ContainsAll({"even", "> 8.0 GiB budget"}));
  // Where the text encoder's phase stays the largest even with T5 streamed (long prompts), the advice is a prompt
  // cache.
  auto long_prompts = sizes;
  long_prompts.text_encoder_activations = gib(6);
  plan = planned(LoaderSettings{}, cuda_card(4), long_prompts);
  CHECK_FALSE(plan.weights.fits);
  CHECK(plan.weights.peak_phase == "text encoder");
  CHECK(plan.weights.text_encoder.mode == WeightMode::streamed);
  CHECK_THAT(plan.weights.transformer.reason.message, Contains("prompt cache"));

  // A tighter explicit budget: nothing fits beside the VAE; the budget switches offload on, and with it the ring
  // shrinks to one block (the loop holds only the transformer), as a requested offload does.
  LoaderSettings tight;
  tight.max_device_memory = 4 * kGiB;
  for (bool requested : {false, true}) {
    tight.cpu_offload = requested;
    plan = planned(tight, cuda_card(80, 9, 0), ltx_13b(false));
    CHECK(plan.weights.budget_source == "max_device_memory");
    CHECK(plan.weights.fits);
    CHECK(plan.offload.enabled);
    CHECK(plan.weights.offload_by_budget == !requested);
    CHECK(plan.offload.reason.rule == (requested ? "offload.model" : "weights.offload.enabled"));
    CHECK(plan.weights.transformer.mode == WeightMode::streamed);
    CHECK(plan.weights.transformer.blocks_ahead == 0);
    CHECK(plan.weights.transformer.ring_blocks == 1);
    CHECK(plan.weights.vae.mode == WeightMode::offloaded);
    CHECK_THAT(plan.weights.transformer.reason.message, Contains("one block at a time"));
  }
}

TEST_CASE("offload before options that cost every step; FP8 only when neither fits", "[memory_budget]") {
  const auto sizes = ltx_13b();
  // 11.5 GiB: FP8 + streamed would fit without offload (and streamed 1 ahead would not), but offload with exact
  // streaming 2 ahead (a one-time cost per run) comes first.
  LoaderSettings fp8_only;
  fp8_only.weight_storage = WeightStorage::fp8;
  fp8_only.stream_weights = StreamWeights::on;
  const auto fp8_plan = planned(fp8_only, cuda_card(11.5), sizes);
  REQUIRE(fp8_plan.weights.fits);
  CHECK_FALSE(fp8_plan.offload.enabled);
  auto plan = planned(LoaderSettings{}, cuda_card(11.5), sizes);
  CHECK(plan.weights.fits);
  CHECK(plan.offload.enabled);
  CHECK(plan.weights.transformer.mode == WeightMode::streamed);
  CHECK(plan.weights.transformer.blocks_ahead == 2);
  CHECK(plan.weights.text_encoder.mode == WeightMode::offloaded);  // T5-XXL whole fits
  CHECK_FALSE(ltxmps::transformer_weights_fp8(plan));
  // Every option's bytes add up: the peak is the text encoder's phase, T5 whole and nothing else (the streamed
  // transformer's ring is allocated by its first forward and leaves the device with it).
  CHECK(plan.weights.peak_phase == "text encoder");
  CHECK(plan.weights.peak_bytes == sizes.text_encoder + sizes.text_encoder_activations);
}

TEST_CASE("explicit requests narrow the automatic choice and are never overridden", "[memory_budget]") {
  const auto sizes = ltx_13b();
  LoaderSettings s;
  s.stream_weights = StreamWeights::on;  // streamed although everything fits
  auto plan = planned(s, cuda_card(80, 9, 0), sizes);
  CHECK(plan.weights.transformer.mode == WeightMode::streamed);
  CHECK(plan.weights.transformer.blocks_ahead == 2);
  CHECK_THAT(plan.weights.transformer.reason.message, Contains("as requested (stream_weights=on)"));

  s = LoaderSettings{};
  s.weight_storage = WeightStorage::fp8;
  plan = planned(s, cuda_card(80, 9, 0), sizes);
  CHECK(plan.weights.transformer.mode == WeightMode::fp8);
  CHECK(plan.weights.transformer.device_bytes == sizes.transformer.fp8_bytes);
  CHECK_THAT(plan.weights.transformer.reason.message, Contains("as requested (weight_storage=fp8)"));

  s.stream_weights = StreamWeights::on;
  plan = planned(s, cuda_card(80, 9, 0), sizes);
  CHECK(plan.weights.transformer.mode == WeightMode::fp8_streamed);

  // Streaming off: FP8 storage is what fits a 24 GB card.
  s = LoaderSettings{};
  s.stream_weights = StreamWeights::off;
  plan = planned(s, cuda_card(24), sizes);
  CHECK(plan.weights.transformer.mode == WeightMode::fp8);
  CHECK(plan.weights.fits);
  CHECK_THAT(plan.weights.transformer.reason.message, Contains("FP8 e4m3 storage, dequantized to bfloat16"));

  // Streaming off and compute-dtype storage: only resident is left; on a 32 GB card it fits once the budget switches
  // offload on ...
  s.weight_storage = WeightStorage::compute;
  plan = planned(s, cuda_card(32), sizes);
  CHECK(plan.weights.fits);
  CHECK(plan.weights.offload_by_budget);
  CHECK(plan.offload.enabled);
  CHECK(plan.weights.transformer.mode == WeightMode::offloaded);
  CHECK(plan.weights.text_encoder.mode == WeightMode::offloaded);
  CHECK(plan.weights.peak_phase == "transformer loop");
  CHECK_THAT(plan.weights.transformer.reason.message,
             ltxmps_test::ContainsAll({"resident needs", "> 32.0 GiB budget", "(with model-level CPU offload)"}));
  s.cpu_offload = true;
  plan = planned(s, cuda_card(32), sizes);
  CHECK(plan.weights.fits);
  CHECK_FALSE(plan.weights.offload_by_budget);  // requested
  CHECK(plan.weights.transformer.mode == WeightMode::offloaded);
  // ... and on a 24 GB card nothing fits at all: a warning, the smallest option kept.
  plan = planned(s, cuda_card(24), sizes);
  CHECK_FALSE(plan.weights.fits);
  CHECK(plan.weights.transformer.mode == WeightMode::offloaded);
  CHECK(has_rule(plan.diagnostics, "weights.over_budget"));
  CHECK(plan.warning_count() >= 1);

  // A requested CPU offload stays on, whatever the budget.
  s = LoaderSettings{};
  s.cpu_offload = true;
  plan = planned(s, cuda_card(80, 9, 0), sizes);
  CHECK(plan.weights.offload);
  CHECK(plan.weights.transformer.mode == WeightMode::offloaded);
  CHECK(plan.offload.reason.rule == "offload.model");
}

TEST_CASE("Macs: unified memory, never streamed or FP8; refusals name why", "[memory_budget]") {
  // A 64 GB Mac lends Metal about three quarters of its memory.
  auto plan = planned(LoaderSettings{}, Capabilities::mps(15, 0, 48 * kGiB), ltx_13b());
  CHECK(plan.weights.budget == gib(48));
  CHECK(plan.weights.budget_source == "MPS working set of the unified memory");
  CHECK(plan.weights.transformer.mode == WeightMode::resident);
  CHECK(plan.weights.fits);
  CHECK(has_rule(plan.diagnostics, "weights.mps.unified"));
  // A 32 GB Mac: nothing else to pick; the plan warns.
  plan = planned(LoaderSettings{}, Capabilities::mps(15, 0, 24 * kGiB), ltx_13b());
  CHECK(plan.weights.transformer.mode == WeightMode::resident);
  CHECK_FALSE(plan.weights.fits);
  CHECK_FALSE(plan.offload.enabled);  // no offload on unified memory, whatever the budget
  CHECK_FALSE(plan.weights.offload_by_budget);
  CHECK(plan.weights.text_encoder.mode == WeightMode::resident);  // nor T5 streaming
  CHECK(has_rule(plan.diagnostics, "weights.over_budget"));
  // An 8 GiB Mac working set with T5-XXL: still nothing moves.
  plan = planned(LoaderSettings{}, Capabilities::mps(15, 0, 8 * kGiB), ltx_13b());
  CHECK_FALSE(plan.offload.enabled);
  CHECK(plan.weights.text_encoder.mode == WeightMode::resident);

  LoaderSettings s;
  s.stream_weights = StreamWeights::on;
  CHECK_THROWS_WITH(ltxmps::resolve(s, Capabilities::mps()),
                    ltxmps_test::ContainsAll({"stream_weights=on", "unified", "within the same RAM"}));
  s = LoaderSettings{};
  s.weight_storage = WeightStorage::fp8;
  CHECK_THROWS_WITH(ltxmps::resolve(s, Capabilities::mps()),
                    ltxmps_test::ContainsAll({"weight_storage=fp8", "MPS has no float8"}));
}

TEST_CASE("CPU: no budget by default; an explicit one can pick FP8; streaming is refused", "[memory_budget]") {
  auto plan = planned(LoaderSettings{}, Capabilities::cpu_only(), ltx_13b());
  CHECK(plan.weights.budget == 0);
  CHECK(plan.weights.transformer.mode == WeightMode::resident);
  CHECK(has_rule(plan.diagnostics, "weights.transformer.no_budget"));
  CHECK_THAT(ltxmps::to_text(plan), Contains("weights:   budget unknown"));

  LoaderSettings s;
  s.max_device_memory = 30 * kGiB;
  plan = planned(s, Capabilities::cpu_only(), ltx_13b());
  CHECK(plan.weights.transformer.mode == WeightMode::fp8);
  CHECK_FALSE(plan.offload.enabled);
  // Nothing to offload to, nothing to stream from, however small the budget.
  s.max_device_memory = 4 * kGiB;
  plan = planned(s, Capabilities::cpu_only(), ltx_13b());
  CHECK_FALSE(plan.weights.fits);
  CHECK_FALSE(plan.offload.enabled);
  CHECK(plan.weights.text_encoder.mode == WeightMode::resident);

  s = LoaderSettings{};
  s.stream_weights = StreamWeights::on;
  CHECK_THROWS_WITH(ltxmps::resolve(s, Capabilities::cpu_only()),
                    ltxmps_test::ContainsAll({"stream_weights=on", "needs a CUDA device", "cpu"}));
  s.device = "cuda";
  CHECK_NOTHROW(ltxmps::resolve(s, Capabilities::cuda()));
}

TEST_CASE("plan_weights: unknown budgets, small models, bad sizes, planning twice", "[memory_budget]") {
  // A CUDA card whose memory is unknown (LibTorch headers without CUDA): no budget, resident.
  auto plan = planned(LoaderSettings{}, Capabilities::cuda(), ltx_13b());
  CHECK(plan.weights.budget == 0);
  CHECK(plan.weights.transformer.mode == WeightMode::resident);
  CHECK_THROWS_WITH(ltxmps::plan_weights(plan, ltx_13b()), Contains("planned already"));

  // Two blocks: at most one block ahead, a ring of two.
  auto small = ltx_13b(false);
  small.transformer.blocks = 2;
  small.transformer.bytes = 3 * small.transformer.block_bytes;
  small.transformer.fp8_bytes = 0;
  LoaderSettings s;
  s.stream_weights = StreamWeights::on;
  plan = planned(s, cuda_card(80, 9, 0), small);
  CHECK(plan.weights.transformer.blocks_ahead == 1);
  CHECK(plan.weights.transformer.ring_blocks == 2);

  auto bad = ltx_13b();
  bad.transformer.block_bytes = bad.transformer.bytes;
  plan = ltxmps::resolve(LoaderSettings{}, cuda_card(24));
  CHECK_THROWS_WITH(ltxmps::plan_weights(plan, bad), Contains("exceed the transformer"));
  bad = ltx_13b();
  bad.vae = -1;
  CHECK_THROWS_WITH(ltxmps::plan_weights(plan, bad), Contains("negative"));
  bad = ltx_13b();
  bad.text_encoder_blocks_bytes = bad.text_encoder + 1;
  CHECK_THROWS_WITH(ltxmps::plan_weights(plan, bad), Contains("exceed its"));
}

TEST_CASE("FP8 storage's dequantized layer counts in the transformer loop", "[memory_budget]") {
  // Without T5 the loop is the peak: the transformer's device bytes, the layer dequantized for the matmul that
  // runs (the largest block linear, 4·D × D in bf16, resident or streamed), the activations and the VAE.
  auto sizes = ltx_13b(false);
  const int64_t layer = 4 * int64_t{4096} * 4096 * 2;
  sizes.transformer.fp8_dequantized_bytes = layer;
  const int64_t rest = sizes.transformer_activations + sizes.vae;
  LoaderSettings s;
  s.weight_storage = WeightStorage::fp8;
  s.stream_weights = StreamWeights::off;
  auto plan = planned(s, cuda_card(80, 9, 0), sizes);
  REQUIRE(plan.weights.transformer.mode == WeightMode::fp8);
  CHECK(plan.weights.peak_phase == "transformer loop");
  CHECK(plan.weights.peak_bytes == sizes.transformer.fp8_bytes + layer + rest);
  s.stream_weights = StreamWeights::on;
  plan = planned(s, cuda_card(80, 9, 0), sizes);
  REQUIRE(plan.weights.transformer.mode == WeightMode::fp8_streamed);
  CHECK(plan.weights.peak_bytes == plan.weights.transformer.device_bytes + layer + rest);
  plan = planned(LoaderSettings{}, cuda_card(80, 9, 0), sizes);  // compute-dtype weights: nothing to dequantize
  REQUIRE(plan.weights.transformer.mode == WeightMode::resident);
  CHECK(plan.weights.peak_bytes == sizes.transformer.bytes + rest);

  // A budget that holds the FP8 weights and the activations (under offload, which the budget switches on: the VAE
  // then waits in host memory) but not the dequantized layer does not fit.
  s.stream_weights = StreamWeights::off;
  const auto budget = static_cast<uint64_t>(sizes.transformer.fp8_bytes + layer + sizes.transformer_activations);
  CHECK_FALSE(planned(s, Capabilities::cuda(1, 8, 9, budget - 1), sizes).weights.fits);
  plan = planned(s, Capabilities::cuda(1, 8, 9, budget), sizes);
  CHECK(plan.weights.fits);
  CHECK(plan.offload.enabled);
  CHECK(plan.weights.peak_bytes == static_cast<int64_t>(budget));
}

TEST_CASE("CUDA graphs: on for CUDA, off when asked, off the GPU and for streamed blocks", "[memory_budget][graphs]") {
  const auto cuda = ltxmps::resolve(LoaderSettings{}, cuda_card(80));
  CHECK(cuda.graphs.denoise_step);
  CHECK(has_rule(cuda.diagnostics, "graphs.denoise_step"));
  CHECK_THAT(ltxmps::to_text(cuda), Contains("graphs:    the denoising step's transformer forward as a CUDA graph"));
  const auto json = nlohmann::json::parse(ltxmps::to_json(cuda));
  CHECK(json.at("graphs").at("denoise_step") == true);
  CHECK(json.at("settings").at("cuda_graphs") == true);

  LoaderSettings off;
  off.cuda_graphs = false;
  const auto asked = ltxmps::resolve(off, cuda_card(80));
  CHECK_FALSE(asked.graphs.denoise_step);
  CHECK(asked.graphs.reason.rule == "graphs.off.requested");
  CHECK(nlohmann::json::parse(ltxmps::to_json(asked)).at("graphs").at("denoise_step") == false);

  for (const auto& caps : {Capabilities::cpu_only(), Capabilities::mps(14, 0)}) {
    const auto plan = ltxmps::resolve(LoaderSettings{}, caps);
    CHECK_FALSE(plan.graphs.denoise_step);
    CHECK(plan.graphs.reason.rule == "graphs.not_cuda");
    CHECK_THAT(ltxmps::to_text(plan), Contains("graphs:    off"));
  }

  // The 24 GB card streams the 13B's blocks (above): the weight plan turns the graphs off and says why.
  const auto streamed = planned(LoaderSettings{}, cuda_card(24), ltx_13b());
  REQUIRE(streamed.weights.transformer.mode == WeightMode::streamed);
  CHECK_FALSE(streamed.graphs.denoise_step);
  CHECK(streamed.graphs.reason.rule == "graphs.off.streamed");
  CHECK(has_rule(streamed.diagnostics, "graphs.denoise_step"));  // the first decision stays in the record
  CHECK(has_rule(streamed.diagnostics, "graphs.off.streamed"));
  CHECK(planned(LoaderSettings{}, cuda_card(80), ltx_13b()).graphs.denoise_step);
}

TEST_CASE("VAE layout: channels-last on CUDA, channels-first when asked and off CUDA", "[memory_budget][vae]") {
  const auto cuda = ltxmps::resolve(LoaderSettings{}, cuda_card(80));
  CHECK(cuda.vae.channels_last);
  CHECK(has_rule(cuda.diagnostics, "vae.channels_last"));
  CHECK_THAT(ltxmps::to_text(cuda), Contains("vae:       tiling off, slicing off, channels-last"));
  const auto json = nlohmann::json::parse(ltxmps::to_json(cuda));
  CHECK(json.at("vae").at("channels_last") == true);
  CHECK(json.at("settings").at("vae_channels_last") == true);

  LoaderSettings off;
  off.vae_channels_last = false;
  const auto asked = ltxmps::resolve(off, cuda_card(80));
  CHECK_FALSE(asked.vae.channels_last);
  CHECK(has_rule(asked.diagnostics, "vae.channels_first.requested"));
  CHECK(nlohmann::json::parse(ltxmps::to_json(asked)).at("vae").at("channels_last") == false);

  for (const auto& caps : {Capabilities::cpu_only(), Capabilities::mps(14, 0)}) {
    const auto plan = ltxmps::resolve(LoaderSettings{}, caps);
    CHECK_FALSE(plan.vae.channels_last);
    CHECK(has_rule(plan.diagnostics, "vae.channels_first"));
    CHECK_THAT(ltxmps::to_text(plan), Contains("channels-first"));
  }
}
