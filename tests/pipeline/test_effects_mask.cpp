// Effects mask (effects_mask.hpp): the O(N) score accumulator against full attention maps reduced the way the
// official OmnimatteZero loop does it, the capture without RoPE against q/k recomputed from the weights, and the
// object tokens, upsampling, threshold, dilation and option errors against hand computations. All on the CPU with a
// small random transformer.
#include "ltxmps/attention.hpp"
#include "ltxmps/error.hpp"
#include "ltxmps/random.hpp"
#include "ltxmps_pipeline/effects_mask.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include "tiny_models.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

// Last: c10/util/Logging.h (reached through ltxmps/random.hpp) defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

using namespace ltxmps::pipeline;
using ltxmps_test::Contains;

namespace effects_mask_test {

constexpr int64_t kFrames = 3, kHeight = 4, kWidth = 5, kTokens = kFrames * kHeight * kWidth;

TransformerConfig tiny_config() {
  return ltxmps_test::tiny_transformer_config(/*channels=*/8, /*heads=*/4, /*head_dim=*/8, /*layers=*/2,
                                              /*caption_channels=*/32);
}

TransformerModel tiny_model() { return ltxmps_test::tiny_transformer(tiny_config()); }

// One clip (batch 1) on the integer (f, y, x) RoPE grid, one timestep for all tokens as the effects pass.
TransformerInputs tiny_inputs() {
  auto in = ltxmps_test::tiny_transformer_inputs(tiny_config(), /*seed=*/7, /*batch=*/1, {kFrames, kHeight, kWidth},
                                                 /*text_len=*/6, /*masked=*/2);
  in.timestep = at::tensor({500.0f});
  return in;
}

// A 2x2 object that moves between latent frames.
at::Tensor object_tokens() {
  auto m = at::zeros({kFrames, kHeight, kWidth});
  m[0].narrow(0, 1, 2).narrow(1, 1, 2).fill_(1);
  m[1].narrow(0, 1, 2).narrow(1, 2, 2).fill_(1);
  m[2].narrow(0, 2, 2).narrow(1, 2, 2).fill_(1);
  return m;
}

// Head-mean attention maps [N, N] of every layer, each read whole (one chunk of all N queries).
std::map<int64_t, at::Tensor> full_maps(const TransformerModel& model, const TransformerInputs& in, bool apply_rope) {
  std::map<int64_t, at::Tensor> maps;
  AttentionCapture capture;
  capture.layers = {0, 1};
  capture.query_chunk = kTokens;
  capture.apply_rope = apply_rope;
  capture.visit = [&](int64_t layer, int64_t begin, const at::Tensor& probs) {
    REQUIRE(begin == 0);
    REQUIRE(probs.size(2) == kTokens);
    maps[layer] = probs.mean(1)[0].clone();
  };
  model.forward(in, &capture);
  return maps;
}

// The official reduction, in double: for every query frame t, for every layer, for every source frame in order,
// acc += Σ_k A[(t, q), (src, k)]·m[src, k]; score[t] = acc / (L + 1e-8).
at::Tensor official_scores(const std::map<int64_t, at::Tensor>& maps, const at::Tensor& object) {
  const int64_t hw = kHeight * kWidth;
  const auto m = object.to(at::kDouble).reshape({kFrames, hw});
  const auto mm = m.accessor<double, 2>();
  auto score = at::zeros({kFrames, hw}, at::kDouble);
  auto s = score.accessor<double, 2>();
  for (int64_t t = 0; t < kFrames; ++t) {
    std::vector<double> acc(static_cast<size_t>(hw), 0.0);
    for (const auto& [layer, map] : maps) {
      const auto a = map.to(at::kDouble);
      const auto aa = a.accessor<double, 2>();
      for (int64_t src = 0; src < kFrames; ++src)
        for (int64_t q = 0; q < hw; ++q)
          for (int64_t k = 0; k < hw; ++k) acc[static_cast<size_t>(q)] += aa[t * hw + q][src * hw + k] * mm[src][k];
    }
    for (int64_t q = 0; q < hw; ++q)
      s[t][q] = acc[static_cast<size_t>(q)] / (static_cast<double>(maps.size()) + 1e-8);
  }
  return score.reshape({kFrames, kHeight, kWidth});
}

at::Tensor accumulated_scores(const TransformerModel& model, const TransformerInputs& in, int64_t chunk,
                              bool apply_rope) {
  EffectsScoreAccumulator accumulator(object_tokens(), {0, 1});
  const auto capture = accumulator.capture(chunk, apply_rope);
  model.forward(in, &capture);
  return accumulator.scores();
}

// A bool vector (at::tensor has no bool overload on the CPU).
at::Tensor flags(std::vector<int64_t> values) { return at::tensor(values).to(at::kBool); }

double relative_error(const at::Tensor& out, const at::Tensor& ref) {
  const auto o = out.to(at::kDouble), r = ref.to(at::kDouble);
  return (o - r).abs().max().item<double>() / r.abs().max().item<double>();
}

// attn1's input in block 0, from the weights: AdaLN-modulated RMSNorm of proj_in(x) (diffusers' block).
at::Tensor block0_attn1_input(const TransformerModel& model, const TransformerInputs& in) {
  const auto lin = [](const LinearWeights& l, const at::Tensor& x) { return at::linear(x, l.weight, l.bias); };
  const int64_t D = model.config.inner_dim();
  const auto x = lin(model.proj_in, in.hidden_states);
  // get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0): [cos, sin]
  const auto arg = in.timestep.unsqueeze(1) * at::exp(at::arange(128, at::kFloat) * (-std::log(10000.0) / 128));
  const auto projected = at::cat({arg.cos(), arg.sin()}, -1);
  auto emb = lin(model.time_embed_emb_timestep_embedder_linear_1, projected);
  emb = lin(model.time_embed_emb_timestep_embedder_linear_2, at::silu(emb));
  const auto ada = model.transformer_blocks[0].scale_shift_table.view({1, 1, 6, D}) +
                   lin(model.time_embed_linear, at::silu(emb)).view({1, 1, 6, D});
  const auto normed = x * at::rsqrt(x.pow(2).mean(-1, true) + model.config.norm_eps);
  return normed * (1 + ada.select(2, 1)) + ada.select(2, 0);
}

// Head-mean map of block 0's attn1 from q = norm_q(to_q(x)), k = norm_k(to_k(x)) without RoPE, as OmnimatteZero's
// hook recomputes them.
at::Tensor block0_map_without_rope(const TransformerModel& model, const TransformerInputs& in) {
  const auto& attn = model.transformer_blocks[0].attn1;
  const auto x = block0_attn1_input(model, in);
  const auto rms = [](const at::Tensor& t, const at::Tensor& w) {
    return t * at::rsqrt(t.pow(2).mean(-1, true) + 1e-5) * w;
  };
  const auto heads = [&](const at::Tensor& t) {
    return t.view({1, kTokens, model.config.num_attention_heads, -1}).transpose(1, 2);
  };
  const auto q = heads(rms(at::linear(x, attn.to_q.weight, attn.to_q.bias), attn.norm_q_weight));
  const auto k = heads(rms(at::linear(x, attn.to_k.weight, attn.to_k.bias), attn.norm_k_weight));
  return ltxmps::attention_probs(q, k).mean(1)[0];
}

}  // namespace effects_mask_test

