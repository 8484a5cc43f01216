// The stage layer without an oracle: every weight a loader creates is reached by the model's tensor visitor (so a
// move, an offload or a cast leaves none behind), the plan -> runtime rules, LatentGrid's sizes and errors, the
// pipeline choice, the progress reports of a run, the synthetic removal clip, the conditioning masks' timestep
// rows and the removal inputs' mapping.
#include "ltxmps/plan.hpp"
#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/removal.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/synthetic_clip.hpp"
#include "ltxmps_pipeline/transformer_graph.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

using namespace ltxmps::pipeline;
using ltxmps_test::Contains;

namespace {

ltxmps::ExecutionPlan cpu_plan() {
  ltxmps::LoaderSettings s;
  s.device = "cpu";
  s.precision = ltxmps::Precision::fp32;
  return ltxmps::resolve(s, ltxmps::Capabilities::cpu_only());
}

/// The embedded default at 64x64x9 with two steps.
GenerateRequest small_request() {
  GenerateRequest r;
  r.height = r.width = 64;
  r.num_frames = 9;
  r.num_inference_steps = 2;
  r.max_sequence_length = 16;
  return r;
}

/// A weight source that counts what it hands out.
template <typename... Extra>
auto counting(int64_t& count) {
  return [&count](const std::string&, const std::vector<int64_t>& shape, Extra...) {
    ++count;
    return at::zeros(shape);
  };
}

}  // namespace

TEST_CASE("for_each_tensor reaches every weight the loader created", "[stages]") {
  const auto plan = cpu_plan();
  int64_t created = 0;
  auto transformer = TransformerModel::from_weights(EmbeddedDefault::transformer_config(), transformer_runtime(plan),
                                                    counting<>(created));
  CHECK(count_tensors(transformer) == created);
  created = 0;
  auto vae = VaeModel::from_weights(EmbeddedDefault::vae_config(), vae_runtime(plan), counting<>(created));
  CHECK(count_tensors(vae) == created);
  created = 0;
  auto t5 = T5EncoderModel::from_weights(EmbeddedDefault::text_encoder_config(), t5_runtime(plan),
                                         counting<at::ScalarType>(created));
  CHECK(count_tensors(t5) == created);
  // A move leaves every tensor where it was asked to go (meta: no memory, any machine).
  move_model(transformer, c10::Device(c10::kMeta));
  bool all_moved = true;
  for_each_tensor(transformer, [&](at::Tensor& t) { all_moved = all_moved && (!t.defined() || t.is_meta()); });
  CHECK(all_moved);
  CHECK(transformer.runtime.device.is_meta());
}

TEST_CASE("runtime_for: one source for each component's device and dtypes", "[stages]") {
  ltxmps::LoaderSettings s;
  s.device = "cpu";
  s.precision = ltxmps::Precision::fp16;
  const auto plan = ltxmps::resolve(s, ltxmps::Capabilities::cpu_only());
  CHECK(transformer_runtime(plan).dtype == at::kHalf);
  CHECK(vae_runtime(plan).dtype == at::kFloat);  // vae_float32 by default
  CHECK(t5_runtime(plan).keep_in_fp32_modules == std::vector<std::string>{"wo"});
  CHECK(t5_runtime(plan).keep_in_fp32_modules == plan.precision.text_encoder.keep_in_fp32_modules);
  CHECK(home_device(plan) == execution_device(plan));
}

// An offloaded VAE is loaded at its home, the CPU, with the channels-last weights that the CUDA execution uses; a
// channels-last VAE refuses to run on anything but CUDA (the CPU's convolutions would copy every weight back).
TEST_CASE("vae_runtime: channels-last from a CUDA plan, kept at an offload home, refused off CUDA", "[stages]") {
  ltxmps::LoaderSettings s;
  s.cpu_offload = true;
  const auto plan = ltxmps::resolve(s, ltxmps::Capabilities::cuda(1, 9, 0, 80ull << 30));
  REQUIRE(plan.offload.enabled);
  const auto runtime = vae_runtime(plan);
  CHECK(runtime.channels_last);
  CHECK(runtime.device.is_cpu());
  int64_t created = 0;
  const auto vae = VaeModel::from_weights(EmbeddedDefault::vae_config(), runtime, counting<>(created));
  CHECK(vae.decoder.conv_in.weight.is_contiguous(at::MemoryFormat::ChannelsLast3d));
  CHECK_FALSE(vae.decoder.conv_in.weight.is_contiguous());
  const auto latents = at::zeros({1, EmbeddedDefault::vae_config().latent_channels, 2, 2, 2});
  CHECK_THROWS_WITH(vae.decode(latents), Contains("vae decode: VaeRuntime::channels_last is for CUDA"));
  CHECK_THROWS_WITH(vae.encode(at::zeros({1, 3, 9, 64, 64})),
                    Contains("vae encode: VaeRuntime::channels_last is for CUDA"));

  s.vae_channels_last = false;
  CHECK_FALSE(vae_runtime(ltxmps::resolve(s, ltxmps::Capabilities::cuda(1, 9, 0, 80ull << 30))).channels_last);
  CHECK_FALSE(vae_runtime(cpu_plan()).channels_last);
}

