// FP8 (e4m3) row-wise quantization and the conversion of the transformer's block linears
// (Note [Weight storage] in fp8.hpp).

#include "ltxmps_pipeline/fp8.hpp"

#include "ltxmps_kernels/fused.hpp"

#include "ltxmps/error.hpp"

#include <algorithm>
#include <cmath>
#include <map>

namespace ltxmps::pipeline {

Fp8Rows quantize_fp8_rowwise(const at::Tensor& rows) {
  LTXMPS_CHECK(rows.defined() && rows.dim() == 2 && at::isFloatingType(rows.scalar_type()),
               "quantize_fp8_rowwise: expected a 2-D floating-point tensor, got ",
               rows.defined() ? c10::str(rows.scalar_type(), " ", rows.sizes()) : std::string("an undefined tensor"));
  LTXMPS_CHECK(!rows.device().is_mps(), "quantize_fp8_rowwise: MPS has no float8 dtype; keep the weights in the "
                                        "compute dtype there (weight_storage=compute)");
  LTXMPS_CHECK(rows.size(1) > 0, "quantize_fp8_rowwise: rows of width 0, got ", rows.sizes());
  auto [q, scale] = kernels::quantize_fp8_rows(rows);  // Note [FP8 row quantization] in ltxmps_kernels
  return {std::move(q), std::move(scale)};
}

at::Tensor dequantize_fp8_rowwise(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype) {
  return kernels::dequantize_fp8_rows(q, scale, dtype);
}

bool fp8_matmul_supported(int64_t in_features, int64_t out_features) noexcept {
  return in_features % 16 == 0 && out_features % 16 == 0;
}

LinearMode quantize_linear(LinearWeights& layer, LinearMode mode) {
  if (mode == LinearMode::dense) return layer.mode;
  LTXMPS_CHECK(layer.mode == LinearMode::dense && layer.weight.defined(),
               "quantize_linear: the layer is already ", to_string(layer.mode), " (quantize a dense layer once)");
  auto rows = quantize_fp8_rowwise(layer.weight);
  const bool matmul = mode == LinearMode::fp8_matmul && fp8_matmul_supported(layer.weight.size(1), layer.weight.size(0));
  layer.weight_fp8 = std::move(rows.q);
  layer.weight_scale = std::move(rows.scale);
  layer.weight = at::Tensor();
  layer.mode = matmul ? LinearMode::fp8_matmul : LinearMode::fp8_storage;
  return layer.mode;
}

namespace {

// Block is TransformerBlockWeights or its const; f(name, layer) for each of its quantized linears.
template <typename Block, typename F>
void for_each_block_linear(Block& b, F f) {
  for (auto* a : {&b.attn1, &b.attn2}) {
    const std::string prefix = a == &b.attn1 ? "attn1." : "attn2.";
    f(prefix + "to_q", a->to_q);
    f(prefix + "to_k", a->to_k);
    f(prefix + "to_v", a->to_v);
    f(prefix + "to_out.0", a->to_out_0);
  }
  f(std::string("ff.net.0.proj"), b.ff_net_0_proj);
  f(std::string("ff.net.2"), b.ff_net_2);
}

int64_t tensor_bytes(const at::Tensor& t) {
  return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
}

}  // namespace

void quantize_block(TransformerBlockWeights& block, LinearMode mode) {
  for_each_block_linear(block, [mode](const std::string&, LinearWeights& l) { quantize_linear(l, mode); });
}

void quantize_transformer(TransformerModel& model, LinearMode mode) {
  LTXMPS_CHECK(model.runtime.block_linears == LinearMode::dense, "quantize_transformer: the model's blocks are "
               "already ", to_string(model.runtime.block_linears));
  for (auto& b : model.transformer_blocks) quantize_block(b, mode);
  model.runtime.block_linears = mode;
}

std::vector<BlockLinearShape> block_linear_shapes(const TransformerConfig& config) {
  const int64_t D = config.inner_dim(), C = config.cross_attention_dim;
  return {{"attn1.to_q", D, D},  {"attn1.to_k", D, D},  {"attn1.to_v", D, D},       {"attn1.to_out.0", D, D},
          {"attn2.to_q", D, D},  {"attn2.to_k", C, D},  {"attn2.to_v", C, D},       {"attn2.to_out.0", D, D},
          {"ff.net.0.proj", D, 4 * D}, {"ff.net.2", 4 * D, D}};
}

int64_t fp8_dequantized_bytes(const TransformerConfig& config, const TransformerRuntime& runtime) {
  if (runtime.block_linears == LinearMode::dense || config.num_layers == 0) return 0;
  int64_t largest = 0;
  for (const auto& s : block_linear_shapes(config))
    if (runtime.block_linears == LinearMode::fp8_storage || !fp8_matmul_supported(s.in_features, s.out_features))
      largest = std::max(largest, s.in_features * s.out_features);
  return largest * static_cast<int64_t>(c10::elementSize(runtime.dtype));
}

std::vector<ltxmps::Diagnostic> fp8_diagnostics(const TransformerModel& model) {
  std::vector<ltxmps::Diagnostic> out;
  if (model.runtime.block_linears == LinearMode::dense) return out;
  std::map<LinearMode, int64_t> count;
  std::map<std::string, std::pair<int64_t, int64_t>> fell_back;  // name -> (in, out)
  int64_t fp8_bytes = 0, dense_bytes = 0;
  const int64_t compute_size = static_cast<int64_t>(c10::elementSize(model.runtime.dtype));
  for (const auto& b : model.transformer_blocks) {
    for_each_block_linear(b, [&](const std::string& name, const LinearWeights& l) {
      ++count[l.mode];
      fp8_bytes += tensor_bytes(l.weight_fp8) + tensor_bytes(l.weight_scale) + tensor_bytes(l.weight);
      dense_bytes += l.in_features() * l.out_features() * compute_size;
      if (model.runtime.block_linears == LinearMode::fp8_matmul && l.mode != LinearMode::fp8_matmul)
        fell_back.emplace(name, std::make_pair(l.in_features(), l.out_features()));
    });
  }
  constexpr double kMiB = 1024.0 * 1024.0;
  out.push_back({ltxmps::Severity::info, "transformer.weights", "fp8.loaded",
                 c10::str(count[LinearMode::fp8_matmul] + count[LinearMode::fp8_storage], " block linears in FP8 e4m3 (",
                          count[LinearMode::fp8_matmul], " FP8 matmul, ", count[LinearMode::fp8_storage],
                          " FP8 storage): ", std::lround(static_cast<double>(fp8_bytes) / kMiB), " MiB instead of ",
                          std::lround(static_cast<double>(dense_bytes) / kMiB), " MiB in ",
                          c10::toString(model.runtime.dtype),
                          "; proj_in, proj_out, time_embed and caption_projection stay in the compute dtype "
                          "(Note [Weight storage])")});
  for (const auto& [name, shape] : fell_back)
    out.push_back({ltxmps::Severity::warning, "transformer.weights", "fp8.matmul_fallback",
                   c10::str("transformer_blocks.*.", name, " (", shape.first, " -> ", shape.second,
                            " features) uses FP8 storage and a ", c10::toString(model.runtime.dtype),
                            " matmul: at::_scaled_mm needs both sizes to be multiples of 16")});
  return out;
}

}  // namespace ltxmps::pipeline
