#pragma once
/// @file attention.hpp
/// @brief Attention kernels: SDPA by default, and a float32-softmax ("upcast") path.

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>

namespace ltxmps {

/// @brief How `attention()` computes softmax(q·kᵀ·scale + mask)·v.
///
/// Note [Softmax upcast]
/// In half precision the score matrix q·kᵀ can overflow (fp16 max is 65504) and the softmax of a long
/// row loses mass to rounding; a NaN or a black frame follows. diffusers' `Attention(upcast_softmax=True,
/// upcast_attention=True)` computes the scores and the softmax in float32 and casts the probabilities
/// back; ComfyUI forces that upcast for fp16 on macOS >= 14.5; the Apple Silicon port of LTX-Video
/// object removal needed it for attention-map extraction. `at::scaled_dot_product_attention` offers
/// no per-call switch for softmax precision (its CUDA kernels accumulate in float32, the MPS and math
/// paths choose internally), so the upcast path is written out here and the plan picks it where the
/// device's half-precision softmax is not trusted.
enum class AttentionKernel {
  /// `at::scaled_dot_product_attention` (flash / memory-efficient / math, chosen by LibTorch).
  sdpa,
  /// Scores and softmax in the input dtype, written out (diffusers' AttnProcessor without upcast).
  /// Kept as the reference for what goes wrong without the upcast; never chosen by a plan.
  math,
  /// Scores and softmax in float32, probabilities cast back to the value dtype (diffusers upcast).
  upcast,
};

/// @brief The name of a kernel, as used in plans and diagnostics.
inline const char* to_string(AttentionKernel kernel) noexcept {
  switch (kernel) {
    case AttentionKernel::sdpa: return "sdpa";
    case AttentionKernel::math: return "math";
    case AttentionKernel::upcast: return "upcast";
  }
  return "?";
}

/// @brief Options of `attention()` and `attention_probs()`.
struct AttentionOptions {
  /// Options with every field given or defaulted (`{kernel}` is enough for the common case).
  AttentionOptions(AttentionKernel kernel_ = AttentionKernel::sdpa, std::optional<double> scale_ = std::nullopt,
                   int64_t query_chunk_ = 0)
      : kernel(kernel_), scale(scale_), query_chunk(query_chunk_) {}
  /// Which kernel computes the attention.
  AttentionKernel kernel = AttentionKernel::sdpa;
  /// Softmax scale; 1/sqrt(head_dim) when empty.
  std::optional<double> scale;
  /// Queries per chunk for the written-out kernels (0: all at once). Bounds the float32 score
  /// buffer to batch·heads·chunk·keys elements.
  int64_t query_chunk = 0;
};

namespace detail {

inline void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* who) {
  LTXMPS_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, who,
               ": query, key and value must be [batch, heads, tokens, head_dim], got query ", q.sizes(),
               ", key ", k.sizes(), ", value ", v.sizes());
  LTXMPS_CHECK(q.size(0) == k.size(0) && k.size(0) == v.size(0) && q.size(1) == k.size(1) &&
                   k.size(1) == v.size(1) && q.size(3) == k.size(3) && k.size(2) == v.size(2),
               who, ": incompatible shapes query ", q.sizes(), ", key ", k.sizes(), ", value ", v.sizes());
  LTXMPS_CHECK(q.device() == k.device() && k.device() == v.device(), who,
               ": query, key and value must be on one device, got ", q.device(), ", ", k.device(), ", ",
               v.device());
}

inline double softmax_scale(const at::Tensor& q, const std::optional<double>& scale) {
  return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
}

/// The mask as an additive bias in `dtype` (a bool mask means true = attend).
inline at::Tensor additive_mask(const at::Tensor& mask, at::ScalarType dtype) {
  if (mask.scalar_type() == at::kBool) {
    auto bias = at::zeros(mask.sizes(), mask.options().dtype(dtype));
    return bias.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  }
  return mask.to(dtype);
}

/// Rows [begin, end) of a mask broadcastable to [B, H, Sq, Sk] (a mask with Sq == 1 is shared).
inline at::Tensor mask_rows(const at::Tensor& mask, int64_t begin, int64_t end) {
  if (mask.dim() >= 2 && mask.size(-2) != 1) return mask.narrow(-2, begin, end - begin);
  return mask;
}

/// Probabilities of query rows [begin, end) in float32 (upcast) or the input dtype (math).
inline at::Tensor probs_rows(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& mask,
                             double scale, bool float32, int64_t begin, int64_t end) {
  const auto dtype = float32 ? at::kFloat : q.scalar_type();
  auto scores = at::matmul(q.narrow(2, begin, end - begin).to(dtype), k.to(dtype).transpose(-2, -1));
  scores.mul_(scale);
  if (mask) scores = scores + additive_mask(mask_rows(*mask, begin, end), dtype);
  return at::softmax(scores, -1);
}

