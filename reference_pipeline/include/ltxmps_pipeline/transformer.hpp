#pragma once
/// @file transformer.hpp
/// @brief `LTXVideoTransformer3DModel` (diffusers 0.42.1) as a flat struct of checkpoint tensors.
///
/// The caller patchifies: the model takes packed tokens `[B, S, in_channels]` and returns the velocity
/// `[B, S, out_channels]`. Layout, names and numerics follow diffusers'
/// `models/transformers/transformer_ltx.py`; docs/models/transformer.md describes the model and what is easy to
/// get wrong (RoPE layout, norms across heads, the mask bias, per-token timesteps).

#include "ltxmps_pipeline/linear.hpp"

#include "ltxmps/attention.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The `config.json` of a diffusers `transformer/` folder, field by field, with diffusers'
///        defaults (`LTXVideoTransformer3DModel.__init__`).
struct TransformerConfig {
  int64_t in_channels = 128;   ///< features of a packed token: latent channels · patch_size_t · patch_size²
  int64_t out_channels = 128;  ///< `null` or 0 in config.json means `in_channels`, as in diffusers.
  int64_t patch_size = 1;      ///< latents per token in height and width
  int64_t patch_size_t = 1;    ///< latent frames per token
  int64_t num_attention_heads = 32;    ///< heads of every attention
  int64_t attention_head_dim = 64;     ///< width of one head; D = heads · head_dim
  int64_t cross_attention_dim = 2048;  ///< width of the projected caption read by attn2; must equal D
  int64_t num_layers = 28;             ///< transformer blocks
  std::string activation_fn = "gelu-approximate";  ///< "gelu-approximate" or "gelu".
  std::string qk_norm = "rms_norm_across_heads";   ///< The only value diffusers accepts.
  bool norm_elementwise_affine = false;            ///< true adds `norm1.weight` / `norm2.weight`.
  double norm_eps = 1e-6;            ///< eps of the block RMS norms
  int64_t caption_channels = 4096;   ///< width of the text encoder's embeddings
  bool attention_bias = true;        ///< biases on to_q / to_k / to_v
  bool attention_out_bias = true;    ///< bias on to_out.0

  /// @brief `D = num_attention_heads * attention_head_dim`.
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }

  /// @brief Parses a config object. Keys starting with '_' (`_class_name`, `_diffusers_version`, ...)
  ///        are metadata; any other unknown key is an error naming it and `source`.
  static TransformerConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
  /// @brief Reads and parses `path` (a transformer `config.json`).
  static TransformerConfig from_file(const std::filesystem::path& path);
  /// @brief Throws ltxmps::Error when the values cannot describe a model (sizes, names); `source`
  ///        is named in the message.
  void validate(const std::string& source = "TransformerConfig") const;
};

/// @brief Where and in which precision the model runs.
struct TransformerRuntime {
  c10::Device device = c10::kCPU;  ///< where the weights live and the model runs
  /// Weights and activations (RoPE, the sinusoidal timestep projection and the norms' statistics
  /// are computed in float32 wherever diffusers does it).
  at::ScalarType dtype = at::kFloat;
  /// Kernel for every attention call (self and cross).
  ltxmps::AttentionOptions attention{};
  /// How the blocks' attention and feed-forward linears keep and multiply their weights; from_weights quantizes
  /// each block as it builds it (Note [Weight storage] in fp8.hpp). The other linears stay dense.
  LinearMode block_linears = LinearMode::dense;
  /// The fused kernels of ltxmps_kernels where they apply (CUDA); false runs their ATen references everywhere,
  /// which is the unfused op sequence. On the CPU both give the same bits (docs/kernels.md).
  bool fused_kernels = true;
  /// The blocks' self-attention through ltxmps::kernels::fp8_attention (cuDNN's FP8 attention on CUDA, its ATen
  /// model elsewhere; Note [FP8 attention] in ltxmps_kernels/fp8_attention.hpp). Cross-attention and a layer whose
  /// attention is captured keep `attention`.
  bool fp8_attention = false;
};

