// Component sizes for the memory budget (Note [Weight budget] in ltxmps/memory_budget.hpp).

#include "ltxmps_pipeline/weight_plan.hpp"

#include "ltxmps_pipeline/fp8.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/t5_streaming.hpp"
#include "ltxmps_pipeline/weight_streaming.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

namespace {

at::Tensor meta_tensor(const std::vector<int64_t>& shape, at::ScalarType dtype = at::kFloat) {
  return at::empty(shape, at::TensorOptions().device(c10::kMeta).dtype(dtype));
}

template <typename Model>
int64_t model_bytes(Model& model) {
  int64_t n = 0;
  for_each_tensor(model, [&](at::Tensor& t) { n += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0; });
  return n;
}

// The transformer built by its own loader code on the meta device: exact shapes and dtypes, no memory.
void transformer_sizes(const TransformerConfig& config, const ltxmps::ExecutionPlan& plan, ltxmps::TransformerSizes& out) {
  auto runtime = transformer_runtime(plan);
  runtime.device = c10::kMeta;
  const auto meta = [](const std::string&, const std::vector<int64_t>& shape) { return meta_tensor(shape); };
  runtime.block_linears = LinearMode::dense;
  auto dense = TransformerModel::from_weights(config, runtime, meta);
  out.bytes = model_bytes(dense);
  out.blocks = static_cast<int64_t>(dense.transformer_blocks.size());
  out.block_bytes = out.blocks > 0 ? block_bytes(dense.transformer_blocks.front()) : 0;
  out.dtype = ltxmps::dtype_name(runtime.dtype);
  if (!ltxmps::fp8_storage_supported(plan.device)) return;
  runtime.block_linears = LinearMode::fp8_storage;
  auto fp8 = TransformerModel::from_weights(config, runtime, meta);
  out.fp8_bytes = model_bytes(fp8);
  out.fp8_block_bytes = out.blocks > 0 ? block_bytes(fp8.transformer_blocks.front()) : 0;
  // The layer dequantized for the matmul that runs; under FP8 matmul only the layers that fall back to storage.
  if (plan.precision.fp8_matmul) runtime.block_linears = LinearMode::fp8_matmul;
  out.fp8_dequantized_bytes = fp8_dequantized_bytes(config, runtime);
}

int64_t phase_activations(const MemoryEstimate& estimate, std::initializer_list<const char*> names) {
  int64_t n = 0;
  for (const auto& p : estimate.phases)
    for (const char* name : names)
      if (p.name == name) n = std::max(n, p.activation_bytes);
  return n;
}

}  // namespace

ltxmps::WeightSizes weight_sizes(const TransformerConfig& transformer, const VaeConfig& vae,
                                 const std::optional<T5Config>& text_encoder, const ltxmps::ExecutionPlan& plan,
                                 const MemoryRequest& request) {
  ltxmps::WeightSizes s;
  transformer_sizes(transformer, plan, s.transformer);
  auto vr = vae_runtime(plan);
  vr.device = c10::kMeta;
  auto vm = VaeModel::from_weights(vae, vr, [](const std::string&, const std::vector<int64_t>& shape) {
    return meta_tensor(shape);
  });
  s.vae = model_bytes(vm);
  const bool encode_text = request.encode_text && text_encoder.has_value();
  if (encode_text) {
    auto er = t5_runtime(plan);
    er.device = c10::kMeta;
    auto em = T5EncoderModel::from_weights(
        *text_encoder, er,
        [](const std::string&, const std::vector<int64_t>& shape, at::ScalarType dtype) { return meta_tensor(shape, dtype); });
    s.text_encoder = model_bytes(em);
    s.text_encoder_blocks = static_cast<int64_t>(em.block.size());
    for (auto& b : em.block) {
      const int64_t bytes = t5_block_bytes(b);
      s.text_encoder_blocks_bytes += bytes;
      s.text_encoder_block_bytes = std::max(s.text_encoder_block_bytes, bytes);
    }
  }
  // The activations do not depend on where the weights live: estimate them with the weights unplanned.
  auto unplanned = plan;
  unplanned.weights = ltxmps::WeightPlan{};
  const auto estimate =
      estimate_request_memory(transformer, vae, encode_text ? text_encoder : std::nullopt, unplanned, request);
  s.text_encoder_activations = phase_activations(estimate, {"text encoder"});
  s.transformer_activations = phase_activations(estimate, {"transformer loop", "effects pass"});
  s.vae_activations = phase_activations(estimate, {"vae decode", "vae encode"});
  s.keep_text_encoder = encode_text && !request.release_text_encoder;
  return s;
}

void plan_model_weights(ltxmps::ExecutionPlan& plan, const TransformerConfig& transformer, const VaeConfig& vae,
                        const std::optional<T5Config>& text_encoder, const MemoryRequest& request) {
  ltxmps::plan_weights(plan, weight_sizes(transformer, vae, text_encoder, plan, request));
}

}  // namespace ltxmps::pipeline
