// The transformer forward as a CUDA graph (Note [CUDA graphs for the denoising step]): a replay equals the eager
// forward bit for bit for new inputs at every call (bf16, unfused, FP8 storage, FP8 matmul, FP8 attention), a
// result is not overwritten by the next replay, a new input signature is warmed up and captured again, replays
// queue no host synchronization, the graph's pool holds no more than one forward needs, and a whole generation
// with graphs gives the frames of one without. Without CUDA the suite reports SKIPPED (exit code 77) with its
// reason.
#define CATCH_CONFIG_RUNNER  // Catch2 v2: this file provides main() (v3 ignores the macro)
#include "catch_compat.hpp"
#if LTXMPS_CATCH_V3
#include <catch2/catch_session.hpp>
#endif

#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/transformer_graph.hpp"

#include "gpu/no_host_sync.hpp"
#include "gpu/random_weight.hpp"

#include <ltxmps/ltxmps.hpp>
#include <ltxmps_kernels/fp8_attention.hpp>

#if defined(LTXMPS_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#endif

#include <array>
#include <cmath>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

using namespace ltxmps::pipeline;

namespace {

const c10::Device kCuda("cuda:0");
constexpr int64_t kFrames = 4, kHeight = 8, kWidth = 8;

TransformerConfig config(int64_t layers = 4) {
  TransformerConfig c;
  c.in_channels = 16;
  c.out_channels = 16;
  c.num_attention_heads = 8;
  c.attention_head_dim = 64;
  c.cross_attention_dim = 512;
  c.num_layers = layers;
  c.caption_channels = 64;
  return c;
}

using ltxmps_test::random_weight;

TransformerModel cuda_model(LinearMode linears = LinearMode::dense, bool fused = true, bool fp8_attention = false,
                            int64_t layers = 4) {
  TransformerRuntime runtime;
  runtime.device = kCuda;
  runtime.dtype = at::kBFloat16;
  runtime.block_linears = linears;
  runtime.fused_kernels = fused;
  runtime.fp8_attention = fp8_attention;
  return TransformerModel::from_weights(config(layers), runtime, random_weight);
}

// The inputs of call `i`: new latents and timesteps every call, as in a denoising loop; the text stays. `frames`
// latent frames of kHeight x kWidth tokens.
TransformerInputs inputs(int64_t i, bool per_token = false, int64_t frames = kFrames) {
  const auto c = config();
  const int64_t tokens = frames * kHeight * kWidth;
  auto g = ltxmps::make_cpu_generator(100 + static_cast<uint64_t>(i));
  TransformerInputs in;
  in.hidden_states = ltxmps::randn({2, tokens, c.in_channels}, g).to(kCuda, at::kBFloat16);
  auto text = ltxmps::make_cpu_generator(3);
  in.encoder_hidden_states = ltxmps::randn({2, 16, c.caption_channels}, text).to(kCuda, at::kBFloat16);
  const double t = 1000.0 - 90.0 * static_cast<double>(i);
  in.timestep = per_token ? at::full({2, tokens}, t, at::TensorOptions().device(kCuda))
                          : at::full({2, 1}, t, at::TensorOptions().device(kCuda));
  auto mask = at::ones({2, 16}, at::TensorOptions().device(kCuda));
  mask.narrow(1, 12, 4).zero_();
  in.encoder_attention_mask = mask;
  in.num_frames = frames;
  in.height = kHeight;
  in.width = kWidth;
  in.rope_interpolation_scale = {8.0 / 25.0, 32.0, 32.0};
  return in;
}

}  // namespace

