// LTXVideoTransformer3DModel, following diffusers 0.42.1 models/transformers/transformer_ltx.py top to bottom.

#include "ltxmps_pipeline/transformer.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/fp8.hpp"
#include "ltxmps_pipeline/weight_streaming.hpp"

#include "ltxmps_kernels/fp8_attention.hpp"
#include "ltxmps_kernels/fused.hpp"

#include "ltxmps/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

namespace ltxmps::pipeline {

// ---------------------------------------------------------------------------------------------------
// Config

TransformerConfig TransformerConfig::from_json(const nlohmann::json& json, const std::string& source) {
  LTXMPS_CHECK(json.is_object(), source, ": expected a JSON object, got ", json.type_name());
  TransformerConfig c;
  for (const auto& [key, value] : json.items()) {
    if (!key.empty() && key[0] == '_') {
      if (key == "_class_name") {
        const auto name = config_field<std::string>(value, key, source);
        LTXMPS_CHECK(name == "LTXVideoTransformer3DModel", source, ": _class_name is '", name,
                     "', expected 'LTXVideoTransformer3DModel'");
      }
      continue;  // _diffusers_version, _name_or_path, ...: metadata
    }
    if (key == "in_channels") c.in_channels = config_field<int64_t>(value, key, source);
    else if (key == "out_channels") c.out_channels = value.is_null() ? 0 : config_field<int64_t>(value, key, source);
    else if (key == "patch_size") c.patch_size = config_field<int64_t>(value, key, source);
    else if (key == "patch_size_t") c.patch_size_t = config_field<int64_t>(value, key, source);
    else if (key == "num_attention_heads") c.num_attention_heads = config_field<int64_t>(value, key, source);
    else if (key == "attention_head_dim") c.attention_head_dim = config_field<int64_t>(value, key, source);
    else if (key == "cross_attention_dim") c.cross_attention_dim = config_field<int64_t>(value, key, source);
    else if (key == "num_layers") c.num_layers = config_field<int64_t>(value, key, source);
    else if (key == "activation_fn") c.activation_fn = config_field<std::string>(value, key, source);
    else if (key == "qk_norm") c.qk_norm = config_field<std::string>(value, key, source);
    else if (key == "norm_elementwise_affine") c.norm_elementwise_affine = config_field<bool>(value, key, source);
    else if (key == "norm_eps") c.norm_eps = config_field<double>(value, key, source);
    else if (key == "caption_channels") c.caption_channels = config_field<int64_t>(value, key, source);
    else if (key == "attention_bias") c.attention_bias = config_field<bool>(value, key, source);
    else if (key == "attention_out_bias") c.attention_out_bias = config_field<bool>(value, key, source);
    else throw Error(c10::str(source, ": unknown field '", key, "' for LTXVideoTransformer3DModel"));
  }
  // diffusers: `out_channels = out_channels or in_channels`
  if (c.out_channels == 0) c.out_channels = c.in_channels;
  c.validate(source);
  return c;
}

TransformerConfig TransformerConfig::from_file(const std::filesystem::path& path) {
  return from_json(read_json_file(path), path.string());
}

// Sizes are bounded as Note [Config bounds] (checkpoint.hpp) explains.
void TransformerConfig::validate(const std::string& source) const {
  const std::pair<const char*, int64_t> sizes[] = {
      {"in_channels", in_channels},           {"out_channels", out_channels},
      {"num_attention_heads", num_attention_heads}, {"attention_head_dim", attention_head_dim},
      {"cross_attention_dim", cross_attention_dim}, {"caption_channels", caption_channels}};
  for (const auto& [name, v] : sizes) check_config_range(source, name, v, 1, kMaxConfigChannels);
  check_config_range(source, "patch_size", patch_size, 1, kMaxConfigPatch);
  check_config_range(source, "patch_size_t", patch_size_t, 1, kMaxConfigPatch);
  check_config_range(source, "num_layers", num_layers, 0, kMaxConfigLayers);
  LTXMPS_CHECK(norm_eps > 0.0 && std::isfinite(norm_eps), source, ": norm_eps must be > 0, got ", norm_eps);
  LTXMPS_CHECK(inner_dim() <= kMaxConfigChannels, source, ": inner dim num_attention_heads * attention_head_dim = ",
               inner_dim(), " is out of range (at most ", kMaxConfigChannels, ")");
  LTXMPS_CHECK(activation_fn == "gelu-approximate" || activation_fn == "gelu", source, ": activation_fn '",
               activation_fn, "' is not supported (gelu-approximate, gelu)");
  LTXMPS_CHECK(qk_norm == "rms_norm_across_heads", source, ": qk_norm '", qk_norm,
               "' is not supported (diffusers only implements 'rms_norm_across_heads')");
  LTXMPS_CHECK(inner_dim() >= 6, source, ": inner dim num_attention_heads * attention_head_dim = ", inner_dim(),
               " is too small for the 3D RoPE (needs >= 6)");
}

// ---------------------------------------------------------------------------------------------------
// Weights

TransformerModel TransformerModel::from_weights(const TransformerConfig& config, const TransformerRuntime& runtime,
                                                const TransformerWeightSource& weights) {
  config.validate();
  const auto options = at::TensorOptions().device(runtime.device).dtype(runtime.dtype);
  const int64_t D = config.inner_dim();
  auto tensor = [&](const std::string& name, std::vector<int64_t> shape) {
    auto t = weights(name, shape);
    LTXMPS_CHECK(t.defined() && t.sizes() == at::IntArrayRef(shape), "transformer weight '", name,
                 "' has shape ", t.defined() ? t.sizes() : at::IntArrayRef{}, ", expected ", at::IntArrayRef(shape));
    return t.to(options);
  };
  auto linear = [&](const std::string& name, int64_t in, int64_t out, bool bias = true) {
    LinearWeights l;
    l.weight = tensor(name + ".weight", {out, in});
    if (bias) l.bias = tensor(name + ".bias", {out});
    return l;
  };
  auto attention = [&](const std::string& name, int64_t kv_dim) {
    TransformerAttentionWeights a;
    a.to_q = linear(name + ".to_q", D, D, config.attention_bias);
    a.to_k = linear(name + ".to_k", kv_dim, D, config.attention_bias);
    a.to_v = linear(name + ".to_v", kv_dim, D, config.attention_bias);
    a.to_out_0 = linear(name + ".to_out.0", D, D, config.attention_out_bias);
    a.norm_q_weight = tensor(name + ".norm_q.weight", {D});
    a.norm_k_weight = tensor(name + ".norm_k.weight", {D});
    return a;
  };

  TransformerModel m;
  m.config = config;
  m.runtime = runtime;
  m.proj_in = linear("proj_in", config.in_channels, D);
  m.scale_shift_table = tensor("scale_shift_table", {2, D});
  m.time_embed_emb_timestep_embedder_linear_1 = linear("time_embed.emb.timestep_embedder.linear_1", 256, D);
  m.time_embed_emb_timestep_embedder_linear_2 = linear("time_embed.emb.timestep_embedder.linear_2", D, D);
  m.time_embed_linear = linear("time_embed.linear", D, 6 * D);
  m.caption_projection_linear_1 = linear("caption_projection.linear_1", config.caption_channels, D);
  m.caption_projection_linear_2 = linear("caption_projection.linear_2", D, D);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = "transformer_blocks." + std::to_string(i);
    TransformerBlockWeights b;
    if (config.norm_elementwise_affine) {
      b.norm1_weight = tensor(p + ".norm1.weight", {D});
      b.norm2_weight = tensor(p + ".norm2.weight", {D});
    }
    b.attn1 = attention(p + ".attn1", D);
    b.attn2 = attention(p + ".attn2", config.cross_attention_dim);
    b.ff_net_0_proj = linear(p + ".ff.net.0.proj", D, 4 * D);
    b.ff_net_2 = linear(p + ".ff.net.2", 4 * D, D);
    b.scale_shift_table = tensor(p + ".scale_shift_table", {6, D});
    quantize_block(b, runtime.block_linears);  // before the next block loads (Note [Weight storage])
    m.transformer_blocks.push_back(std::move(b));
  }
  m.proj_out = linear("proj_out", D, config.out_channels);
  return m;
}