using namespace effects_mask_test;

TEST_CASE("effects scores: the O(N) accumulator equals the official reduction of full maps", "[effects_mask]") {
  const auto model = tiny_model();
  const auto in = tiny_inputs();
  for (const bool apply_rope : {false, true}) {
    INFO("apply_rope " << apply_rope);
    const auto reference = official_scores(full_maps(model, in, apply_rope), object_tokens());
    const auto scores = accumulated_scores(model, in, 7, apply_rope);
    CHECK(scores.scalar_type() == at::kFloat);
    CHECK(scores.sizes() == at::IntArrayRef({kFrames, kHeight, kWidth}));
    CHECK(relative_error(scores, reference) < 1e-5);
  }
  // The option matters: with distinct positions RoPE changes the maps.
  const auto with_rope = accumulated_scores(model, in, 7, true);
  const auto without = accumulated_scores(model, in, 7, false);
  CHECK((with_rope - without).abs().max().item<double>() > 1e-3);
}

TEST_CASE("effects scores: the capture without RoPE reads q/k after RMSNorm and before RoPE", "[effects_mask]") {
  const auto model = tiny_model();
  auto in = tiny_inputs();
  const auto captured = full_maps(model, in, false).at(0);
  CHECK((captured - block0_map_without_rope(model, in)).abs().max().item<double>() < 1e-5);

  // One position for every token rotates every q and k by the same angles, which q·kᵀ cancels: the model's true
  // maps then equal the maps without RoPE in every layer.
  in.video_coords = at::zeros({1, 3, kTokens});
  const auto rope = full_maps(model, in, true), plain = full_maps(model, in, false);
  for (const int64_t layer : {0, 1}) {
    INFO("layer " << layer);
    CHECK((rope.at(layer) - plain.at(layer)).abs().max().item<double>() < 1e-5);
  }
}

