// Streamed transformer blocks (Note [Streamed weights]) with the CPU as both host and device: the streamed forward
// equals the resident one bit for bit for every ring size (FP8-stored blocks included), the ring's schedule, a
// checkpoint loaded for streaming, the errors; and the weight plan's sizes (weight_plan.hpp) against the model.
#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/fp8.hpp"
#include "ltxmps_pipeline/memory_estimate.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/weight_plan.hpp"
#include "ltxmps_pipeline/weight_streaming.hpp"

#include "tiny_models.hpp"

#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

using namespace ltxmps::pipeline;
using ltxmps_test::Contains;
using ltxmps_test::random_weight;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kFrames = 2, kHeight = 3, kWidth = 4, kTokens = kFrames * kHeight * kWidth;

TransformerConfig tiny_config(int64_t layers = 3) {
  auto c = ltxmps_test::tiny_transformer_config(/*channels=*/8, /*heads=*/2, /*head_dim=*/8, layers,
                                                /*caption_channels=*/12);
  c.norm_elementwise_affine = true;  // norm1/norm2 weights: more tensors per block
  return c;
}

TransformerModel tiny_model(int64_t layers = 3, LinearMode linears = LinearMode::dense) {
  TransformerRuntime runtime;
  runtime.block_linears = linears;
  return ltxmps_test::tiny_transformer(tiny_config(layers), runtime);
}

// Batch 2 (as under guidance), per-token timesteps, two masked text tokens.
TransformerInputs tiny_inputs() {
  auto in = ltxmps_test::tiny_transformer_inputs(tiny_config(), /*seed=*/11, /*batch=*/2, {kFrames, kHeight, kWidth},
                                                 /*text_len=*/5, /*masked=*/2);
  in.timestep = at::rand({2, kTokens}).mul(1000);
  return in;
}

// The same weights (shared storage until streaming moves them), streamed on the CPU.
TransformerModel streamed_copy(const TransformerModel& model, int64_t blocks_ahead) {
  TransformerModel copy = model;
  stream_transformer_blocks(copy, c10::kCPU, blocks_ahead);
  return copy;
}