// ---------------------------------------------------------------------------------------------------
// Building blocks

namespace {

// Note [Sinusoidal timestep projection]
// diffusers `get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)`
// (models/embeddings.py), in float32 whatever the model dtype: exponent = -ln(10000)·j / 128,
// arg = t·exp(exponent), output [cos(arg), sin(arg)]. The caller casts it to the model dtype.
at::Tensor timestep_projection(const at::Tensor& timesteps) {
  constexpr int64_t half = 128;
  auto exponent = at::arange(0, half, timesteps.options().dtype(at::kFloat)).mul(-std::log(10000.0));
  exponent = exponent.div(half);
  auto arg = timesteps.unsqueeze(1).to(at::kFloat) * at::exp(exponent).unsqueeze(0);
  return at::cat({at::cos(arg), at::sin(arg)}, -1);
}

// Note [LTX 3D RoPE]
// diffusers `LTXVideoRotaryPosEmbed.forward`, all in float32:
//   grid [B, S, 3] (f, h, w) per token; freqs_k = 10000^linspace(0, 1, D/6) · π/2;
//   φ[b, s, k, a] = freqs_k · (2·grid[a] − 1), laid out frequency-major (index 3k + a);
//   cos/sin repeated pairwise (interleaved) and front-padded with D % 6 entries (cos 1, sin 0).
// The grid is the integer (f, h, w) without rope_interpolation_scale (no division at all), else
// (f·s_t·p_t/20, h·s_h·p/2048, w·s_w·p/2048), each product evaluated left to right in float32.
// video_coords [B or 1, 3, S] give (vc_t/20, vc_h/2048, vc_w/2048).
//
// Note [RoPE once per batch]
// Without video_coords every batch row has the same grid, and the pipelines pass one row of coordinates for the
// whole CFG batch, so cos / sin are computed for one row and expanded to the batch (stride 0). Each value comes from
// the same float32 operations on the same inputs as in a per-row computation, so nothing changes in the result;
// what goes is the [B, S, D] float32 pair in memory (2 x 201 MB at the 13B's shape with CFG) and, in the fused q/k
// kernel, one read of it per extra batch row (Note [Batch rows of a token together] in ltxmps_kernels).
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const TransformerConfig& config, const TransformerInputs& in,
                                               int64_t batch, const c10::Device& device) {
  constexpr double base_num_frames = 20.0, base_height = 2048.0, base_width = 2048.0, theta = 10000.0;
  const auto f32 = at::TensorOptions().device(device).dtype(at::kFloat);
  at::Tensor grid;  // [B, S, 3]
  if (in.video_coords) {
    const auto vc = in.video_coords->to(device);
    grid = at::stack({vc.select(1, 0) / base_num_frames, vc.select(1, 1) / base_height,
                      vc.select(1, 2) / base_width},
                     -1);
  } else {
    auto axes = at::meshgrid({at::arange(*in.num_frames, f32), at::arange(*in.height, f32), at::arange(*in.width, f32)},
                             "ij");
    auto g = at::stack(axes, 0).unsqueeze(0);  // [1, 3, F, H, W]
    if (in.rope_interpolation_scale) {
      const auto& s = *in.rope_interpolation_scale;
      g.narrow(1, 0, 1).copy_(g.narrow(1, 0, 1).mul(s[0]).mul(config.patch_size_t).div(base_num_frames));
      g.narrow(1, 1, 1).copy_(g.narrow(1, 1, 1).mul(s[1]).mul(config.patch_size).div(base_height));
      g.narrow(1, 2, 1).copy_(g.narrow(1, 2, 1).mul(s[2]).mul(config.patch_size).div(base_width));
    }
    grid = g.flatten(2, 4).transpose(1, 2);
  }
  const int64_t D = config.inner_dim();
  auto freqs = at::pow(theta, at::linspace(std::log(1.0) / std::log(theta), std::log(theta) / std::log(theta), D / 6, f32));
  freqs = freqs.mul(M_PI).div(2.0);
  freqs = freqs * (grid.unsqueeze(-1) * 2 - 1);  // [B, S, 3, n]
  freqs = freqs.transpose(-1, -2).flatten(2);     // [B, S, 3n], index 3k + a
  auto cos = freqs.cos().repeat_interleave(2, -1);
  auto sin = freqs.sin().repeat_interleave(2, -1);
  if (D % 6 != 0) {
    cos = at::cat({at::ones_like(cos.narrow(-1, 0, D % 6)), cos}, -1);
    sin = at::cat({at::zeros_like(cos.narrow(-1, 0, D % 6)), sin}, -1);
  }
  return {cos.expand({batch, -1, -1}), sin.expand({batch, -1, -1})};
}

