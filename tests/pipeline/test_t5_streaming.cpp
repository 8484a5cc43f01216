// A streamed T5 encoder (Note [Streamed T5]) with the CPU as both host and device: the streamed forward equals the
// resident one bit for bit (with and without a padding mask), an encoder loaded for streaming from a checkpoint,
// offload's moves leaving the blocks in host memory; and the weight plan's T5 sizes and the request estimate
// under a budget that streams T5 (Note [Weight budget]).
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/memory_estimate.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/t5_streaming.hpp"
#include "ltxmps_pipeline/weight_plan.hpp"

#include <ltxmps/plan.hpp>
#include <ltxmps/random.hpp>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

using namespace ltxmps::pipeline;
namespace fs = std::filesystem;

namespace {

// Three gated blocks: block 0 holds the position bias, so the blocks differ in their tensors.
T5Config tiny_t5() {
  T5Config c;
  c.vocab_size = 64;
  c.d_model = 32;
  c.d_kv = 8;
  c.num_heads = 4;
  c.d_ff = 48;
  c.num_layers = 3;
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 16;
  c.feed_forward_proj = "gated-gelu";
  c.dense_act_fn = "gelu_new";
  c.is_gated_act = true;
  return c;
}

// Deterministic weights by name, scaled by 1/sqrt(fan_in); norm weights near 1.
at::Tensor t5_weight(const std::string& name, const std::vector<int64_t>& shape, at::ScalarType dtype) {
  auto g = ltxmps::make_cpu_generator(std::hash<std::string>{}(name));
  auto t = ltxmps::randn(shape, g);
  if (shape.size() == 1) return t.mul_(0.05).add_(1.0).to(dtype);
  return t.mul_(1.0 / std::sqrt(static_cast<double>(shape.back()))).to(dtype);
}

T5EncoderModel tiny_encoder(at::ScalarType dtype = at::kFloat) {
  T5Runtime runtime;
  runtime.dtype = dtype;
  return T5EncoderModel::from_weights(tiny_t5(), runtime, t5_weight);
}

at::Tensor tiny_ids() {
  auto g = ltxmps::make_cpu_generator(5);
  return at::randint(0, 64, {2, 12}, g, at::TensorOptions().dtype(at::kLong));
}

fs::path work_dir() {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  const fs::path root = env && *env ? fs::path(env) : fs::temp_directory_path() / "ltxmps_test_data";
  return root / ("t5_streaming_" + std::to_string(::getpid()));
}

}  // namespace

TEST_CASE("a streamed T5 encoder equals the resident one bit for bit", "[t5_streaming]") {
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    INFO("dtype " << dtype);
    const auto resident = tiny_encoder(dtype);
    auto streamed = tiny_encoder(dtype);
    stream_t5_blocks(streamed, c10::kCPU);
    CHECK(streamed.streamed_blocks);
    const auto ids = tiny_ids();
    auto mask = at::ones({2, 12}, at::kLong);
    mask.narrow(1, 9, 3).zero_();
    CHECK(at::equal(streamed.forward(ids), resident.forward(ids)));
    CHECK(at::equal(streamed.forward(ids, mask), resident.forward(ids, mask)));
    CHECK_THROWS_WITH(stream_t5_blocks(streamed, c10::kCPU), ltxmps_test::Contains("streamed already"));
  }
}

TEST_CASE("streamed T5 blocks are copied for each run and stay in host memory under offload", "[t5_streaming]") {
  auto model = tiny_encoder();
  stream_t5_blocks(model, c10::kCPU);
  // The copy is a new tensor per weight even where host and device are the same, so the CPU suite runs the path
  // the GPU takes.
  const auto copy = copy_t5_block(model.block[0], c10::kCPU);
  CHECK(copy.q.data_ptr() != model.block[0].q.data_ptr());
  CHECK(at::equal(copy.q, model.block[0].q));
  CHECK(copy.relative_attention_bias.defined());
  CHECK_FALSE(copy.wi.defined());  // gated: wi_0 and wi_1 only
  CHECK(t5_block_bytes(model.block[0]) > t5_block_bytes(model.block[1]));  // block 0 holds the position bias
  // An offload scope's move leaves the blocks where they are and moves the rest (meta: a device that is not the
  // CPU, without one).
  const auto* q = model.block[1].q.unsafeGetTensorImpl();
  move_model(model, c10::kMeta);
  CHECK(model.shared.is_meta());
  CHECK(model.final_layer_norm.is_meta());
  CHECK(model.runtime.device == c10::Device(c10::kMeta));
  CHECK(model.block[1].q.is_cpu());
  CHECK(model.block[1].q.unsafeGetTensorImpl() == q);
}