TEST_CASE("effects scores: independent of the query chunk size", "[effects_mask]") {
  const auto model = tiny_model();
  const auto in = tiny_inputs();
  const auto whole = accumulated_scores(model, in, kTokens, false);
  for (const int64_t chunk : {int64_t{1}, int64_t{3}}) {
    INFO("chunk " << chunk);
    CHECK(relative_error(accumulated_scores(model, in, chunk, false), whole) < 1e-6);
  }
}

TEST_CASE("effects scores: capture never changes the forward output", "[effects_mask]") {
  const auto model = tiny_model();
  const auto in = tiny_inputs();
  const auto plain = model.forward(in);
  for (const bool apply_rope : {false, true}) {
    EffectsScoreAccumulator accumulator(object_tokens(), {1, 0});
    const auto capture = accumulator.capture(5, apply_rope);
    CHECK(at::equal(model.forward(in, &capture), plain));
  }
}

TEST_CASE("effects scores: misuse is a clear error", "[effects_mask]") {
  const auto model = tiny_model();
  const auto in = tiny_inputs();
  {
    EffectsScoreAccumulator accumulator(object_tokens(), {0, 1});
    CHECK_THROWS_WITH(accumulator.scores(), Contains("layer 0 was captured for 0 query rows, expected 60"));
    const auto capture = accumulator.capture(16, false);
    model.forward(in, &capture);
    model.forward(in, &capture);
    CHECK_THROWS_WITH(accumulator.scores(), Contains("captured for 120 query rows"));
  }
  {
    EffectsScoreAccumulator accumulator(at::zeros({2, kHeight, kWidth}), {0});
    const auto capture = accumulator.capture(16, false);
    CHECK_THROWS_WITH(model.forward(in, &capture),
                      Contains("layer 0 attends over 60 tokens, but the object token mask has 40 (2x4x5)"));
  }
  {
    EffectsScoreAccumulator accumulator(object_tokens(), {2});
    const auto capture = accumulator.capture(16, false);
    CHECK_THROWS_WITH(model.forward(in, &capture), Contains("layer 2 is out of range"));
    const auto heads = at::zeros({2, 4, kTokens, 8});
    CHECK_THROWS_WITH(capture.visit_qk(2, heads, heads, ltxmps::AttentionOptions{}), Contains("one clip"));
  }
  CHECK_THROWS_WITH(EffectsScoreAccumulator(object_tokens(), {}), Contains("no layers requested"));
  CHECK_THROWS_WITH(EffectsScoreAccumulator(object_tokens(), {1, 1}), Contains("layer 1 is requested more than once"));
  CHECK_THROWS_WITH(EffectsScoreAccumulator(object_tokens() * 2, {0}),
                    Contains("object_tokens must hold only 0 and 1"));
  CHECK_THROWS_WITH(EffectsScoreAccumulator(object_tokens(), {0}).capture(0, false),
                    Contains("query_chunk must be >= 1"));
}