/// @brief Forward arguments, named after diffusers' `LTXVideoTransformer3DModel.forward`.
///
/// RoPE coordinates come either from `video_coords` (which wins when given, as in diffusers) or from
/// `num_frames`, `height`, `width` (latent units after patchify; `S` must equal their product) and
/// the optional `rope_interpolation_scale`; without a scale the grid stays integer (f, h, w).
struct TransformerInputs {
  at::Tensor hidden_states;          ///< [B, S, in_channels]
  at::Tensor encoder_hidden_states;  ///< [B, L, caption_channels]
  at::Tensor timestep;               ///< [B], [B, 1] (per sample) or [B, S] (per token); any real dtype
  /// Per-token timesteps drawn from a few values (Note [Timestep rows]): `timestep` is then [B, K], the values,
  /// and token s of batch entry b has timestep[b, timestep_index[b, s]] (integer [B, S], indices in [0, K)). The
  /// same forward as with the [B, S] timesteps, without a modulation row per token.
  std::optional<at::Tensor> timestep_index;
  std::optional<at::Tensor> encoder_attention_mask;  ///< [B, L], 1/true = attend
  ///@{
  /// The token grid (latent units after patchify) for RoPE when `video_coords` is not given.
  std::optional<int64_t> num_frames;
  std::optional<int64_t> height;
  std::optional<int64_t> width;
  ///@}
  std::optional<std::array<double, 3>> rope_interpolation_scale;  ///< (s_t, s_h, s_w)
  /// [B, 3, S] (frame, height, width), or [1, 3, S] for positions shared by every batch row (the CFG pair): RoPE
  /// is then computed once for the batch.
  std::optional<at::Tensor> video_coords;
};

/// @brief Optional read-out of self-attention probabilities (attention-map extraction).
///
/// For each layer in `layers`, `visit(layer, begin, probs)` is called with float32 probabilities
/// `probs [B, heads, rows, S]` of query rows `[begin, begin + rows)`, `query_chunk` rows at a time
/// (`ltxmps::visit_attention_probs`). The probabilities are computed in addition to the layer's
/// regular attention, so capture never changes the model's output; it costs one more q·kᵀ for each
/// captured layer. The visitor should reduce the chunk (mean over heads, a token range) and not keep
/// it: a full map is B·heads·S² floats.
struct AttentionCapture {
  std::vector<int64_t> layers;  ///< blocks whose self-attention (attn1) is read out
  int64_t query_chunk = 1024;   ///< query rows per call of `visit`
  std::function<void(int64_t layer, int64_t begin, const at::Tensor& probs)> visit;  ///< receives each chunk
  /// true: the model's own attention (q and k after their RMSNorm and RoPE). false: q and k after the
  /// RMSNorm but before RoPE, as OmnimatteZero's effects-mask maps compute them (its hook recomputes
  /// `norm_q(to_q(x))`, `norm_k(to_k(x))` from attn1's input and never applies the rotary embedding).
  /// Either way the layer's output uses RoPE.
  bool apply_rope = true;
  /// Instead of `visit` (when set): called once per captured layer with the query and key heads
  /// [B, heads, S, head_dim] (after RMSNorm; rotated when `apply_rope`) and the model's attention options
  /// (kernel, scale), so that a reduction can use a fused attention kernel rather than explicit probabilities.
  std::function<void(int64_t layer, const at::Tensor& q, const at::Tensor& k, const ltxmps::AttentionOptions& options)>
      visit_qk;
};

/// @brief A capture that accumulates, for each listed layer, the head-mean probabilities of query
///        tokens `[query_begin, query_end)` over key tokens `[key_begin, key_end)`:
///        `maps[layer]` becomes float32 `[B, query_end - query_begin, key_end - key_begin]`.
AttentionCapture head_mean_capture(std::vector<int64_t> layers, std::array<int64_t, 2> query_range,
                                   std::array<int64_t, 2> key_range, std::map<int64_t, at::Tensor>& maps,
                                   int64_t query_chunk = 1024);

/// @brief `LTXAttention` (`transformer_blocks.{i}.attn1` / `.attn2`).
struct TransformerAttentionWeights {
  ///@{
  /// Query, key and value projections (`to_q`, `to_k`, `to_v`).
  LinearWeights to_q, to_k, to_v;
  ///@}
  LinearWeights to_out_0;  ///< `to_out.0`
  ///@{
  /// `norm_q.weight` / `norm_k.weight`: torch.nn.RMSNorm over the full inner dim D.
  at::Tensor norm_q_weight, norm_k_weight;
  ///@}
};