TEST_CASE("vae_tiling: the plan's tiles and slices, as diffusers' enable_tiling() and enable_slicing()", "[stages]") {
  ltxmps::LoaderSettings s;
  s.device = "cpu";
  CHECK_FALSE(vae_tiling(ltxmps::resolve(s, ltxmps::Capabilities::cpu_only())).use_tiling);
  s.vae_tiling = true;
  s.vae_slicing = true;
  const auto t = vae_tiling(ltxmps::resolve(s, ltxmps::Capabilities::cpu_only()));
  VaeTiling defaults;
  defaults.enable_tiling();
  CHECK(t.use_tiling);
  CHECK(t.use_slicing);
  CHECK(t.tile_sample_min_height == defaults.tile_sample_min_height);
  CHECK(t.tile_sample_stride_width == defaults.tile_sample_stride_width);
  CHECK(defaults.tile_sample_min_height == 512);  // AutoencoderKLLTXVideo's
  CHECK(defaults.tile_sample_stride_height == 448);
}

TEST_CASE("LatentGrid: pixels, latents and tokens", "[stages]") {
  const auto vae = EmbeddedDefault::vae_config();  // 32 / 8
  auto transformer = EmbeddedDefault::transformer_config();
  const auto g = LatentGrid::make(vae, transformer, 17, 64, 96);
  CHECK(g.latent_frames() == 3);
  CHECK(g.latent_height() == 2);
  CHECK(g.latent_width() == 3);
  CHECK(g.tokens() == 18);
  const auto x = at::randn({1, 8, 3, 2, 3});
  CHECK(at::equal(g.unpack(g.pack(x)), x));
  const auto coords = g.rope_coords(1, c10::kCPU, 25.0);
  CHECK(coords.sizes() == at::IntArrayRef({1, 3, 18}));
  CHECK(std::abs(coords[0][0][6].item<float>() - 1.0f / 25.0f) < 1e-7f);  // latent frame 1 -> pixel frame 1 (causal shift)
  CHECK(std::abs(coords[0][0][12].item<float>() - 9.0f / 25.0f) < 1e-7f);
  CHECK_THROWS_WITH(LatentGrid::make(vae, transformer, 17, 60, 96, "remove"), Contains("remove: height and width (60x96)"));
  CHECK_THROWS_WITH(LatentGrid::make(vae, transformer, 16, 64, 96), Contains("use for example 9"));
  transformer.patch_size_t = 2;
  CHECK_THROWS_WITH(LatentGrid::make(vae, transformer, 17, 64, 96), Contains("patch_size_t 2"));
}

TEST_CASE("choose_pipeline follows the folder's class and the inputs", "[stages]") {
  LtxModel model;
  model.pipeline_class = "LTXPipeline";
  CHECK(choose_pipeline(model, false, false) == PipelineKind::text_to_video);
  CHECK(choose_pipeline(model, true, false) == PipelineKind::image_to_video);
  CHECK(choose_pipeline(model, false, true) == PipelineKind::condition);
  model.pipeline_class = "LTXConditionPipeline";
  CHECK(choose_pipeline(model, false, false) == PipelineKind::condition);
  CHECK(choose_pipeline(model, true, false) == PipelineKind::condition);
}

TEST_CASE("a run reports every long stage through one progress callback", "[stages]") {
  const auto plan = cpu_plan();
  auto model = make_embedded_default_model(plan);
  const auto r = small_request();
  std::vector<std::string> seen;
  generate(model, r, plan, ltxmps::null_sink(), [&](const Progress& p) {
    seen.push_back(p.stage + " " + std::to_string(p.done) + "/" + std::to_string(p.total));
  });
  CHECK(seen == std::vector<std::string>{"text encoder 0/1", "text encoder 1/1", "denoise 1/2", "denoise 2/2",
                                         "vae decode 0/1", "vae decode 1/1"});
  CHECK_FALSE(model.text_encoder->loaded());  // released before the loop
}