TEST_CASE("object_token_mask: frame min(8t, T - 1), the top-left pixel of each block", "[effects_mask]") {
  auto mask = at::zeros({17, 64, 96}, at::kBool);
  mask[8][32][64] = true;  // frame 8 -> latent 1, block (1, 2) at its corner
  mask[8][33][65] = true;  // inside block (1, 2), not its corner: no token
  mask[7][0][0] = true;    // frame 7 is read by no latent frame
  mask[0][31][31] = true;  // the last pixel of block (0, 0): no token
  mask[16][0][32] = true;  // frame 16 = min(16, 16) and min(24, 16): latents 2 and 3, block (0, 1)
  auto expected = at::zeros({4, 2, 3});
  expected[1][1][2] = 1;
  expected[2][0][1] = 1;
  expected[3][0][1] = 1;
  const auto tokens = object_token_mask(mask, 4, 2, 3, 8);
  CHECK(tokens.scalar_type() == at::kFloat);
  CHECK(at::equal(tokens, expected));

  // Uneven blocks: torch's nearest reads rows floor(i·50/4) = 0, 12, 25, 37 and columns floor(j·7/2) = 0, 3.
  auto uneven = at::zeros({1, 50, 7});
  uneven[0][12][3] = 1;
  uneven[0][37][3] = 1;
  uneven[0][13][0] = 1;
  auto expected_uneven = at::zeros({1, 4, 2});
  expected_uneven[0][1][1] = 1;
  expected_uneven[0][3][1] = 1;
  CHECK(at::equal(object_token_mask(uneven, 1, 4, 2, 8), expected_uneven));

  CHECK_THROWS_WITH(object_token_mask(at::full({2, 4, 4}, 0.5), 1, 2, 2, 8), Contains("only 0 and 1"));
  CHECK_THROWS_WITH(object_token_mask(at::zeros({4, 4}), 1, 2, 2, 8), Contains("[frames, height, width]"));
  CHECK_THROWS_WITH(object_token_mask(at::zeros({2, 4, 4}), 1, 2, 2, 0), Contains("temporal_compression"));
}

TEST_CASE("upsample_scores: bilinear per frame, then trilinear spreading the frames uniformly", "[effects_mask]") {
  auto g = ltxmps::make_cpu_generator(3);
  // Same spatial size: each frame is copied; in time, output frame t reads source (t + 0.5)·3/17 - 0.5 (>= 0).
  const auto scores = ltxmps::randn({3, 2, 2}, g);
  const auto up = upsample_scores(scores, 17, 2, 2);
  REQUIRE(up.sizes() == at::IntArrayRef({17, 2, 2}));
  for (int64_t t = 0; t < 17; ++t) {
    const double src = std::max(0.0, (t + 0.5) * 3.0 / 17.0 - 0.5);
    const auto i0 = static_cast<int64_t>(std::floor(src));
    const int64_t i1 = std::min<int64_t>(i0 + 1, 2);
    const double w = src - static_cast<double>(i0);
    const auto expected = scores[i0] * (1 - w) + scores[i1] * w;
    INFO("frame " << t);
    CHECK((up[t] - expected).abs().max().item<double>() < 1e-6);
  }
  // One frame, 2x2 -> 4x4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 give weights (1, 0), (.75, .25), (.25, .75),
  // (0, 1) along each axis.
  const auto plane = ltxmps::randn({1, 2, 2}, g);
  const auto weights = at::tensor({1.0f, 0.0f, 0.75f, 0.25f, 0.25f, 0.75f, 0.0f, 1.0f}).view({4, 2});
  const auto expected = at::matmul(at::matmul(weights, plane[0]), weights.t());
  CHECK((upsample_scores(plane, 1, 4, 4)[0] - expected).abs().max().item<double>() < 1e-6);
  CHECK_THROWS_WITH(upsample_scores(at::zeros({2, 2}), 1, 4, 4), Contains("[latent_frames, latent_height"));
  CHECK_THROWS_WITH(upsample_scores(plane, 0, 4, 4), Contains("video size must be positive"));
}