// Note [Fused and reference paths]
// The block's elementwise work (norms with their AdaLN modulation, residuals, the q/k norm with RoPE, the
// feed-forward GELU) goes through ltxmps_kernels. With runtime.fused_kernels each step calls the entry point,
// which runs a fused CUDA kernel where one applies and the step's reference otherwise; without it, the reference
// directly. The references are this model's op sequence (diffusers' roundings included), so the CPU forward is
// the same either way and the parity suites cover it; on CUDA the two differ by the kernels' rounding (Note
// [Fused kernel rounding] in ltxmps_kernels/fused.hpp).
//
// Note [FP8 rows from the fused kernels]
// Under FP8 matmul every block linear quantizes its input rows. With the fused kernels, the kernels that produce
// those rows quantize them as they write them (norm1 for q/k/v, the self-attention's gated residual for the
// cross-attention query, norm2 for ff.net.0, and the GELU for ff.net.2, whose bf16 activation is then never
// written), the text context is quantized once per forward for every block's cross-attention keys and values, and
// self-attention's q, k and v share one quantization of their input. Only the attention outputs keep a separate
// pass. The codes are those the layers would have made themselves (Fp8RowsOut in fused.hpp), so the forward's
// result is unchanged.
struct ForwardContext {
  const TransformerConfig& config;
  const TransformerRuntime& runtime;
  const AttentionCapture* capture;
  Fp8Rows context_fp8{};  ///< the text context's FP8 rows when fp8_rows()
  at::Tensor token_index;  ///< int32 [B, S]: the modulation row of each token (TransformerInputs::timestep_index)

  bool fused() const { return runtime.fused_kernels; }
  bool fp8_rows() const { return runtime.fused_kernels && runtime.block_linears == LinearMode::fp8_matmul; }
};

constexpr double kQkNormEps = 1e-5;