TEST_CASE("TransformerGraph off CUDA: every forward is the eager one, and the loop says nothing of graphs",
          "[stages][graphs]") {
  const auto plan = cpu_plan();
  auto model = make_embedded_default_model(plan);
  const auto& t = model.transformer;
  CHECK_FALSE(cuda_graph_unavailable(t).empty());
  at::manual_seed(7);
  TransformerInputs in;
  in.hidden_states = at::randn({2, 8, t.config.in_channels});
  in.encoder_hidden_states = at::randn({2, 5, t.config.caption_channels});
  in.timestep = at::tensor({900.0, 900.0});
  in.encoder_attention_mask = at::ones({2, 5});
  in.num_frames = 2;
  in.height = in.width = 2;
  TransformerGraph graph(t);
  for (int i = 0; i < 3; ++i) {
    in.timestep = in.timestep - 100.0;
    CHECK(at::equal(graph.forward(in), t.forward(in)));
  }
  CHECK(graph.replays() == 0);
  CHECK(graph.eager_forwards() == 3);
  CHECK(graph.capture_failure().empty());

  std::vector<std::string> rules;
  generate(model, small_request(), plan, [&](const ltxmps::Diagnostic& d) { rules.emplace_back(d.rule); });
  CHECK(std::find(rules.begin(), rules.end(), "graphs.replayed") == rules.end());
  CHECK(std::find(rules.begin(), rules.end(), "graphs.unavailable") == rules.end());
}

TEST_CASE("synthetic clip: an object, its shadow outside the object mask", "[stages]") {
  const auto clip = make_synthetic_clip(9, 64, 96, 0);
  CHECK(clip.video.sizes() == at::IntArrayRef({9, 3, 64, 96}));
  CHECK(clip.video.min().item<float>() >= 0);
  CHECK(clip.video.max().item<float>() <= 1);
  const auto shadow = clip.total_mask - clip.object_mask;
  CHECK(shadow.min().item<float>() >= 0);
  CHECK(shadow.sum().item<float>() > 0);
  CHECK(clip.object_mask.sum().item<float>() > 0);
  // The object moves: its first and last frames differ.
  CHECK_FALSE(at::equal(clip.object_mask[0], clip.object_mask[8]));
  CHECK(at::equal(clip.video, make_synthetic_clip(9, 64, 96, 0).video));
  CHECK_THROWS_WITH(make_synthetic_clip(0, 64, 96), Contains("synthetic clip"));
}

TEST_CASE("timestep rows: the per-token timesteps of a conditioning mask, value for value", "[stages]") {
  const auto plan = cpu_plan();
  auto model = make_embedded_default_model(plan);
  StageContext ctx(model, plan, ltxmps::null_sink(), {}, 0);
  FlowMatchEulerScheduler scheduler(model.scheduler);
  PromptBatch prompts;
  prompts.guidance = true;  // rows = 2: the mask is doubled for the CFG pair
  // Generated tokens (0), two conditions of strengths 0.8 and 0.9, and a fully kept one (1).
  const auto mask = at::tensor({0.0f, 0.8f, 0.8f, 0.0f, 0.9f, 1.0f, 0.0f, 0.9f}).unsqueeze(0);
  const auto hooks = condition_hooks(ctx, scheduler, prompts, TokenConditioning{mask, at::zeros({1, 8, 4}), 0.0});
  REQUIRE(static_cast<bool>(hooks.timestep_rows));
  for (const float t : {1000.0f, 937.5f, 150.0f, 0.0f}) {
    const DenoiseStep step{0, 1, at::tensor(t), t};
    const auto per_token = hooks.timestep(step);
    const auto [values, index] = hooks.timestep_rows(step);
    CHECK(values.sizes() == at::IntArrayRef({2, 4}));
    CHECK(index.scalar_type() == at::kInt);
    CHECK(at::equal(values.gather(1, index.to(at::kLong)), per_token));  // bit for bit
  }

  // More distinct values than rows are worth: per-token timesteps only.
  const auto ramp = at::linspace(0, 1, kMaxTimestepRows + 1).unsqueeze(0);
  CHECK_FALSE(mask_levels(ramp).has_value());
  CHECK_FALSE(static_cast<bool>(
      condition_hooks(ctx, scheduler, prompts, TokenConditioning{ramp, at::zeros({1, ramp.size(1), 4}), 0.0})
          .timestep_rows));
  const auto levels = mask_levels(at::tensor({1.0f, 0.0f, 1.0f}).unsqueeze(0));
  REQUIRE(levels.has_value());
  CHECK(at::equal(levels->values, at::tensor({0.0f, 1.0f})));
  CHECK(at::equal(levels->index, at::tensor({1, 0, 1}, at::kInt).unsqueeze(0)));
  CHECK_THROWS_WITH(mask_levels(at::ones({3})), Contains("float32 [rows, tokens]"));
}