TEST_CASE("a replayed forward equals the eager forward bit for bit, with new inputs at every call", "[gpu][graphs]") {
  struct Variant {
    const char* name;
    LinearMode linears;
    bool fused, fp8_attention;
  };
  std::vector<Variant> variants{{"bf16 fused", LinearMode::dense, true, false},
                                {"bf16 unfused (ATen references)", LinearMode::dense, false, false},
                                {"FP8 storage", LinearMode::fp8_storage, true, false}};
  const auto* info = ltxmps::cuda_info(ltxmps::current_capabilities(), kCuda);
  if (info && info->supports_fp8_matmul()) variants.push_back({"FP8 matmul", LinearMode::fp8_matmul, true, false});
  else WARN("FP8 matmul not checked: cuda:0 is below sm_89");
  const auto fp8_attention = ltxmps::kernels::fp8_attention_unsupported(kCuda, 8, 64);
  if (fp8_attention.empty())
    variants.push_back({"FP8 matmul + FP8 attention", LinearMode::fp8_matmul, true, true});
  else
    WARN("FP8 attention not checked: " << fp8_attention);
  for (const auto& v : variants) {
    INFO(v.name);
    const auto model = cuda_model(v.linears, v.fused, v.fp8_attention);
    TransformerGraph graph(model);
    at::Tensor first_replay, first_replay_copy;
    for (int64_t i = 0; i < 5; ++i) {
      INFO("call " << i);
      const auto in = inputs(i);
      const auto out = graph.forward(in);
      CHECK(at::equal(out, model.forward(in)));
      if (i == 2) {
        first_replay = out;
        first_replay_copy = out.clone();
      }
    }
    CHECK(graph.capture_failure().empty());
    CHECK(graph.eager_forwards() == 1);  // the warm-up
    CHECK(graph.replays() == 4);         // the capture's call and three more
    CHECK(at::equal(first_replay, first_replay_copy));  // later replays wrote into the graph's buffer, not into it
    CHECK_FALSE(at::equal(first_replay, graph.forward(inputs(7))));
  }
}

TEST_CASE("a new input signature is warmed up and captured again; switches off, every call is eager", "[gpu][graphs]") {
  const auto model = cuda_model();
  TransformerGraph graph(model);
  for (int64_t i = 0; i < 3; ++i) CHECK(at::equal(graph.forward(inputs(i)), model.forward(inputs(i))));
  CHECK(graph.replays() == 2);
  // Per-token timesteps (the condition pipeline's): another signature.
  for (int64_t i = 0; i < 3; ++i) CHECK(at::equal(graph.forward(inputs(i, true)), model.forward(inputs(i, true))));
  CHECK(graph.eager_forwards() == 2);
  CHECK(graph.replays() == 4);
  // Another RoPE scale is another graph too (it is a constant of the captured kernels).
  auto other = inputs(1);
  other.rope_interpolation_scale = {1.0, 32.0, 32.0};
  CHECK(at::equal(graph.forward(other), model.forward(other)));
  CHECK(graph.eager_forwards() == 3);

#if defined(LTXMPS_WITH_CUDA)
  // Calls from other streams of the caller's: each replay waits for the one before it (another signature again).
  for (int64_t i = 3; i < 7; ++i) {
    const c10::cuda::CUDAStreamGuard other(c10::cuda::getStreamFromPool(false, 0));
    CHECK(at::equal(graph.forward(inputs(i)), model.forward(inputs(i))));
  }
  CHECK(graph.eager_forwards() == 4);
#endif

  TransformerGraph off(model, /*enabled=*/false);
  for (int64_t i = 0; i < 3; ++i) CHECK(at::equal(off.forward(inputs(i)), model.forward(inputs(i))));
  CHECK(off.replays() == 0);
  CHECK(off.eager_forwards() == 3);
}

#if defined(LTXMPS_WITH_CUDA)
namespace {
int64_t reserved() { return ltxmps::memory_stats(kCuda).reserved.value_or(-1); }
}  // namespace

TEST_CASE("replays queue no host synchronization; the graph holds no more memory than one forward", "[gpu][graphs]") {
  // 2 x 6144 tokens (the 2B's video shape) through 2 narrow blocks: the activations, not the weights or the
  // libraries' workspaces, are what the device holds.
  constexpr int64_t frames = 96;
  const auto model = cuda_model(LinearMode::dense, true, false, 2);
  model.forward(inputs(0, false, frames));  // cuBLAS's workspace and cuDNN's plans for the default stream
  ltxmps::release_memory(kCuda);
  for (int64_t i = 0; i < 2; ++i) model.forward(inputs(i, false, frames));
  torch::cuda::synchronize();
  const int64_t eager = reserved();
  ltxmps::release_memory(kCuda);
  TransformerGraph graph(model);
  graph.forward(inputs(0, false, frames));  // warm-up
  graph.forward(inputs(1, false, frames));  // capture
  const auto in = inputs(2, false, frames);
  torch::cuda::synchronize();
  at::Tensor out;
  {
    const ltxmps_test::NoHostSync strict;
    out = graph.forward(in);
  }
  torch::cuda::synchronize();
  const int64_t graphed = reserved();  // before the eager forward below fills the cache again
  CHECK(at::equal(out, model.forward(in)));
  // The graph's stream has workspaces of its own (cuBLAS keeps one per stream): 64 MiB for them. Without the
  // emptied cache before the capture, the warm-up's blocks would stay beside the pool: about twice the activations.
  INFO("reserved after eager forwards " << eager << " B, with the graph " << graphed << " B");
  CHECK(graphed <= eager + eager / 4 + (int64_t{64} << 20));
}

