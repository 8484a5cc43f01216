#pragma once
/// @file runtime.hpp
/// @brief One source for "where and in which dtype does each component run" (from the ExecutionPlan) and
///        one tensor visitor per model, used by movers, offload and dtype casts.

#include "ltxmps_pipeline/latent_upsampler.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <ltxmps/plan.hpp>

#include <ATen/ATen.h>

#include <functional>

namespace ltxmps::pipeline {

/// @brief Where the components live between uses: the offload home (the CPU) under CPU offload, else the
///        plan's device.
c10::Device home_device(const ltxmps::ExecutionPlan& plan);
/// @brief Where the components run: the offload execution device under CPU offload, else the plan's device.
c10::Device execution_device(const ltxmps::ExecutionPlan& plan);

/// @brief The transformer's runtime for `plan` (home device, compute dtype, attention kernel).
TransformerRuntime transformer_runtime(const ltxmps::ExecutionPlan& plan);
/// @brief Throws when `plan` asks for FP8 attention and cuDNN cannot run it for `config`'s heads (Note [FP8 attention
///        head shapes]); the loaders call it before reading any weight. A plan for a simulated machine is not asked.
void check_fp8_attention_heads(const ltxmps::ExecutionPlan& plan, const TransformerConfig& config);
/// @brief The VAE's runtime for `plan`.
VaeRuntime vae_runtime(const ltxmps::ExecutionPlan& plan);
/// @brief The VAE tiling `plan` asks for: diffusers' enable_tiling() defaults when `plan.vae.tiling`, slicing when
///        `plan.vae.slicing`. The loaders apply it; a VAE built with VaeModel::from_weights() takes it by assignment
///        (`model.vae.tiling = vae_tiling(plan)`), or it decodes without tiles whatever the plan says.
VaeTiling vae_tiling(const ltxmps::ExecutionPlan& plan);
/// @brief The T5 encoder's runtime for `plan` (its float32 modules come from the plan's precision).
T5Runtime t5_runtime(const ltxmps::ExecutionPlan& plan);
/// @brief The latent upsampler's runtime for `plan`: the home device and the VAE's compute dtype.
LatentUpsamplerRuntime latent_upsampler_runtime(const ltxmps::ExecutionPlan& plan);

/// @brief Called with every weight tensor of a model (undefined optional tensors included; check defined()).
using TensorVisitor = std::function<void(at::Tensor&)>;

/// @brief Visits every weight of the transformer.
void for_each_tensor(TransformerModel& model, const TensorVisitor& visit);
/// @brief Visits every weight of one transformer block (in the order for_each_tensor(TransformerModel&) does).
void for_each_tensor(TransformerBlockWeights& block, const TensorVisitor& visit);
/// @brief Visits every weight and buffer of the VAE (latents_mean / latents_std included).
void for_each_tensor(VaeModel& model, const TensorVisitor& visit);
/// @brief Visits every weight of the T5 encoder.
void for_each_tensor(T5EncoderModel& model, const TensorVisitor& visit);
/// @brief Visits every weight of one T5 block (in the order for_each_tensor(T5EncoderModel&) does).
void for_each_tensor(T5BlockWeights& block, const TensorVisitor& visit);
/// @brief Visits every weight of the latent upsampler.
void for_each_tensor(LatentUpsamplerModel& model, const TensorVisitor& visit);

/// @brief Moves every tensor of `model` to `device` and records it in the model's runtime.
template <typename Model>
void move_model(Model& model, const c10::Device& device) {
  for_each_tensor(model, [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device);
  });
  model.runtime.device = device;
}

/// @brief move_model() for the transformer: a streamed transformer's blocks stay in host memory, where its
///        streamer copies them from (Note [Streamed weights] in weight_streaming.hpp); every other weight moves.
void move_model(TransformerModel& model, const c10::Device& device);
/// @brief move_model() for the T5 encoder: a streamed encoder's blocks stay in host memory, where forward() copies
///        them from (Note [Streamed T5] in t5_streaming.hpp); every other weight moves.
void move_model(T5EncoderModel& model, const c10::Device& device);

/// @brief Number of defined tensors of `model` (for checks that the visitor misses no weight).
template <typename Model>
int64_t count_tensors(Model& model) {
  int64_t n = 0;
  for_each_tensor(model, [&](at::Tensor& t) { n += t.defined() ? 1 : 0; });
  return n;
}

}  // namespace ltxmps::pipeline