TEST_CASE("frames_to_vae_input and removal_mask_pixels: the host mapping's values, the input untouched", "[stages]") {
  const auto plan = cpu_plan();
  auto model = make_embedded_default_model(plan);
  StageContext ctx(model, plan, ltxmps::null_sink(), {}, 0);
  at::manual_seed(3);
  const auto frames = at::rand({9, 3, 16, 24});
  const auto kept = frames.clone();
  const auto input = frames_to_vae_input(ctx, frames);
  CHECK(at::equal(input, (frames * 2.0 - 1.0).permute({1, 0, 2, 3}).unsqueeze(0)));
  CHECK(input.is_contiguous());
  CHECK(input.scalar_type() == model.vae.runtime.dtype);
  CHECK(at::equal(frames, kept));
  CHECK_THROWS_WITH(frames_to_vae_input(ctx, frames[0]), Contains("floating point [F, C, H, W]"));

  // The official thresholds: 2m - 1 > 0 -> 100, < 0 -> 0, per channel, a 1-channel mask repeated to 3.
  auto mask = at::rand({9, 1, 16, 24});
  mask.view(-1)[0] = 0.5f;  // 2m - 1 == 0 stays 0
  const auto pixels = removal_mask_pixels(mask, at::kBFloat16);
  auto m = (mask * 2.0 - 1.0).expand({9, 3, 16, 24});
  const auto expected = at::where(m > 0, at::full_like(m, 100.0), at::where(m < 0, at::zeros_like(m), m));
  CHECK(pixels.scalar_type() == at::kBFloat16);
  CHECK(pixels.sizes() == at::IntArrayRef({1, 3, 9, 16, 24}));
  CHECK(at::equal(pixels.to(at::kFloat), expected.permute({1, 0, 2, 3}).unsqueeze(0)));
}

TEST_CASE("encode_prompts drops the text columns no prompt attends to, and only those", "[stages]") {
  const auto plan = cpu_plan();
  auto model = make_embedded_default_model(plan);
  StageContext ctx(model, plan, ltxmps::null_sink(), {}, 0);
  const int64_t C = model.transformer.config.caption_channels;
  at::manual_seed(5);
  PromptEmbeddings e{at::randn({1, 12, C}), at::zeros({1, 12}, at::kBool), at::randn({1, 12, C}),
                     at::zeros({1, 12}, at::kBool)};
  e.prompt_attention_mask.narrow(1, 0, 3).fill_(true);           // a short prompt
  e.negative_prompt_attention_mask.narrow(1, 0, 6).fill_(true);  // a longer negative one
  e.negative_prompt_attention_mask[0][2] = false;                // a hole inside is kept
  PromptRequest r;
  r.embeddings = e;
  r.guidance = true;
  const auto b = encode_prompts(ctx, r);
  CHECK(b.embeds.sizes() == at::IntArrayRef({2, 6, C}));
  CHECK(at::equal(b.embeds, at::cat({e.negative_prompt_embeds, e.prompt_embeds}).narrow(1, 0, 6)));
  CHECK(at::equal(b.mask, at::cat({e.negative_prompt_attention_mask, e.prompt_attention_mask}).narrow(1, 0, 6)));
  CHECK(at::equal(b.positive, e.prompt_embeds.narrow(1, 0, 6)));

  // A row that attends to nothing spreads its attention over every column in diffusers: nothing is dropped.
  e.negative_prompt_attention_mask.zero_();
  r.embeddings = e;
  CHECK(encode_prompts(ctx, r).embeds.size(1) == 12);
  // Without guidance only the prompt's own mask counts.
  r.guidance = false;
  CHECK(encode_prompts(ctx, r).embeds.size(1) == 3);
}