TEST_CASE("an encoder loaded for streaming equals the resident load", "[t5_streaming]") {
  const auto dir = work_dir() / "text_encoder";
  fs::create_directories(dir);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  T5EncoderModel::from_weights(tiny_t5(), T5Runtime{},
                               [&](const std::string& name, const std::vector<int64_t>& s, at::ScalarType) {
                                 tensors.emplace_back(name, t5_weight(name, s, at::kBFloat16));
                                 return tensors.back().second;
                               });
  save_safetensors(dir / "model.safetensors", tensors);
  const auto c = tiny_t5();
  nlohmann::json j = {{"vocab_size", c.vocab_size}, {"d_model", c.d_model}, {"d_kv", c.d_kv}, {"d_ff", c.d_ff},
                      {"num_layers", c.num_layers}, {"num_heads", c.num_heads},
                      {"relative_attention_num_buckets", c.relative_attention_num_buckets},
                      {"relative_attention_max_distance", c.relative_attention_max_distance},
                      {"feed_forward_proj", c.feed_forward_proj}};
  std::ofstream(dir / "config.json") << j.dump();

  T5Runtime runtime;
  runtime.dtype = at::kBFloat16;
  const auto resident = load_t5_encoder(dir, runtime);
  const auto streamed = load_streamed_t5_encoder(dir, runtime, c10::kCPU);
  CHECK(streamed.streamed_blocks);
  CHECK_FALSE(resident.streamed_blocks);
  CHECK(streamed.block[2].wo.scalar_type() == at::kBFloat16);
  CHECK(at::equal(streamed.forward(tiny_ids()), resident.forward(tiny_ids())));
  runtime.device = c10::kMeta;
  CHECK_THROWS_WITH(load_t5_encoder(dir, runtime, std::nullopt, /*pinned_memory=*/true),
                    ltxmps_test::Contains("pinned_memory loads into host memory"));
  (void)remove_tree(work_dir());
}

TEST_CASE("the embedded default streams its T5 where the weight plan says so", "[t5_streaming]") {
  auto plan = ltxmps::resolve(ltxmps::LoaderSettings{}, ltxmps::Capabilities::cpu_only());
  const auto resident = make_embedded_default_model(plan);
  // The CPU never plans T5 streaming (Note [Weight budget]); a plan that says so is written by hand here.
  plan.weights.planned = true;
  plan.weights.text_encoder.mode = ltxmps::WeightMode::streamed;
  const auto streamed = make_embedded_default_model(plan);
  REQUIRE(streamed.text_encoder);
  CHECK(streamed.text_encoder->streamed_blocks);
  const auto a = embedded_default_prompt_embeddings(resident, {"a red fox"}, {""}, 16, true);
  const auto b = embedded_default_prompt_embeddings(streamed, {"a red fox"}, {""}, 16, true);
  CHECK(at::equal(a.prompt_embeds, b.prompt_embeds));
  CHECK(at::equal(a.negative_prompt_embeds, b.negative_prompt_embeds));
}

TEST_CASE("T5 sizes from the config match the model; a budget that streams T5 shapes the estimate", "[t5_streaming]") {
  TransformerConfig transformer;
  transformer.num_layers = 2;
  transformer.attention_head_dim = 16;
  transformer.num_attention_heads = 2;
  transformer.cross_attention_dim = 32;
  transformer.caption_channels = 1024;
  // A wide T5 (6 GiB of float32 weights, built on the meta device only) beside a tiny transformer.
  T5Config t5 = tiny_t5();
  t5.d_model = 2048, t5.d_ff = 8192, t5.num_heads = 32, t5.d_kv = 64, t5.num_layers = 24;
  MemoryRequest request;
  request.frames = 9, request.height = 64, request.width = 64;
  const uint64_t card = uint64_t{80} << 30;
  auto plan = ltxmps::resolve(ltxmps::LoaderSettings{}, ltxmps::Capabilities::cuda(1, 8, 9, card));
  const auto sizes = weight_sizes(transformer, VaeConfig{}, t5, plan, request);
  auto meta = t5_runtime(plan);
  meta.device = c10::kMeta;
  auto built = T5EncoderModel::from_weights(t5, meta, [](const std::string&, const std::vector<int64_t>& s,
                                                         at::ScalarType d) {
    return at::empty(s, at::TensorOptions().device(c10::kMeta).dtype(d));
  });
  CHECK(sizes.text_encoder_blocks == 24);
  CHECK(sizes.text_encoder_block_bytes == t5_block_bytes(built.block[0]));
  CHECK(sizes.text_encoder - sizes.text_encoder_blocks_bytes ==
        static_cast<int64_t>(built.shared.nbytes() + built.final_layer_norm.nbytes()));

  // A budget between the text encoder's phase with T5 streamed and with T5 whole (the VAE's phases below it): offload
  // on, T5 streamed.
  const auto streamed_t5 = sizes.text_encoder - sizes.text_encoder_blocks_bytes + sizes.text_encoder_block_bytes;
  ltxmps::LoaderSettings settings;
  settings.max_device_memory =
      static_cast<uint64_t>(std::max({streamed_t5 + sizes.text_encoder_activations, sizes.transformer_activations,
                                      sizes.vae + sizes.vae_activations}) +
                            (sizes.text_encoder - streamed_t5) / 2);
  REQUIRE(static_cast<int64_t>(settings.max_device_memory) < sizes.text_encoder + sizes.text_encoder_activations);
  plan = ltxmps::resolve(settings, ltxmps::Capabilities::cuda(1, 8, 9, card));
  plan_model_weights(plan, transformer, VaeConfig{}, t5, request);
  REQUIRE(plan.weights.fits);
  CHECK(plan.offload.enabled);
  CHECK(plan.weights.text_encoder.mode == ltxmps::WeightMode::streamed);
  CHECK(plan.weights.text_encoder.device_bytes == streamed_t5);
  // The estimate counts what the plan puts on the device: T5's non-block weights and one block.
  const auto estimate = estimate_request_memory(transformer, VaeConfig{}, t5, plan, request);
  REQUIRE_FALSE(estimate.phases.empty());
  CHECK(estimate.phases.front().name == "text encoder");
  CHECK(estimate.phases.front().weights_bytes == streamed_t5 + plan.weights.transformer.ring_bytes);
  CHECK(estimate.host_bytes == estimate.weights_bytes);  // under offload every weight waits in host memory
}
