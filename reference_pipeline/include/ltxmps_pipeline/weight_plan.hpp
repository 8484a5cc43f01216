#pragma once
/// @file weight_plan.hpp
/// @brief The second planning step for a model: its component sizes (from the configs alone) and the request's
///        activation estimate turned into ltxmps::WeightSizes, then ltxmps::plan_weights() (Note [Weight budget]).

#include "ltxmps_pipeline/memory_estimate.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <ltxmps/plan.hpp>

#include <optional>

namespace ltxmps::pipeline {

/// @brief The weight bytes of each component (built on the meta device from the configs, in the plan's dtypes;
///        the transformer also with FP8 block linears where the device stores FP8), per transformer block, and the
///        activation peaks of `request` (estimate_request_memory()). `text_encoder` empty: none is loaded.
ltxmps::WeightSizes weight_sizes(const TransformerConfig& transformer, const VaeConfig& vae,
                                 const std::optional<T5Config>& text_encoder, const ltxmps::ExecutionPlan& plan,
                                 const MemoryRequest& request = {});

/// @brief weight_sizes() then ltxmps::plan_weights(plan, ...): where each component's weights live for this model
///        and request. load_ltx_model() loads by the decision.
void plan_model_weights(ltxmps::ExecutionPlan& plan, const TransformerConfig& transformer, const VaeConfig& vae,
                        const std::optional<T5Config>& text_encoder, const MemoryRequest& request = {});

}  // namespace ltxmps::pipeline
