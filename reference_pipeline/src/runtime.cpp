// The plan -> component runtime rules and the per-model tensor visitors.
//
// Note [One visitor per model]
// Offload (OffloadScope's move function), device moves and dtype casts all walk a model's tensors through
// for_each_tensor(), so a weight added to a model struct is moved everywhere once it is listed here, and
// the runtime suite checks that the visitor reaches as many tensors as the loader created.

#include "ltxmps_pipeline/runtime.hpp"

#include "ltxmps_pipeline/weight_streaming.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps_kernels/fp8_attention.hpp"

#include <optional>
#include <unordered_set>
#include <vector>

namespace ltxmps::pipeline {

namespace {

void visit(LinearWeights& w, const TensorVisitor& f) {
  f(w.weight);
  f(w.bias);
  f(w.weight_fp8);
  f(w.weight_scale);
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
  if (plan.precision.fp8_matmul) r.block_linears = LinearMode::fp8_matmul;
  else if (ltxmps::transformer_weights_fp8(plan)) r.block_linears = LinearMode::fp8_storage;
  if (plan.precision.fp8_attention) {
    // The planner checked the device; what this build and the loaded cuDNN can do is known only here (a plan for a
    // simulated machine describes that machine, not this build).
    const auto reason = plan.machine.simulated ? std::string()
                                               : ltxmps::kernels::fp8_attention_unavailable(execution_device(plan));
    LTXMPS_CHECK(reason.empty(), "fp8_attention (--fp8-attention): ", reason);
    r.fp8_attention = true;
  }
  return r;
}

void check_fp8_attention_heads(const ltxmps::ExecutionPlan& plan, const TransformerConfig& config) {
  if (!plan.precision.fp8_attention || plan.machine.simulated) return;
  const auto reason = ltxmps::kernels::fp8_attention_unsupported(execution_device(plan), config.num_attention_heads,
                                                                 config.attention_head_dim);
  LTXMPS_CHECK(reason.empty(), "fp8_attention (--fp8-attention): the transformer's self-attention (",
               config.num_attention_heads, " heads x ", config.attention_head_dim, ") cannot run in FP8: ", reason);
}

VaeRuntime vae_runtime(const ltxmps::ExecutionPlan& plan) {
  VaeRuntime r;
  r.device = home_device(plan);
  r.dtype = plan.precision.vae.compute;
  r.channels_last = plan.vae.channels_last;
  return r;
}

VaeTiling vae_tiling(const ltxmps::ExecutionPlan& plan) {
  VaeTiling t;
  if (plan.vae.tiling) t.enable_tiling();
  t.use_slicing = plan.vae.slicing;
  return t;
}

T5Runtime t5_runtime(const ltxmps::ExecutionPlan& plan) {
  T5Runtime r;
  r.device = home_device(plan);
  r.dtype = plan.precision.text_encoder.compute;
  r.keep_in_fp32_modules = plan.precision.text_encoder.keep_in_fp32_modules;
  r.attention = ltxmps::AttentionOptions(plan.attention.kernel);
  return r;
}

LatentUpsamplerRuntime latent_upsampler_runtime(const ltxmps::ExecutionPlan& plan) {
  // The upsampler is a small conv net on VAE latents; it follows the VAE's precision policy (float32
  // by default) rather than the transformer's.
  LatentUpsamplerRuntime r;
  r.device = home_device(plan);
  r.dtype = plan.precision.vae.compute;
  return r;
}

void for_each_tensor(TransformerModel& m, const TensorVisitor& f) {
  for (auto* l : {&m.proj_in, &m.time_embed_emb_timestep_embedder_linear_1, &m.time_embed_emb_timestep_embedder_linear_2,
                  &m.time_embed_linear, &m.caption_projection_linear_1, &m.caption_projection_linear_2, &m.proj_out})
    visit(*l, f);
  f(m.scale_shift_table);
  for (auto& b : m.transformer_blocks) for_each_tensor(b, f);
}

void for_each_tensor(TransformerBlockWeights& b, const TensorVisitor& f) {
  f(b.norm1_weight);
  f(b.norm2_weight);
  visit(b.attn1, f);
  visit(b.attn2, f);
  visit(b.ff_net_0_proj, f);
  visit(b.ff_net_2, f);
  f(b.scale_shift_table);
}

namespace {

// Moves every weight of `model` but those of `blocks` when `streamed` (they stay in host memory for the streamer).
template <typename Model, typename Block>
void move_all_but_streamed(Model& model, std::vector<Block>& blocks, bool streamed, const c10::Device& device) {
  std::unordered_set<const c10::TensorImpl*> in_blocks;
  if (streamed)
    for (auto& b : blocks)
      for_each_tensor(b, [&](at::Tensor& t) {
        if (t.defined()) in_blocks.insert(t.unsafeGetTensorImpl());
      });
  for_each_tensor(model, [&](at::Tensor& t) {
    if (t.defined() && in_blocks.count(t.unsafeGetTensorImpl()) == 0) t = t.to(device);
  });
  model.runtime.device = device;
}

}  // namespace

void move_model(TransformerModel& model, const c10::Device& device) {
  move_all_but_streamed(model, model.transformer_blocks, model.streamer != nullptr, device);
  // Off its device (model-level offload) a streamed transformer needs no ring: the other phases get its memory.
  if (model.streamer != nullptr && device != model.streamer->device()) model.streamer->park();
}

void move_model(T5EncoderModel& model, const c10::Device& device) {
  move_all_but_streamed(model, model.block, model.streamed_blocks, device);
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
  for (auto& b : m.block) for_each_tensor(b, f);
}

void for_each_tensor(T5BlockWeights& b, const TensorVisitor& f) {
  for (auto* t : {&b.layer_0_layer_norm_weight, &b.q, &b.k, &b.v, &b.o, &b.relative_attention_bias,
                  &b.layer_1_layer_norm_weight, &b.wi, &b.wi_0, &b.wi_1, &b.wo})
    f(*t);
}

void for_each_tensor(LatentUpsamplerModel& m, const TensorVisitor& f) {
  auto layer = [&](LatentUpsamplerLayer& l) {
    f(l.weight);
    f(l.bias);
  };
  auto blocks = [&](std::vector<LatentUpsamplerResBlockWeights>& bs) {
    for (auto& b : bs)
      for (auto* l : {&b.conv1, &b.norm1, &b.conv2, &b.norm2}) layer(*l);
  };
  layer(m.initial_conv);
  layer(m.initial_norm);
  blocks(m.res_blocks);
  layer(m.upsampler_0);
  blocks(m.post_upsample_res_blocks);
  layer(m.final_conv);
}

}  // namespace ltxmps::pipeline