void write_transformer_folder(const fs::path& dir, const TransformerConfig& config) {
  fs::create_directories(dir);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  TransformerModel::from_weights(config, TransformerRuntime{}, [&](const std::string& name, const std::vector<int64_t>& s) {
    tensors.emplace_back(name, random_weight(name, s).to(at::kBFloat16));  // stored bf16, loaded as float32
    return tensors.back().second;
  });
  save_safetensors(dir / "diffusion_pytorch_model.safetensors", tensors);
  nlohmann::json j = {{"_class_name", "LTXVideoTransformer3DModel"}, {"in_channels", config.in_channels},
                      {"out_channels", config.out_channels}, {"num_attention_heads", config.num_attention_heads},
                      {"attention_head_dim", config.attention_head_dim},
                      {"cross_attention_dim", config.cross_attention_dim}, {"num_layers", config.num_layers},
                      {"caption_channels", config.caption_channels},
                      {"norm_elementwise_affine", config.norm_elementwise_affine}};
  std::ofstream(dir / "config.json") << j.dump();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("streamed forward equals the resident forward bit for bit, ring sizes 1 to 3", "[streaming]") {
  const auto model = tiny_model();
  const auto in = tiny_inputs();
  const auto reference = model.forward(in);
  for (int64_t ahead : {0, 1, 2}) {
    INFO("blocks ahead " << ahead);
    auto streamed = streamed_copy(model, ahead);
    REQUIRE(streamed.streamer);
    CHECK(streamed.streamer->ring_blocks() == ahead + 1);
    CHECK(streamed.streamer->blocks_ahead() == ahead);
    CHECK(streamed.streamer->block_count() == 3);
    const auto out = streamed.forward(in);
    CHECK(at::equal(out, reference));
    CHECK(streamed.streamer->copies_issued() == 3);  // each block crosses once per forward
    // A second pass refills the ring from block 0 and gives the same bits.
    CHECK(at::equal(streamed.forward(in), reference));
    CHECK(streamed.streamer->copies_issued() == 6);
    // After a pass the ring holds the last blocks: block b in slot b % ring.
    std::vector<int64_t> expected(static_cast<size_t>(ahead + 1));
    for (int64_t b = 3 - (ahead + 1); b < 3; ++b) expected[static_cast<size_t>(b % (ahead + 1))] = b;
    CHECK(streamed.streamer->slot_blocks() == expected);
    // The ring holds ring_blocks blocks' bytes, the host blocks stay where they were.
    CHECK(streamed.streamer->ring_bytes() == (ahead + 1) * block_bytes(streamed.transformer_blocks[0]));
    // Parked (the transformer off its device under offload) the ring is freed; the next pass allocates and
    // refills it with the same bits.
    streamed.streamer->park();
    CHECK_FALSE(streamed.streamer->ring_allocated());
    CHECK(streamed.streamer->slot_blocks() == std::vector<int64_t>(static_cast<size_t>(ahead + 1), -1));
    CHECK(at::equal(streamed.forward(in), reference));
    CHECK(streamed.streamer->ring_allocated());
  }
}

TEST_CASE("blocks ahead beyond the block count: the ring holds every block once", "[streaming]") {
  const auto model = tiny_model(2);
  const auto in = tiny_inputs();
  auto streamed = streamed_copy(model, 5);
  CHECK(streamed.streamer->ring_blocks() == 2);
  CHECK(streamed.streamer->blocks_ahead() == 1);
  CHECK(at::equal(streamed.forward(in), model.forward(in)));
  // One block: a ring of one.
  const auto single = tiny_model(1);
  auto one = streamed_copy(single, 3);
  CHECK(one.streamer->ring_blocks() == 1);
  CHECK(at::equal(one.forward(in), single.forward(in)));
}

TEST_CASE("FP8-stored blocks stream too: their codes and scales are visited like any tensor", "[streaming]") {
  const auto model = tiny_model(3, LinearMode::fp8_storage);
  REQUIRE(model.transformer_blocks[0].attn1.to_q.weight_fp8.defined());
  const auto in = tiny_inputs();
  const auto reference = model.forward(in);
  auto streamed = streamed_copy(model, 1);
  CHECK(at::equal(streamed.forward(in), reference));
  auto slot_has_fp8 = false;
  streamed.streamer->for_each_block([&](int64_t, const TransformerBlockWeights& w) {
    slot_has_fp8 = w.attn1.to_q.weight_fp8.defined() && w.attn1.to_q.weight_fp8.scalar_type() == at::kFloat8_e4m3fn &&
                   w.ff_net_2.weight_scale.defined();
  });
  CHECK(slot_has_fp8);
}

TEST_CASE("attention capture and a streamed model: the same maps", "[streaming]") {
  const auto model = tiny_model();
  const auto in = tiny_inputs();
  auto streamed = streamed_copy(model, 2);
  std::map<int64_t, at::Tensor> resident_maps, streamed_maps;
  const auto resident_capture = head_mean_capture({0, 2}, {0, kTokens}, {0, kTokens}, resident_maps, 7);
  const auto streamed_capture = head_mean_capture({0, 2}, {0, kTokens}, {0, kTokens}, streamed_maps, 7);
  model.forward(in, &resident_capture);
  streamed.forward(in, &streamed_capture);
  REQUIRE(streamed_maps.size() == 2);
  for (int64_t layer : {0, 2}) CHECK(at::equal(streamed_maps.at(layer), resident_maps.at(layer)));
}

TEST_CASE("a checkpoint loaded for streaming equals the resident load", "[streaming]") {
  const auto dir = fs::temp_directory_path() / ("ltxmps_streaming_" + std::to_string(::getpid())) / "transformer";
  remove_tree(dir.parent_path());
  write_transformer_folder(dir, tiny_config());
  TransformerRuntime runtime;  // float32 on the CPU: the bf16 checkpoint is converted on the way in
  const auto resident = load_transformer(dir, runtime);
  const auto streamed = load_streamed_transformer(dir, runtime, c10::kCPU, 1);
  REQUIRE(streamed.streamer);
  CHECK(streamed.streamer->ring_blocks() == 2);
  CHECK(streamed.transformer_blocks[0].attn1.to_q.weight.scalar_type() == at::kFloat);
  const auto in = tiny_inputs();
  CHECK(at::equal(streamed.forward(in), resident.forward(in)));
  const auto d = streaming_diagnostic(streamed);
  CHECK(d.rule == "weights.streaming");
  CHECK_THAT(d.message, ltxmps_test::ContainsAll({"3 blocks of", "host memory, streamed to cpu 1 block ahead",
                                                  "2 block buffers"}));
  remove_tree(dir.parent_path());
}

TEST_CASE("move_model keeps a streamed model's blocks in host memory", "[streaming]") {
  auto streamed = streamed_copy(tiny_model(), 1);
  move_model(streamed, c10::Device(c10::kMeta));
  CHECK(streamed.proj_in.weight.is_meta());
  CHECK(streamed.runtime.device.is_meta());
  bool blocks_on_host = true;
  for (auto& b : streamed.transformer_blocks)
    for_each_tensor(b, [&](at::Tensor& t) { blocks_on_host = blocks_on_host && (!t.defined() || t.is_cpu()); });
  CHECK(blocks_on_host);
  // The forward refuses to run blocks streamed to the CPU on another device.
  CHECK_THAT(error_of([&] { streamed.forward(tiny_inputs()); }),
             ltxmps_test::ContainsAll({"blocks stream to cpu", "the model runs on meta"}));
  unstream_transformer_blocks(streamed);
  CHECK_FALSE(streamed.streamer);
  CHECK(streamed.transformer_blocks[1].ff_net_2.weight.is_meta());
}

TEST_CASE("BlockStreamer errors name what is wrong", "[streaming]") {
  auto model = tiny_model();
  CHECK_THAT(error_of([&] { BlockStreamer({}, BlockStreamOptions{}); }), Contains("no blocks to stream"));
  CHECK_THAT(error_of([&] { BlockStreamer(model.transformer_blocks, BlockStreamOptions{c10::kCPU, -1}); }),
             Contains("blocks_ahead must be >= 0, got -1"));
  CHECK_THAT(error_of([&] { BlockStreamer(model.transformer_blocks, BlockStreamOptions{c10::Device(c10::kMeta), 1}); }),
             Contains("not to meta"));
  auto odd = model.transformer_blocks;
  odd[2].ff_net_2.bias = at::zeros({3});
  CHECK_THAT(error_of([&] { BlockStreamer(odd, BlockStreamOptions{}); }),
             ltxmps_test::ContainsAll({"of block 2 is [3] Float but block 0's is [16] Float", "the same tensors"}));
  odd = model.transformer_blocks;
  odd[1].attn2.norm_k_weight = odd[1].attn2.norm_k_weight.to(c10::kMeta);
  CHECK_THAT(error_of([&] { BlockStreamer(odd, BlockStreamOptions{}); }),
             ltxmps_test::ContainsAll({"of block 1 is on meta", "host memory"}));
#if !defined(LTXMPS_WITH_CUDA)
  CHECK_THAT(error_of([&] { BlockStreamer(model.transformer_blocks, BlockStreamOptions{c10::Device("cuda:0"), 1}); }),
             Contains("no CUDA streams"));
#endif
  stream_transformer_blocks(model, c10::kCPU, 1);
  CHECK_THAT(error_of([&] { stream_transformer_blocks(model, c10::kCPU, 1); }), Contains("streamed already"));
}

TEST_CASE("weight sizes from the configs match the built model; the estimate follows the weight plan", "[streaming]") {
  ltxmps::LoaderSettings settings;
  settings.device = "cpu";
  settings.precision = ltxmps::Precision::fp32;
  auto plan = ltxmps::resolve(settings, ltxmps::Capabilities::cpu_only());
  const auto config = tiny_config();
  MemoryRequest request;
  request.frames = 9, request.height = 64, request.width = 64;
  const auto sizes = weight_sizes(config, VaeConfig{}, std::nullopt, plan, request);
  auto model = tiny_model();
  int64_t bytes = 0;
  for_each_tensor(model, [&](at::Tensor& t) { bytes += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0; });
  CHECK(sizes.transformer.bytes == bytes);
  CHECK(sizes.transformer.blocks == 3);
  CHECK(sizes.transformer.block_bytes == block_bytes(model.transformer_blocks[0]));
  auto fp8 = tiny_model(3, LinearMode::fp8_storage);
  CHECK(sizes.transformer.fp8_block_bytes == block_bytes(fp8.transformer_blocks[0]));
  CHECK(sizes.transformer.fp8_block_bytes < sizes.transformer.block_bytes);
  CHECK(sizes.text_encoder == 0);
  CHECK(sizes.transformer_activations > 0);
  CHECK(sizes.vae_activations > 0);
  CHECK(sizes.transformer.dtype == "float32");

  // The 13B shapes on a simulated 24 GB card: the blocks stream, and the estimate counts only the ring on the
  // device and the whole transformer in host memory.
  TransformerConfig t13;
  t13.num_layers = 48;
  t13.attention_head_dim = 128;
  t13.cross_attention_dim = 4096;
  ltxmps::LoaderSettings cuda;
  auto p13 = ltxmps::resolve(cuda, ltxmps::Capabilities::cuda(1, 8, 9, uint64_t{24} << 30));
  MemoryRequest r13;
  r13.encode_text = false;
  const auto unplanned = estimate_request_memory(t13, VaeConfig{}, std::nullopt, p13, r13);
  const auto s13 = weight_sizes(t13, VaeConfig{}, std::nullopt, p13, r13);
  plan_model_weights(p13, t13, VaeConfig{}, std::nullopt, r13);
  REQUIRE(p13.weights.planned);
  CHECK(p13.weights.transformer.mode == ltxmps::WeightMode::streamed);
  CHECK(p13.weights.transformer.ring_blocks == 3);
  const auto planned = estimate_request_memory(t13, VaeConfig{}, std::nullopt, p13, r13);
  const auto loop = [](const MemoryEstimate& e) {
    for (const auto& p : e.phases)
      if (p.name == "transformer loop") return p;
    return MemoryPhase{};
  };
  CHECK(loop(planned).weights_bytes < loop(unplanned).weights_bytes);
  CHECK(loop(planned).activation_bytes == loop(unplanned).activation_bytes);
  CHECK(planned.host_bytes == s13.transformer.bytes);  // the blocks wait in pinned host memory
  CHECK(p13.weights.transformer.device_bytes == s13.transformer.bytes - 45 * s13.transformer.block_bytes);
  // The figures the policy suite computes by hand for the 13B model (test_memory_budget.cpp).
  const int64_t D = 4096;
  CHECK(s13.transformer.block_bytes == 2 * (16 * D * D + 23 * D));
  CHECK(s13.transformer.bytes == 48 * s13.transformer.block_bytes + 2 * (8 * D * D + 4621 * D + 128));
  CHECK(s13.transformer.fp8_block_bytes == 16 * D * D + 4 * 13 * D + 2 * 23 * D);
}