TEST_CASE("threshold_scores: adaptive mean + 0.5 unbiased std, strict comparison", "[effects_mask]") {
  // mean 2, squared deviations 4+4+0+4+4 = 16: unbiased std sqrt(16/4) = 2 -> threshold 3 (biased: 2.894).
  const auto scores = at::tensor({0.0f, 0.0f, 2.0f, 4.0f, 4.0f}).view({5, 1, 1});
  const auto adaptive = threshold_scores(scores, std::nullopt);
  CHECK(std::abs(adaptive.threshold - 3.0) < 1e-6);
  CHECK(at::equal(adaptive.mask.flatten(), flags({0, 0, 0, 1, 1})));
  const auto fixed = threshold_scores(scores, 2.0);  // 2 is not above 2
  CHECK(fixed.threshold == 2.0);
  CHECK(at::equal(fixed.mask.flatten(), flags({0, 0, 0, 1, 1})));
  CHECK(at::equal(threshold_scores(scores, 1.999).mask.flatten(), flags({0, 0, 1, 1, 1})));
  CHECK_THROWS_WITH(threshold_scores(scores, std::numeric_limits<double>::quiet_NaN()), Contains("must be finite"));
}

TEST_CASE("dilate_mask: a k x k square per frame with zero padding; even k is rejected", "[effects_mask]") {
  auto mask = at::zeros({2, 6, 7}, at::kBool);
  mask[1][3][4] = true;
  auto expected = at::zeros({2, 6, 7}, at::kBool);
  expected[1].narrow(0, 2, 3).narrow(1, 3, 3).fill_(true);
  CHECK(at::equal(dilate_mask(mask, 3), expected));
  expected.zero_();
  expected[1].narrow(0, 1, 5).narrow(1, 2, 5).fill_(true);  // 5x5 cut at the bottom border
  CHECK(at::equal(dilate_mask(mask, 5), expected));
  CHECK(at::equal(dilate_mask(mask, 1), mask));

  auto corner = at::zeros({1, 4, 4});
  corner[0][0][0] = 1;
  auto expected_corner = at::zeros({1, 4, 4}, at::kBool);
  expected_corner[0].narrow(0, 0, 2).narrow(1, 0, 2).fill_(true);
  CHECK(at::equal(dilate_mask(corner, 3), expected_corner));

  CHECK_THROWS_WITH(dilate_mask(mask, 4), Contains("kernel_size 4: the dilation kernel size must be odd"));
  CHECK_THROWS_WITH(dilate_mask(mask, 0), Contains("must be >= 1"));
}

TEST_CASE("effects_mask_from_scores: upsample, threshold, dilate, union", "[effects_mask]") {
  auto scores = at::zeros({2, 5, 5});
  scores[1][2][2] = 1;
  auto object = at::zeros({2, 5, 5}, at::kBool);
  object[0][0][0] = true;
  EffectsMaskOptions options;
  options.threshold = 0.5;
  const auto result = effects_mask_from_scores(scores, object, options);
  auto effects = at::zeros({2, 5, 5}, at::kBool);
  effects[1].narrow(0, 1, 3).narrow(1, 1, 3).fill_(true);
  CHECK(result.threshold == 0.5);
  CHECK(at::equal(result.effects, effects));
  CHECK(at::equal(result.total, at::logical_or(effects, object)));
  CHECK_THROWS_WITH(union_masks(object, effects.narrow(1, 0, 4)), Contains("differ in shape"));
}

TEST_CASE("EffectsMaskOptions: errors name the option", "[effects_mask]") {
  EffectsMaskOptions options;
  CHECK((options.resolved_layers(2) == std::vector<int64_t>{0, 1}));
  options.layers = {1};
  CHECK((options.resolved_layers(2) == std::vector<int64_t>{1}));
  options.layers = {7};
  CHECK_THROWS_WITH(options.validate(2), Contains("--layers 7: the transformer has 2 layers (0..1)"));
  options.layers = {-1};
  CHECK_THROWS_WITH(options.resolved_layers(2), Contains("--layers -1: the transformer has 2 layers (0..1)"));
  options.layers = {0, 0};
  CHECK_THROWS_WITH(options.validate(2), Contains("--layers lists layer 0 more than once"));
  options.layers = {};
  options.dilation = 4;
  CHECK_THROWS_WITH(options.validate(2), Contains("--dilation 4: the dilation kernel size must be odd"));
  options.dilation = 3;
  options.threshold = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(options.validate(2), Contains("--threshold must be a finite number"));
  options.threshold.reset();
  options.query_chunk = 0;
  CHECK_THROWS_WITH(options.validate(2), Contains("--query-chunk must be >= 1"));
}