// q = norm_q(q), k = norm_k(k) (torch.nn.RMSNorm(D, eps=1e-5) across all heads: at::rms_norm, as torch calls it),
// then RoPE when `rope` is given. A capture that reads q and k before RoPE (`apply_rope` false) gets them in
// `q_normed` / `k_normed` from the unfused steps.
std::pair<at::Tensor, at::Tensor> normalize_qk(const ForwardContext& ctx, const TransformerAttentionWeights& w,
                                               const at::Tensor& q, const at::Tensor& k,
                                               const std::pair<at::Tensor, at::Tensor>* rope, bool keep_unrotated,
                                               at::Tensor& q_normed, at::Tensor& k_normed) {
  constexpr double eps = kQkNormEps;
  if (keep_unrotated) {
    std::tie(q_normed, k_normed) =
        kernels::qk_rms_norm_rope_reference(q, k, w.norm_q_weight, w.norm_k_weight, eps, {}, {});
    if (!rope) return {q_normed, k_normed};
    return {kernels::rotary_emb_reference(q_normed, rope->first, rope->second),
            kernels::rotary_emb_reference(k_normed, rope->first, rope->second)};
  }
  const at::Tensor cos = rope ? rope->first : at::Tensor(), sin = rope ? rope->second : at::Tensor();
  return ctx.fused() ? kernels::qk_rms_norm_rope(q, k, w.norm_q_weight, w.norm_k_weight, eps, cos, sin)
                     : kernels::qk_rms_norm_rope_reference(q, k, w.norm_q_weight, w.norm_k_weight, eps, cos, sin);
}

// Note [FP8 self-attention in the block]
// With runtime.fp8_attention the self-attention's q and k leave the q/k norm and RoPE kernel as e4m3 with scales
// bounded from the norm weights (no amax pass; Note [FP8 q and k] in the kernels), v is quantized per tensor, and
// cuDNN's FP8 attention writes its output as e4m3 with v's scale. Under FP8 matmul those codes are to_out's input
// rows as they are (one scale repeated per row): no dequantization and no second quantization, and one rounding
// fewer than quantizing the dequantized output per row. Without the fused kernels the q/k step runs its reference,
// which gives the same codes up to the norm's reduction order.
at::Tensor fp8_self_attention(const ForwardContext& ctx, const TransformerAttentionWeights& w, const at::Tensor& q,
                              const at::Tensor& k, const at::Tensor& v,
                              const std::pair<at::Tensor, at::Tensor>* rope) {
  const int64_t heads = ctx.config.num_attention_heads;
  const at::Tensor cos = rope ? rope->first : at::Tensor(), sin = rope ? rope->second : at::Tensor();
  const auto [q8, k8] =
      ctx.fused() ? kernels::qk_rms_norm_rope_fp8(q, k, w.norm_q_weight, w.norm_k_weight, kQkNormEps, cos, sin)
                  : kernels::qk_rms_norm_rope_fp8_reference(q, k, w.norm_q_weight, w.norm_k_weight, kQkNormEps, cos,
                                                            sin);
  const auto v8 = kernels::quantize_fp8_tensor(v.contiguous());
  const double scale = ctx.runtime.attention.scale.value_or(1.0 / std::sqrt(double(q.size(2) / heads)));
  const auto out = kernels::fp8_attention_rows(q8, k8, v8, heads, scale);
  auto sizes = q.sizes().vec();
  if (w.to_out_0.mode == LinearMode::fp8_matmul) {
    sizes.back() = w.to_out_0.out_features();
    return apply_fp8_matmul(w.to_out_0, out, q.scalar_type()).view(sizes);
  }
  return apply_linear(w.to_out_0, kernels::dequantize_fp8_rows(out.q, out.scale, q.scalar_type()).view(sizes));
}

