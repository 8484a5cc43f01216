// The plan -> component runtime rules and the per-model tensor visitors.
//
// Note [One visitor per model]
// Offload (OffloadScope's move function), device moves and dtype casts all walk a model's tensors through
// for_each_tensor(), so a weight added to a model struct is moved everywhere once it is listed here, and
// the runtime suite checks that the visitor reaches as many tensors as the loader created.

#include "ltxmps_pipeline/runtime.hpp"

#include <optional>

namespace ltxmps::pipeline {

namespace {

void visit(LinearWeights& w, const TensorVisitor& f) {
  f(w.weight);
  f(w.bias);
}
void visit(VaeConv3dWeights& w, const TensorVisitor& f) {
  f(w.weight);
  f(w.bias);
}
void visit(VaeTimeEmbedderWeights& w, const TensorVisitor& f) {
  visit(w.linear_1, f);
  visit(w.linear_2, f);
}
void visit(VaeResnetWeights& w, const TensorVisitor& f) {
  for (auto* c : {&w.conv1, &w.conv2, &w.conv_shortcut}) visit(*c, f);
  for (auto* t : {&w.norm3_weight, &w.norm3_bias, &w.per_channel_scale1, &w.per_channel_scale2, &w.scale_shift_table})
    f(*t);
}
void visit(VaeMidBlockWeights& w, const TensorVisitor& f) {
  visit(w.time_embedder, f);
  for (auto& r : w.resnets) visit(r, f);
}
void visit(VaeDownsamplerWeights& w, const TensorVisitor& f) { visit(w.conv, f); }
void visit(VaeUpsamplerWeights& w, const TensorVisitor& f) { visit(w.conv, f); }
template <typename T>
void visit(std::optional<T>& w, const TensorVisitor& f) {
  if (w) visit(*w, f);
}
void visit(TransformerAttentionWeights& a, const TensorVisitor& f) {
  for (auto* l : {&a.to_q, &a.to_k, &a.to_v, &a.to_out_0}) visit(*l, f);
  f(a.norm_q_weight);
  f(a.norm_k_weight);
}

}  // namespace

c10::Device home_device(const ltxmps::ExecutionPlan& plan) {
  return plan.offload.enabled ? plan.offload.home : plan.device;
}

c10::Device execution_device(const ltxmps::ExecutionPlan& plan) {
  return plan.offload.enabled ? plan.offload.execution : plan.device;
}

TransformerRuntime transformer_runtime(const ltxmps::ExecutionPlan& plan) {
  TransformerRuntime r;
  r.device = home_device(plan);
  r.dtype = plan.precision.transformer.compute;
  r.attention = ltxmps::AttentionOptions(plan.attention.kernel);
  return r;
}

VaeRuntime vae_runtime(const ltxmps::ExecutionPlan& plan) {
  VaeRuntime r;
  r.device = home_device(plan);
  r.dtype = plan.precision.vae.compute;
  return r;
}

T5Runtime t5_runtime(const ltxmps::ExecutionPlan& plan) {
  T5Runtime r;
  r.device = home_device(plan);
  r.dtype = plan.precision.text_encoder.compute;
  r.keep_in_fp32_modules = plan.precision.text_encoder.keep_in_fp32_modules;
  r.attention = ltxmps::AttentionOptions(plan.attention.kernel);
  return r;
}

void for_each_tensor(TransformerModel& m, const TensorVisitor& f) {
  for (auto* l : {&m.proj_in, &m.time_embed_emb_timestep_embedder_linear_1, &m.time_embed_emb_timestep_embedder_linear_2,
                  &m.time_embed_linear, &m.caption_projection_linear_1, &m.caption_projection_linear_2, &m.proj_out})
    visit(*l, f);
  f(m.scale_shift_table);
  for (auto& b : m.transformer_blocks) {
    f(b.norm1_weight);
    f(b.norm2_weight);
    visit(b.attn1, f);
    visit(b.attn2, f);
    visit(b.ff_net_0_proj, f);
    visit(b.ff_net_2, f);
    f(b.scale_shift_table);
  }
}

void for_each_tensor(VaeModel& m, const TensorVisitor& f) {
  auto& e = m.encoder;
  visit(e.conv_in, f);
  for (auto& b : e.down_blocks) {
    for (auto& r : b.resnets) visit(r, f);
    visit(b.downsampler, f);
    visit(b.conv_out, f);
  }
  visit(e.mid_block, f);
  visit(e.conv_out, f);
  auto& d = m.decoder;
  visit(d.conv_in, f);
  visit(d.mid_block, f);
  for (auto& b : d.up_blocks) {
    visit(b.conv_in, f);
    visit(b.time_embedder, f);
    visit(b.upsampler, f);
    for (auto& r : b.resnets) visit(r, f);
  }
  visit(d.conv_out, f);
  f(d.timestep_scale_multiplier);
  visit(d.time_embedder, f);
  f(d.scale_shift_table);
  f(m.latents_mean);
  f(m.latents_std);
}

void for_each_tensor(T5EncoderModel& m, const TensorVisitor& f) {
  f(m.shared);
  f(m.final_layer_norm);
  for (auto& b : m.block)
    for (auto* t : {&b.layer_0_layer_norm_weight, &b.q, &b.k, &b.v, &b.o, &b.relative_attention_bias,
                    &b.layer_1_layer_norm_weight, &b.wi, &b.wi_0, &b.wi_1, &b.wo})
      f(*t);
}

}  // namespace ltxmps::pipeline