inline void check_mask(const std::optional<at::Tensor>& mask, const at::Tensor& q, const at::Tensor& k,
                       const char* who) {
  if (!mask) return;
  LTXMPS_CHECK(mask->dim() <= 4, who, ": attn_mask must broadcast to [batch, heads, queries, keys], got ",
               mask->sizes());
  LTXMPS_CHECK(mask->dim() == 0 || mask->size(-1) == k.size(2) || mask->size(-1) == 1, who,
               ": attn_mask's last dimension must be the key count ", k.size(2), ", got ", mask->sizes());
  LTXMPS_CHECK(mask->device() == q.device(), who, ": attn_mask is on ", mask->device(), " but query is on ",
               q.device());
}

inline int64_t chunk_length(int64_t requested, int64_t queries) {
  LTXMPS_CHECK(requested >= 0, "AttentionOptions::query_chunk must be >= 0, got ", requested);
  return requested == 0 ? queries : std::min(requested, queries);
}

}  // namespace detail

/// @brief softmax(q·kᵀ·scale + mask)·v for q, k, v of shape [batch, heads, tokens, head_dim].
///
/// @param q queries [batch, heads, queries, head_dim]
/// @param k keys [batch, heads, keys, head_dim]
/// @param v values [batch, heads, keys, value_dim]
/// @param options kernel, scale and query chunking
/// @param attn_mask Either an additive float bias or a bool mask (true = attend), broadcastable to
///        [batch, heads, queries, keys].
/// @return [batch, heads, queries, head_dim] in the dtype of `v`.
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& attn_mask = std::nullopt,
                            const AttentionOptions& options = {}) {
  detail::check_qkv(q, k, v, "ltxmps::attention");
  detail::check_mask(attn_mask, q, k, "ltxmps::attention");
  const double scale = detail::softmax_scale(q, options.scale);
  if (options.kernel == AttentionKernel::sdpa) {
    std::optional<at::Tensor> mask;
    if (attn_mask) mask = attn_mask->scalar_type() == at::kBool ? *attn_mask : attn_mask->to(q.scalar_type());
    return at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, scale);
  }
  const bool float32 = options.kernel == AttentionKernel::upcast;
  const int64_t queries = q.size(2);
  const int64_t chunk = detail::chunk_length(options.query_chunk, queries);
  auto out = at::empty({q.size(0), q.size(1), queries, v.size(3)}, v.options());
  for (int64_t begin = 0; begin < queries; begin += chunk) {
    const int64_t end = std::min(queries, begin + chunk);
    auto probs = detail::probs_rows(q, k, attn_mask, scale, float32, begin, end);
    out.narrow(2, begin, end - begin).copy_(at::matmul(probs.to(v.scalar_type()), v));
  }
  return out;
}

/// @brief Calls `visit(begin, probs)` for consecutive query chunks with float32 attention
///        probabilities `probs` of shape [batch, heads, end - begin, keys].
///
/// For attention-map extraction (object removal): the float32 buffer is bounded by the chunk, and
/// the visitor reduces it (mean over heads, a token subset) before the next chunk is computed.
inline void visit_attention_probs(const at::Tensor& q, const at::Tensor& k,
                                  const std::optional<at::Tensor>& attn_mask, int64_t query_chunk,
                                  const std::function<void(int64_t begin, const at::Tensor& probs)>& visit,
                                  std::optional<double> scale = std::nullopt) {
  detail::check_qkv(q, k, k, "ltxmps::visit_attention_probs");
  detail::check_mask(attn_mask, q, k, "ltxmps::visit_attention_probs");
  const int64_t queries = q.size(2);
  const int64_t chunk = detail::chunk_length(query_chunk, queries);
  const double s = detail::softmax_scale(q, scale);
  for (int64_t begin = 0; begin < queries; begin += chunk) {
    const int64_t end = std::min(queries, begin + chunk);
    visit(begin, detail::probs_rows(q, k, attn_mask, s, /*float32=*/true, begin, end));
  }
}

/// @brief Float32 attention probabilities [batch, heads, queries, keys], computed chunk by chunk.
inline at::Tensor attention_probs(const at::Tensor& q, const at::Tensor& k,
                                  const std::optional<at::Tensor>& attn_mask = std::nullopt,
                                  int64_t query_chunk = 1024, std::optional<double> scale = std::nullopt) {
  auto out = at::empty({q.size(0), q.size(1), q.size(2), k.size(2)}, q.options().dtype(at::kFloat));
  visit_attention_probs(
      q, k, attn_mask, query_chunk,
      [&](int64_t begin, const at::Tensor& probs) { out.narrow(2, begin, probs.size(2)).copy_(probs); }, scale);
  return out;
}

}  // namespace ltxmps