// LTXAttention + LTXVideoAttnProcessor. `context` is undefined for self-attention; `rope` only for attn1;
// `bias` is the additive text bias [B, 1, L] (attn2 only). `x_fp8`: x's FP8 rows when the caller has them.
at::Tensor attention_forward(const ForwardContext& ctx, const TransformerAttentionWeights& w, const at::Tensor& x,
                             const Fp8Rows* x_fp8, const at::Tensor& context,
                             const std::pair<at::Tensor, at::Tensor>* rope, const at::Tensor& bias,
                             int64_t capture_layer) {
  const int64_t heads = ctx.config.num_attention_heads;
  const auto& kv_input = context.defined() ? context : x;
  const Fp8Rows* kv_fp8 = !context.defined() ? x_fp8 : ctx.context_fp8.q.defined() ? &ctx.context_fp8 : nullptr;
  auto q = apply_linear(w.to_q, x, x_fp8);
  auto k = apply_linear(w.to_k, kv_input, kv_fp8);
  auto v = apply_linear(w.to_v, kv_input, kv_fp8);
  if (ctx.runtime.fp8_attention && !context.defined() && !bias.defined() && capture_layer < 0)
    return fp8_self_attention(ctx, w, q, k, v, rope);
  at::Tensor q_normed, k_normed;  // what a capture without RoPE reads
  const bool keep_unrotated = capture_layer >= 0 && !ctx.capture->apply_rope;
  std::tie(q, k) = normalize_qk(ctx, w, q, k, rope, keep_unrotated, q_normed, k_normed);
  // [B, S, D] -> [B, S, H, Dh] -> [B, H, S, Dh] (views, as diffusers' native backend permutes; SDPA's flash and
  // memory-efficient kernels read this layout in place, and their output permuted back is contiguous [B, S, D])
  const auto split_heads = [heads](const at::Tensor& t) { return t.unflatten(2, {heads, -1}).permute({0, 2, 1, 3}); };
  auto qh = split_heads(q);
  auto kh = split_heads(k);
  auto vh = split_heads(v);
  std::optional<at::Tensor> mask;
  if (bias.defined()) {
    // prepare_attention_mask: [B, 1, L] repeated per head -> [B, H, 1, L]
    mask = bias.unsqueeze(1).expand({bias.size(0), heads, bias.size(1), bias.size(2)}).contiguous();
  }
  if (capture_layer >= 0) {
    const bool rotated = ctx.capture->apply_rope;
    const auto cq = rotated ? qh : split_heads(q_normed);
    const auto ck = rotated ? kh : split_heads(k_normed);
    if (ctx.capture->visit_qk) {
      ctx.capture->visit_qk(capture_layer, cq, ck, ctx.runtime.attention);
    } else {
      ltxmps::visit_attention_probs(
          cq, ck, mask, ctx.capture->query_chunk,
          [&](int64_t begin, const at::Tensor& probs) { ctx.capture->visit(capture_layer, begin, probs); },
          ctx.runtime.attention.scale);
    }
  }
  auto out = ltxmps::attention(qh, kh, vh, mask, ctx.runtime.attention);
  out = out.permute({0, 2, 1, 3}).flatten(2, 3).to(q.scalar_type());
  return apply_linear(w.to_out_0, out);
}

// FeedForward: ff.net.0 (the projection D -> 4D and its GELU), then ff.net.2. With the fused kernels and the tanh
// GELU, a dense ff.net.0 of the activations' dtype (or an FP8-stored one, dequantized) runs as one GEMM with the
// GELU in its epilogue; under FP8 matmul the GELU and the quantization of ff.net.2's input are one pass (Note [FP8
// rows from the fused kernels]); any other layer keeps its own apply_linear.
at::Tensor feed_forward(const ForwardContext& ctx, const TransformerBlockWeights& w, const at::Tensor& x,
                        const Fp8Rows* x_fp8) {
  const auto &in = w.ff_net_0_proj, &out = w.ff_net_2;
  const bool tanh = ctx.config.activation_fn == "gelu-approximate";
  if (ctx.fused() && tanh && x_fp8 && in.mode == LinearMode::fp8_matmul && out.mode == LinearMode::fp8_matmul) {
    const auto h = apply_linear(in, x, x_fp8);
    const auto [q, scale] = kernels::quantize_fp8_rows_gelu_tanh(h.reshape({-1, h.size(-1)}));
    auto sizes = x.sizes().vec();
    sizes.back() = out.out_features();
    return apply_fp8_matmul(out, {q, scale}, h.scalar_type()).view(sizes);
  }
  // A dense weight of x's dtype, or FP8 storage's weight dequantized to it: the GELU epilogue applies to both.
  const bool epilogue = ctx.fused() && tanh;
  const auto weight = epilogue && in.mode == LinearMode::fp8_storage
                          ? dequantize_fp8_rowwise(in.weight_fp8, in.weight_scale, x.scalar_type())
                          : in.weight;
  at::Tensor hidden;
  if (epilogue && weight.defined() && weight.scalar_type() == x.scalar_type())
    hidden = kernels::linear_gelu_tanh(x, weight, in.bias);
  else
    hidden = at::gelu(apply_linear(in, x, x_fp8), tanh ? "tanh" : "none");
  return apply_linear(out, hidden);
}