TEST_CASE("loop after loop, the graphs share one stream: the device memory held does not grow", "[gpu][graphs]") {
  const auto model = cuda_model();
  std::vector<int64_t> after;
  for (int loop = 0; loop < 4; ++loop) {
    {
      TransformerGraph graph(model);
      for (int64_t i = 0; i < 3; ++i) graph.forward(inputs(i));
      CHECK(graph.replays() == 2);
    }
    ltxmps::release_memory(kCuda);
    after.push_back(reserved());
  }
  // A stream of its own for each loop would leave that stream's cuBLAS workspace behind every time.
  INFO("reserved after each loop: " << after[0] << ", " << after[1] << ", " << after[2] << ", " << after[3] << " B");
  CHECK(after[3] <= after[1]);
}
#endif

TEST_CASE("loops on two threads at once share the graph stream: every replay is still the eager forward",
          "[gpu][graphs]") {
  const auto model = cuda_model();
  std::vector<at::Tensor> expected;
  for (int64_t i = 0; i < 12; ++i) expected.push_back(model.forward(inputs(i)));
  torch::cuda::synchronize();
  std::array<std::vector<bool>, 2> same;
  std::array<std::string, 2> failure;
  std::array<int64_t, 2> replays{};
  auto loop = [&](int t) {
    try {
      TransformerGraph graph(model);
      for (int64_t i = t; i < 12; i += 2) same[t].push_back(at::equal(graph.forward(inputs(i)), expected[i]));
      replays[t] = graph.replays();
    } catch (const std::exception& e) {
      failure[t] = e.what();
    }
  };
  std::thread first(loop, 0), second(loop, 1);
  first.join();
  second.join();
  for (int t = 0; t < 2; ++t) {
    INFO("thread " << t << ": " << failure[t]);
    CHECK(failure[t].empty());
    CHECK(same[t] == std::vector<bool>(6, true));
    CHECK(replays[t] == 5);
  }
}

TEST_CASE("a generation with CUDA graphs gives the frames of one without, and says how its steps ran",
          "[gpu][graphs]") {
  ltxmps::LoaderSettings s;
  s.device = "cuda";
  s.precision = ltxmps::Precision::bf16;
  const auto with = ltxmps::resolve(s);
  REQUIRE(with.graphs.denoise_step);
  s.cuda_graphs = false;
  const auto without = ltxmps::resolve(s);
  REQUIRE_FALSE(without.graphs.denoise_step);
  GenerateRequest r;
  r.height = r.width = 64;
  r.num_frames = 9;
  r.num_inference_steps = 4;
  r.max_sequence_length = 16;
  r.prompts = {"a red fox running through snow"};
  std::vector<std::string> messages;
  const ltxmps::DiagnosticSink sink = [&](const ltxmps::Diagnostic& d) {
    if (d.topic == "graphs") messages.push_back(std::string(d.rule) + ": " + d.message);
  };
  auto model = make_embedded_default_model(with);
  const auto graphed = generate(model, r, with, sink);
  REQUIRE(messages.size() == 1);
  CHECK_THAT(messages[0], ltxmps_test::Contains("graphs.replayed: denoise: the transformer forward ran 1 time(s) op by "
                                                "op and 3 time(s) as a CUDA graph replay"));
  messages.clear();
  auto plain_model = make_embedded_default_model(without);
  const auto plain = generate(plain_model, r, without, sink);
  CHECK(messages.empty());
  CHECK(at::equal(graphed.latents, plain.latents));
  CHECK(at::equal(graphed.frames, plain.frames));
}

int main(int argc, char* argv[]) {
  if (!torch::cuda::is_available()) {
    std::cout << "SKIPPED: no CUDA device on this machine (torch::cuda::is_available() is false); "
                 "CUDA graphs are tested on the GPU machine\n";
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
