// OmnimatteZero's effects ("total") mask from LTX-Video self-attention, reduced in O(N) memory.

#include "ltxmps_pipeline/effects_mask.hpp"

#include "ltxmps/error.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>

namespace ltxmps::pipeline {

namespace {

const std::optional<at::ArrayRef<double>> kNoScales = std::nullopt;

std::string shape_of(const at::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : std::string("undefined"); }

void check_dilation(int64_t k, const char* who) {
  LTXMPS_CHECK(k >= 1, who, " ", k, ": the dilation kernel size must be >= 1 (1 = no dilation)");
  LTXMPS_CHECK(k % 2 == 1, who, " ", k,
               ": the dilation kernel size must be odd; an even k×k kernel with padding k/2 makes every frame one "
               "pixel larger, so the effects mask no longer lines up with the object mask");
}

// A [T, H, W] mask of bool or 0/1 values.
void check_binary_volume(const at::Tensor& mask, const char* who, const char* name) {
  LTXMPS_CHECK(mask.defined() && mask.dim() == 3 && mask.numel() > 0, who, ": ", name,
               " must be a non-empty [frames, height, width] tensor, got ", shape_of(mask));
  if (mask.scalar_type() == at::kBool) return;
  LTXMPS_CHECK(at::isFloatingType(mask.scalar_type()) || at::isIntegralType(mask.scalar_type(), false), who, ": ",
               name, " must be bool or real, got ", mask.scalar_type());
  LTXMPS_CHECK(at::logical_or(mask == 0, mask == 1).all().item<bool>(), who, ": ", name,
               " must hold only 0 and 1 (binarise it first)");
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Options

void EffectsMaskOptions::validate(int64_t num_layers) const {
  LTXMPS_CHECK(num_layers >= 1, "effects mask: the transformer has no layers to capture");
  std::set<int64_t> seen;
  for (const auto layer : layers) {
    LTXMPS_CHECK(layer >= 0 && layer < num_layers, "--layers ", layer, ": the transformer has ", num_layers,
                 " layers (0..", num_layers - 1, ")");
    LTXMPS_CHECK(seen.insert(layer).second, "--layers lists layer ", layer, " more than once");
  }
  if (threshold) LTXMPS_CHECK(std::isfinite(*threshold), "--threshold must be a finite number, got ", *threshold);
  check_dilation(dilation, "--dilation");
  LTXMPS_CHECK(query_chunk >= 1, "--query-chunk must be >= 1, got ", query_chunk);
}

std::vector<int64_t> EffectsMaskOptions::resolved_layers(int64_t num_layers) const {
  validate(num_layers);
  if (!layers.empty()) return layers;
  std::vector<int64_t> all(static_cast<size_t>(num_layers));
  for (int64_t i = 0; i < num_layers; ++i) all[static_cast<size_t>(i)] = i;
  return all;
}

// ---------------------------------------------------------------------------------------------------
// Object tokens

at::Tensor object_token_mask(const at::Tensor& object_mask, int64_t latent_frames, int64_t latent_height,
                             int64_t latent_width, int64_t temporal_compression) {
  check_binary_volume(object_mask, "object_token_mask", "object_mask");
  LTXMPS_CHECK(latent_frames >= 1 && latent_height >= 1 && latent_width >= 1,
               "object_token_mask: the latent size must be positive, got ", latent_frames, "x", latent_height, "x",
               latent_width);
  LTXMPS_CHECK(temporal_compression >= 1, "object_token_mask: temporal_compression must be >= 1, got ",
               temporal_compression);
  const int64_t frames = object_mask.size(0);
  std::vector<int64_t> picked(static_cast<size_t>(latent_frames));
  for (int64_t t = 0; t < latent_frames; ++t)
    picked[static_cast<size_t>(t)] = std::min(temporal_compression * t, frames - 1);
  const auto index = at::tensor(picked, at::TensorOptions().dtype(at::kLong)).to(object_mask.device());
  // [F', 1, H, W]: each picked frame is one image of one channel, as the official per-frame call.
  const auto selected = object_mask.index_select(0, index).to(at::kFloat).unsqueeze(1);
  const std::vector<int64_t> size{latent_height, latent_width};
  // F.interpolate(size=...) calls the `.vec` overload without scale factors: index floor(i·(H/h)).
  return at::upsample_nearest2d(selected, at::OptionalIntArrayRef(size), kNoScales).squeeze(1);
}

// ---------------------------------------------------------------------------------------------------
// Score accumulator

// Note [O(N) effects reduction]
// The official code stores, for each of the L layers, the head-mean map A [N, N] (N = F'·h·w tokens in
// (f, y, x) order) and then computes, per query frame t, score[t, q] = Σ_layers Σ_src Σ_k
// A[(t, q), (src, k)]·m[src, k] / (L + 1e-8). The double sum over source frames and their keys runs
// over every key token once, so it is the dot product of the query's row of A with the flattened
// object vector m [N]: the scores are A·m, one matrix-vector product per layer, and the head mean
// commutes with it: mean_h(P_h)·m = mean_h(P_h·m). P_h·m is the output of attention with the object
// mask as the value: softmax(q·kᵀ·scale)·m. So each captured layer runs one fused attention call
// (ltxmps::attention, the model's kernel: flash/cuDNN SDPA on CUDA) with a value tensor whose first
// channel holds m and whose other channels are zero, over query chunks of `query_chunk` rows, and
// adds the head mean of channel 0 to a float32 [N] accumulator. Nothing of size N² exists at any time:
// memory is that of one attention call (O(N)) plus the value tensor (heads·N·head_dim).
// Precision: the official run keeps maps and accumulators in the model dtype (bf16). Here the attention
// output is in the model dtype too (a weighted mean of 0/1 values, so its rounding is 2^-8 relative in
// bf16) and the head mean and accumulation are float32. In float32 the result equals the explicit
// probabilities up to summation order (about 1e-7 relative).
struct EffectsScoreAccumulator::State {
  at::Tensor object_tokens;           // float32 [N] on the CPU, token order (f, y, x)
  at::Tensor object_on_device;        // its copy where the probabilities live
  at::Tensor accumulator;             // float32 [N], on the probabilities' device
  std::vector<int64_t> grid;          // {F', h, w}
  std::vector<int64_t> layers;
  std::map<int64_t, int64_t> rows_seen;  // per requested layer

  void add_qk(int64_t layer, const at::Tensor& q, const at::Tensor& k, const ltxmps::AttentionOptions& model,
              int64_t chunk);
  const at::Tensor& object_on(const c10::Device& device);
};

const at::Tensor& EffectsScoreAccumulator::State::object_on(const c10::Device& device) {
  if (!object_on_device.defined() || object_on_device.device() != device) object_on_device = object_tokens.to(device);
  return object_on_device;
}

void EffectsScoreAccumulator::State::add_qk(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                                            const ltxmps::AttentionOptions& model, int64_t chunk) {
  c10::InferenceMode inference;
  const int64_t n = object_tokens.numel();
  LTXMPS_CHECK(q.dim() == 4 && q.size(0) == 1 && k.sizes() == q.sizes(), "effects scores: expected q and k heads [1, "
               "heads, tokens, head_dim] (the effects mask runs on one clip), got ", q.sizes(), " and ", k.sizes());
  LTXMPS_CHECK(q.size(2) == n, "effects scores: layer ", layer, " attends over ", q.size(2),
               " tokens, but the object token mask has ", n, " (", grid[0], "x", grid[1], "x", grid[2], ")");
  const auto seen = rows_seen.find(layer);
  LTXMPS_CHECK(seen != rows_seen.end(), "effects scores: layer ", layer, " was not requested");
  if (!accumulator.defined()) accumulator = at::zeros({n}, q.options().dtype(at::kFloat));
  auto value = at::zeros_like(k);
  value.select(3, 0).copy_(object_on(q.device()).view({1, 1, n}).expand({1, q.size(1), n}));
  ltxmps::AttentionOptions options = model;  // the model's kernel and scale (the softmax upcast where the plan says)
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t rows = std::min(chunk, n - begin);
    const auto out = ltxmps::attention(q.narrow(2, begin, rows), k, value, std::nullopt, options);  // [1, H, rows, d]
    accumulator.narrow(0, begin, rows).add_(out.select(3, 0).to(at::kFloat).mean(1).squeeze(0));
  }
  seen->second += n;
}


EffectsScoreAccumulator::EffectsScoreAccumulator(const at::Tensor& object_tokens, std::vector<int64_t> layers)
    : state_(std::make_shared<State>()) {
  check_binary_volume(object_tokens, "EffectsScoreAccumulator", "object_tokens");
  LTXMPS_CHECK(!layers.empty(), "EffectsScoreAccumulator: no layers requested");
  for (const auto layer : layers) {
    LTXMPS_CHECK(layer >= 0, "EffectsScoreAccumulator: layer ", layer, " is negative");
    LTXMPS_CHECK(state_->rows_seen.emplace(layer, 0).second, "EffectsScoreAccumulator: layer ", layer,
                 " is requested more than once");
  }
  state_->object_tokens = object_tokens.to(at::kCPU, at::kFloat).flatten().contiguous();
  state_->grid = {object_tokens.size(0), object_tokens.size(1), object_tokens.size(2)};
  state_->layers = std::move(layers);
}

AttentionCapture EffectsScoreAccumulator::capture(int64_t query_chunk, bool apply_rope) const {
  LTXMPS_CHECK(query_chunk >= 1, "EffectsScoreAccumulator::capture: query_chunk must be >= 1, got ", query_chunk);
  AttentionCapture capture;
  capture.layers = state_->layers;
  capture.query_chunk = query_chunk;
  capture.apply_rope = apply_rope;
  capture.visit_qk = [state = state_, query_chunk](int64_t layer, const at::Tensor& q, const at::Tensor& k,
                                                   const ltxmps::AttentionOptions& options) {
    state->add_qk(layer, q, k, options, query_chunk);
  };
  return capture;
}

at::Tensor EffectsScoreAccumulator::scores() const {
  const int64_t n = state_->object_tokens.numel();
  for (const auto& [layer, rows] : state_->rows_seen)
    LTXMPS_CHECK(rows == n, "EffectsScoreAccumulator::scores: layer ", layer, " was captured for ", rows,
                 " query rows, expected ", n, " (run exactly one transformer forward with capture())");
  // Official: acc / (L + 1e-8), L counting every hooked layer.
  const double divisor = static_cast<double>(state_->layers.size()) + 1e-8;
  return state_->accumulator.div(divisor).view(state_->grid);
}

const std::vector<int64_t>& EffectsScoreAccumulator::layers() const { return state_->layers; }

// ---------------------------------------------------------------------------------------------------
// Scores to masks

at::Tensor upsample_scores(const at::Tensor& scores, int64_t frames, int64_t height, int64_t width) {
  LTXMPS_CHECK(scores.defined() && scores.dim() == 3 && scores.numel() > 0,
               "upsample_scores: scores must be a non-empty [latent_frames, latent_height, latent_width] tensor, got ",
               shape_of(scores));
  LTXMPS_CHECK(at::isFloatingType(scores.scalar_type()), "upsample_scores: scores must be floating point, got ",
               scores.scalar_type());
  LTXMPS_CHECK(frames >= 1 && height >= 1 && width >= 1, "upsample_scores: the video size must be positive, got ",
               frames, "x", height, "x", width);
  const std::vector<int64_t> plane{height, width};
  const std::vector<int64_t> volume{frames, height, width};
  // F.interpolate(size=...) calls the `.vec` overloads with no scale factors; so do these.
  auto spatial = at::upsample_bilinear2d(scores.to(at::kFloat).unsqueeze(1), at::OptionalIntArrayRef(plane),
                                         /*align_corners=*/false, kNoScales);  // [F', 1, H, W]
  auto video = spatial.squeeze(1).unsqueeze(0).unsqueeze(0);                 // [1, 1, F', H, W]
  return at::upsample_trilinear3d(video, at::OptionalIntArrayRef(volume), /*align_corners=*/false, kNoScales)
      .squeeze(0)
      .squeeze(0);
}

ThresholdedScores threshold_scores(const at::Tensor& scores, std::optional<double> threshold) {
  LTXMPS_CHECK(scores.defined() && scores.numel() > 0, "threshold_scores: scores are empty");
  LTXMPS_CHECK(at::isFloatingType(scores.scalar_type()), "threshold_scores: scores must be floating point, got ",
               scores.scalar_type());
  if (threshold) {
    LTXMPS_CHECK(std::isfinite(*threshold), "threshold_scores: the threshold must be finite, got ", *threshold);
    // As Python's `up > 0.07`: the scalar takes the scores' dtype before the comparison.
    return {at::gt(scores, *threshold), *threshold};
  }
  LTXMPS_CHECK(scores.numel() >= 2, "threshold_scores: an adaptive threshold needs at least 2 values (unbiased std)");
  // Official: `up.mean() + 0.5 * up.std()` as 0-dim tensors; torch's std() is unbiased by default.
  const auto adaptive = scores.mean() + scores.std(/*unbiased=*/true) * 0.5;
  return {at::gt(scores, adaptive), adaptive.item<double>()};
}

at::Tensor dilate_mask(const at::Tensor& mask, int64_t kernel_size) {
  check_binary_volume(mask, "dilate_mask", "mask");
  check_dilation(kernel_size, "dilate_mask: kernel_size");
  if (kernel_size == 1) return mask.to(at::kBool, /*non_blocking=*/false, /*copy=*/true);
  const auto frames = mask.to(at::kFloat).unsqueeze(1);  // [T, 1, H, W]
  const auto kernel = at::ones({1, 1, kernel_size, kernel_size}, frames.options());
  // Sums of 0/1 values below k² are exact in float32, so `> 0` is exactly "some pixel of the window is set".
  const std::vector<int64_t> stride{1, 1}, padding{kernel_size / 2, kernel_size / 2};
  const auto counts = at::conv2d(frames, kernel, /*bias=*/std::nullopt, stride, padding);
  return counts.squeeze(1) > 0;
}

at::Tensor union_masks(const at::Tensor& object_mask, const at::Tensor& effects_mask) {
  check_binary_volume(object_mask, "union_masks", "object_mask");
  check_binary_volume(effects_mask, "union_masks", "effects_mask");
  LTXMPS_CHECK(object_mask.sizes() == effects_mask.sizes(), "union_masks: object_mask ", object_mask.sizes(),
               " and effects_mask ", effects_mask.sizes(), " differ in shape");
  LTXMPS_CHECK(object_mask.device() == effects_mask.device(), "union_masks: object_mask is on ", object_mask.device(),
               ", effects_mask on ", effects_mask.device());
  return at::logical_or(object_mask != 0, effects_mask != 0);
}

EffectsMask effects_mask_from_scores(const at::Tensor& scores, const at::Tensor& object_mask,
                                     const EffectsMaskOptions& options) {
  check_binary_volume(object_mask, "effects_mask_from_scores", "object_mask");
  if (options.threshold)
    LTXMPS_CHECK(std::isfinite(*options.threshold), "--threshold must be a finite number, got ", *options.threshold);
  check_dilation(options.dilation, "--dilation");
  const auto up = upsample_scores(scores, object_mask.size(0), object_mask.size(1), object_mask.size(2));
  auto thresholded = threshold_scores(up, options.threshold);
  auto effects = dilate_mask(thresholded.mask, options.dilation);
  auto total = union_masks(object_mask.to(effects.device()), effects);
  return {std::move(total), std::move(effects), thresholded.threshold};
}

}  // namespace ltxmps::pipeline