// LTXVideoTransformerBlock.forward
at::Tensor block_forward(const ForwardContext& ctx, const TransformerBlockWeights& w, int64_t layer, at::Tensor x,
                         const at::Tensor& context, const at::Tensor& temb,
                         const std::pair<at::Tensor, at::Tensor>& rope, const at::Tensor& text_bias) {
  const int64_t batch = x.size(0);
  const double eps = ctx.config.norm_eps;
  const bool fused = ctx.fused();
  // ada = table[None, None] + temb.reshape(B, T, 6, D); unbind order: shift_msa, scale_msa, gate_msa,
  // shift_mlp, scale_mlp, gate_mlp. The kernels read these [B, T, D] column slices in place.
  auto ada = w.scale_shift_table.unsqueeze(0).unsqueeze(0) + temb.reshape({batch, temb.size(1), 6, -1});
  auto shift_msa = ada.select(2, 0), scale_msa = ada.select(2, 1), gate_msa = ada.select(2, 2);
  auto shift_mlp = ada.select(2, 3), scale_mlp = ada.select(2, 4), gate_mlp = ada.select(2, 5);
  Fp8Rows rows;  // the FP8 rows of the activation that enters the next linears
  Fp8Rows* const rows_out = ctx.fp8_rows() ? &rows : nullptr;
  const auto& index = ctx.token_index;  // int32 [B, S]: each token's row of `ada` (Note [Timestep rows])
  auto norm_x = fused ? kernels::rms_norm_modulate(x, w.norm1_weight, eps, scale_msa, shift_msa, rows_out, index)
                      : kernels::rms_norm_modulate_reference(x, w.norm1_weight, eps, scale_msa, shift_msa, index);

  int64_t capture_layer = -1;
  if (ctx.capture && std::find(ctx.capture->layers.begin(), ctx.capture->layers.end(), layer) != ctx.capture->layers.end())
    capture_layer = layer;
  auto attn = attention_forward(ctx, w.attn1, norm_x, rows_out, at::Tensor(), &rope, at::Tensor(), capture_layer);
  x = fused ? kernels::gated_residual(x, attn, gate_msa, rows_out, index)
            : kernels::gated_residual_reference(x, attn, gate_msa, index);

  // Cross-attention: the raw residual stream is the query; no norm, no modulation, no gate. Its residual sum and
  // norm2 with the MLP modulation are one pass.
  attn = attention_forward(ctx, w.attn2, x, rows_out, context, nullptr, text_bias, -1);
  std::tie(x, norm_x) = fused ? kernels::residual_rms_norm_modulate(x, attn, at::Tensor(), w.norm2_weight, eps,
                                                                    scale_mlp, shift_mlp, rows_out, index)
                              : kernels::residual_rms_norm_modulate_reference(x, attn, at::Tensor(), w.norm2_weight,
                                                                              eps, scale_mlp, shift_mlp, index);
  auto ff = feed_forward(ctx, w, norm_x, rows_out);
  return fused ? kernels::gated_residual(x, ff, gate_mlp, nullptr, index)
               : kernels::gated_residual_reference(x, ff, gate_mlp, index);
}

void check_inputs(const TransformerConfig& config, const TransformerInputs& in) {
  const auto& h = in.hidden_states;
  LTXMPS_CHECK(h.defined() && h.dim() == 3, "transformer forward: hidden_states must be [batch, tokens, ",
               config.in_channels, "], got ", h.defined() ? h.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(h.size(2) == config.in_channels, "transformer forward: hidden_states has ", h.size(2),
               " channels, the model's in_channels is ", config.in_channels);
  LTXMPS_CHECK(at::isFloatingType(h.scalar_type()), "transformer forward: hidden_states must be floating point, got ",
               h.scalar_type());
  const int64_t B = h.size(0), S = h.size(1);
  LTXMPS_CHECK(B > 0 && S > 0, "transformer forward: hidden_states is empty: ", h.sizes());
  const auto& c = in.encoder_hidden_states;
  LTXMPS_CHECK(c.defined() && c.dim() == 3 && c.size(0) == B && c.size(2) == config.caption_channels && c.size(1) > 0,
               "transformer forward: encoder_hidden_states must be [", B, ", text tokens, ", config.caption_channels,
               "], got ", c.defined() ? c.sizes() : at::IntArrayRef{});
  const int64_t L = c.size(1);
  const auto& t = in.timestep;
  LTXMPS_CHECK(t.defined(), "transformer forward: timestep is missing");
  if (in.timestep_index) {
    const auto& index = *in.timestep_index;
    LTXMPS_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) >= 1, "transformer forward: with timestep_index, "
                 "timestep must be [", B, ", K] (its K values), got ", t.sizes());
    LTXMPS_CHECK(index.dim() == 2 && index.size(0) == B && index.size(1) == S &&
                     at::isIntegralType(index.scalar_type(), /*includeBool=*/false),
                 "transformer forward: timestep_index must be an integer [", B, ", ", S, "] tensor, got ",
                 index.scalar_type(), " ", index.sizes());
  } else {
    const bool per_sample = (t.dim() == 1 && t.size(0) == B) || (t.dim() == 2 && t.size(0) == B && t.size(1) == 1);
    const bool per_token = t.dim() == 2 && t.size(0) == B && t.size(1) == S;
    LTXMPS_CHECK(per_sample || per_token, "transformer forward: timestep must be [", B, "], [", B, ", 1] or [", B,
                 ", ", S, "] (per token), got ", t.sizes());
  }
  if (in.encoder_attention_mask) {
    const auto& m = *in.encoder_attention_mask;
    LTXMPS_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == L, "transformer forward: encoder_attention_mask must be [",
                 B, ", ", L, "], got ", m.sizes());
  }
  if (in.video_coords) {
    const auto& vc = *in.video_coords;
    LTXMPS_CHECK(vc.dim() == 3 && (vc.size(0) == B || vc.size(0) == 1) && vc.size(1) == 3 && vc.size(2) == S,
                 "transformer forward: video_coords must be [", B, ", 3, ", S, "] or [1, 3, ", S, "], got ",
                 vc.sizes());
    return;
  }
  LTXMPS_CHECK(in.num_frames && in.height && in.width,
               "transformer forward: give either video_coords or all of num_frames, height and width");
  LTXMPS_CHECK(*in.num_frames > 0 && *in.height > 0 && *in.width > 0,
               "transformer forward: num_frames, height and width must be > 0, got ", *in.num_frames, ", ", *in.height,
               ", ", *in.width);
  LTXMPS_CHECK(*in.num_frames * *in.height * *in.width == S, "transformer forward: num_frames * height * width = ",
               *in.num_frames, " * ", *in.height, " * ", *in.width, " = ", *in.num_frames * *in.height * *in.width,
               " but hidden_states has ", S, " tokens");
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Forward (LTXVideoTransformer3DModel.forward)