/// @brief `LTXVideoTransformerBlock` (`transformer_blocks.{i}`).
struct TransformerBlockWeights {
  ///@{
  /// `norm1.weight` / `norm2.weight`: only with norm_elementwise_affine, else undefined.
  at::Tensor norm1_weight, norm2_weight;
  ///@}
  TransformerAttentionWeights attn1;      ///< self-attention with RoPE
  TransformerAttentionWeights attn2;      ///< cross-attention to the caption
  LinearWeights ff_net_0_proj;            ///< `ff.net.0.proj` D -> 4D
  LinearWeights ff_net_2;                 ///< `ff.net.2` 4D -> D
  at::Tensor scale_shift_table;           ///< [6, D]
};

class BlockStreamer;  // weight_streaming.hpp

/// @brief Supplies one weight by checkpoint name and expected shape (for example `StrictLoader::take`).
using TransformerWeightSource = std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;

/// @brief `LTXVideoTransformer3DModel` in eval mode: member names are the checkpoint names.
struct TransformerModel {
  TransformerConfig config;    ///< the checkpoint's config.json
  TransformerRuntime runtime;  ///< device, dtype, attention kernel

  LinearWeights proj_in;  ///< in_channels -> D
  at::Tensor scale_shift_table;                        ///< [2, D]: row 0 shift, row 1 scale
  LinearWeights time_embed_emb_timestep_embedder_linear_1;  ///< 256 -> D
  LinearWeights time_embed_emb_timestep_embedder_linear_2;  ///< D -> D
  LinearWeights time_embed_linear;                     ///< D -> 6D
  LinearWeights caption_projection_linear_1;           ///< caption_channels -> D
  LinearWeights caption_projection_linear_2;           ///< D -> D
  std::vector<TransformerBlockWeights> transformer_blocks;  ///< `transformer_blocks.{i}`
  LinearWeights proj_out;                                   ///< D -> out_channels
  /// Set when the blocks are streamed (Note [Streamed weights] in weight_streaming.hpp): `transformer_blocks` then
  /// live in host memory and forward() runs each block from the streamer's device copy; empty: resident blocks.
  std::shared_ptr<BlockStreamer> streamer;

  /// @brief Builds the model from `weights`, asked once for every tensor of the checkpoint (in a fixed
  ///        order); each tensor is moved to `runtime.device` / `runtime.dtype`.
  static TransformerModel from_weights(const TransformerConfig& config, const TransformerRuntime& runtime,
                                       const TransformerWeightSource& weights);

  /// @brief The velocity `[B, S, out_channels]` in `runtime.dtype` on `runtime.device`.
  ///        Inputs may live anywhere; they are checked and moved.
  at::Tensor forward(const TransformerInputs& inputs, const AttentionCapture* capture = nullptr) const;
};

/// @brief Loads a diffusers `transformer/` folder: `config.json` plus
///        `diffusion_pytorch_model[.variant].safetensors` (or its sharded index). Strict: missing,
///        unexpected and mis-shaped tensors are errors naming the file and tensor. A `config` already parsed
///        from the folder's config.json is used instead of reading it again.
TransformerModel load_transformer(const std::filesystem::path& model_dir, const TransformerRuntime& runtime,
                                  std::optional<std::string> variant = std::nullopt,
                                  std::optional<TransformerConfig> config = std::nullopt);

/// @brief Loads the transformer of an original Lightricks single-file checkpoint
///        (`model.diffusion_model.*` keys, renamed to diffusers names by the WeightStore).
///
/// Without `config`, the config is read off the tensors: D, in/out/caption/cross sizes from the
/// projections, the layer count from the block names, the optional norm weights and biases from their
/// presence, and `num_attention_heads = 32` (every released model) with head_dim = D / 32; the other
/// fields keep diffusers' defaults.
TransformerModel load_lightricks_transformer(const std::filesystem::path& file, const TransformerRuntime& runtime,
                                             std::optional<TransformerConfig> config = std::nullopt);

}  // namespace ltxmps::pipeline