at::Tensor TransformerModel::forward(const TransformerInputs& in, const AttentionCapture* capture) const {
  check_inputs(config, in);
  c10::InferenceMode inference;
  if (capture) {
    LTXMPS_CHECK(static_cast<bool>(capture->visit) || static_cast<bool>(capture->visit_qk),
                 "AttentionCapture: visit and visit_qk are empty");
    for (auto layer : capture->layers)
      LTXMPS_CHECK(layer >= 0 && layer < config.num_layers, "AttentionCapture: layer ", layer, " is out of range [0, ",
                   config.num_layers, ")");
  }
  const auto options = at::TensorOptions().device(runtime.device).dtype(runtime.dtype);
  ForwardContext ctx{config, runtime, capture, {}, {}};
  const int64_t B = in.hidden_states.size(0);
  if (in.timestep_index) ctx.token_index = in.timestep_index->to(runtime.device, at::kInt).contiguous();

  auto hidden = in.hidden_states.to(options);
  const auto rope = rope_cos_sin(config, in, B, runtime.device);

  // Text mask -> additive bias (1 - mask)·(-10000) in the hidden_states dtype, [B, 1, L].
  // diffusers uses the *input* hidden_states dtype, which is the model dtype in every pipeline.
  at::Tensor text_bias;
  if (in.encoder_attention_mask) {
    text_bias = (1 - in.encoder_attention_mask->to(options)) * -10000.0;
    text_bias = text_bias.unsqueeze(1);
  }

  hidden = apply_linear(proj_in, hidden);

  // time_embed (AdaLayerNormSingle): sinusoidal projection in fp32, cast, TimestepEmbedding, SiLU, linear.
  // Note [Timestep rows]
  // The loops with conditioning give each token a timestep of its own that takes a few values per step (two in
  // image-to-video and object removal; Note [Few timesteps per step] in denoise.cpp). Given as [B, S], the time
  // embedding runs for every token and every block writes the modulation `table + temb` as a [B, S, 6, D] tensor that
  // its norms and residuals then read per token (12 of the 2B removal step's 119 ms of GPU time). With `timestep_index`
  // the embedding runs for the K values and the blocks keep [B, K, 6, D] rows, each kernel reading row index[b, s] for
  // token s (Note [Per-token modulation rows] in ltxmps_kernels). The values are the per-token forward's, except that
  // the time embedding's products see K rows instead of S, which a BLAS may round differently.
  auto t_proj = timestep_projection(in.timestep.to(runtime.device).flatten()).to(runtime.dtype);
  auto embedded_timestep = apply_linear(time_embed_emb_timestep_embedder_linear_1, t_proj);
  embedded_timestep = apply_linear(time_embed_emb_timestep_embedder_linear_2, at::silu(embedded_timestep));
  auto temb = apply_linear(time_embed_linear, at::silu(embedded_timestep));
  temb = temb.view({B, -1, temb.size(-1)});
  embedded_timestep = embedded_timestep.view({B, -1, embedded_timestep.size(-1)});

  // caption_projection (PixArtAlphaTextProjection, gelu tanh)
  auto context = apply_linear(caption_projection_linear_1, in.encoder_hidden_states.to(options));
  context = apply_linear(caption_projection_linear_2, at::gelu(context, "tanh"));
  context = context.view({B, -1, hidden.size(-1)});
  if (ctx.fp8_rows()) ctx.context_fp8 = quantize_fp8_rowwise(context.reshape({-1, context.size(-1)}).contiguous());

  if (streamer) {
    const auto& to = streamer->device();  // "cuda" is the current device, which the streamer resolved to cuda:N
    LTXMPS_CHECK(to.type() == runtime.device.type() && (!runtime.device.has_index() || to == runtime.device),
                 "transformer forward: the blocks stream to ", to, " but the model runs on ", runtime.device);
    streamer->for_each_block([&](int64_t i, const TransformerBlockWeights& block) {
      hidden = block_forward(ctx, block, i, hidden, context, temb, rope, text_bias);
    });
  } else {
    for (int64_t i = 0; i < config.num_layers; ++i)
      hidden = block_forward(ctx, transformer_blocks[static_cast<size_t>(i)], i, hidden, context, temb, rope, text_bias);
  }

  // Output modulation: shift is row 0, scale is row 1.
  auto mod = scale_shift_table.unsqueeze(0).unsqueeze(0) + embedded_timestep.unsqueeze(2);
  auto shift = mod.select(2, 0), scale = mod.select(2, 1);
  hidden = runtime.fused_kernels ? kernels::layer_norm_modulate(hidden, 1e-6, scale, shift, ctx.token_index)
                                 : kernels::layer_norm_modulate_reference(hidden, 1e-6, scale, shift, ctx.token_index);
  return apply_linear(proj_out, hidden);
}

// ---------------------------------------------------------------------------------------------------
// Attention capture helper

AttentionCapture head_mean_capture(std::vector<int64_t> layers, std::array<int64_t, 2> query_range,
                                   std::array<int64_t, 2> key_range, std::map<int64_t, at::Tensor>& maps,
                                   int64_t query_chunk) {
  LTXMPS_CHECK(query_range[0] >= 0 && query_range[1] > query_range[0] && key_range[0] >= 0 && key_range[1] > key_range[0],
               "head_mean_capture: empty or negative token range (queries [", query_range[0], ", ", query_range[1],
               "), keys [", key_range[0], ", ", key_range[1], "))");
  AttentionCapture capture;
  capture.layers = std::move(layers);
  capture.query_chunk = query_chunk;
  capture.visit = [&maps, query_range, key_range](int64_t layer, int64_t begin, const at::Tensor& probs) {
    const int64_t rows = probs.size(2);
    LTXMPS_CHECK(key_range[1] <= probs.size(3), "head_mean_capture: key range end ", key_range[1], " exceeds the ",
                 probs.size(3), " tokens");
    const int64_t lo = std::max(begin, query_range[0]), hi = std::min(begin + rows, query_range[1]);
    auto& map = maps[layer];
    if (!map.defined())
      map = at::zeros({probs.size(0), query_range[1] - query_range[0], key_range[1] - key_range[0]},
                      probs.options());
    if (lo >= hi) return;
    auto part = probs.narrow(2, lo - begin, hi - lo).narrow(3, key_range[0], key_range[1] - key_range[0]).mean(1);
    map.narrow(1, lo - query_range[0], hi - lo).copy_(part);
  };
  return capture;
}

// ---------------------------------------------------------------------------------------------------
// Loading

TransformerModel load_transformer(const std::filesystem::path& model_dir, const TransformerRuntime& runtime,
                                  std::optional<std::string> variant, std::optional<TransformerConfig> parsed) {
  LTXMPS_CHECK(std::filesystem::is_directory(model_dir), "transformer folder ", model_dir.string(),
               " does not exist or is not a folder");
  const auto config = parsed ? *parsed : TransformerConfig::from_file(model_dir / "config.json");
  const auto store = WeightStore::open_component(model_dir, std::move(variant));
  return load_strict<TransformerModel>(store, config, runtime);
}

TransformerModel load_lightricks_transformer(const std::filesystem::path& file, const TransformerRuntime& runtime,
                                             std::optional<TransformerConfig> config) {
  const auto store = WeightStore::open_lightricks_transformer(file);
  if (!config) {
    TransformerConfig c;
    auto shape = [&](const char* name) { return store.info(name).shape; };
    const auto proj_in = shape("proj_in.weight");  // [D, in_channels]
    c.in_channels = proj_in.at(1);
    c.attention_head_dim = proj_in.at(0) / c.num_attention_heads;
    c.caption_channels = shape("caption_projection.linear_1.weight").at(1);
    c.cross_attention_dim = shape("transformer_blocks.0.attn2.to_k.weight").at(1);
    c.out_channels = shape("proj_out.weight").at(0);
    c.norm_elementwise_affine = store.contains("transformer_blocks.0.norm1.weight");
    c.attention_bias = store.contains("transformer_blocks.0.attn1.to_q.bias");
    c.attention_out_bias = store.contains("transformer_blocks.0.attn1.to_out.0.bias");
    std::set<int64_t> blocks;
    for (const auto& name : store.names()) {
      const std::string prefix = "transformer_blocks.";
      if (name.rfind(prefix, 0) == 0) blocks.insert(std::stoll(name.substr(prefix.size())));
    }
    c.num_layers = static_cast<int64_t>(blocks.size());
    LTXMPS_CHECK(c.attention_head_dim * c.num_attention_heads == proj_in.at(0), file.string(),
                 ": proj_in.weight has ", proj_in.at(0), " rows, not a multiple of 32 heads; pass a config");
    config = c;
  }
  return load_strict<TransformerModel>(store, *config, runtime);
}

}  // namespace ltxmps::pipeline
