#pragma once
/// @file model.hpp
/// @brief A loaded LTX-Video model (the components of a diffusers `LTXPipeline` folder) and its loaders.

#include "ltxmps_pipeline/scheduler.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/tokenizer.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <filesystem>
#include <optional>
#include <string>

namespace ltxmps::pipeline {

/// @brief A loaded LTX-Video model: diffusers folder (`model_index.json` + subfolders) or the embedded
///        random default. The text encoder may be absent (prompt cache) and is released after encoding.
struct LtxModel {
  std::filesystem::path root;                    ///< empty for the embedded default
  std::optional<T5Tokenizer> tokenizer;          ///< SentencePiece tokenizer (absent for the embedded default)
  std::optional<T5EncoderModel> text_encoder;    ///< T5; absent with a prompt cache or once released
  TransformerModel transformer;                  ///< the denoiser
  VaeModel vae;                                  ///< the video VAE
  FlowMatchSchedulerConfig scheduler;            ///< scheduler/scheduler_config.json
  bool random_weights = false;                   ///< true for the embedded default
  /// The embedded default tokenizes bytes (embedded_default_tokenize()) instead of SentencePiece pieces.
  bool byte_tokenizer = false;
  /// `_class_name` of model_index.json ("" for the embedded default): which diffusers pipeline the folder is.
  std::string pipeline_class;
};

/// @brief Options of load_ltx_model().
struct LoadOptions {
  bool load_text_encoder = true;                 ///< false when a prompt cache replaces it
  std::optional<std::string> variant;            ///< e.g. "bf16" weight files
};

/// @brief A diffusers LTX-Video folder read without its weights: `model_index.json` and the component
///        configs, each read once (load_ltx_model() uses them instead of reading them again).
struct LtxFolder {
  std::filesystem::path root;          ///< the folder holding model_index.json
  std::string pipeline_class;  ///< `_class_name` of model_index.json
  TransformerConfig transformer;       ///< transformer/config.json
  VaeConfig vae;                       ///< vae/config.json
  FlowMatchSchedulerConfig scheduler;  ///< scheduler/scheduler_config.json
};

/// @brief Checks a diffusers LTX-Video folder and parses its configs without loading weights: the folder,
///        `model_index.json` and its `_class_name`, the component subfolders and configs. Errors name the
///        missing file or subfolder and what was expected.
LtxFolder inspect_ltx_folder(const std::filesystem::path& root, const LoadOptions& options = {});

/// @brief Loads the weights of an inspected folder on the plan's device and dtypes, where the plan's weight
///        decisions say (plan_model_weights(), weight_plan.hpp): a streamed transformer's blocks go straight into
///        pinned host memory (Note [Streamed weights]). Without planned weights everything is resident, unless
///        stream_weights=on.
LtxModel load_ltx_model(const LtxFolder& folder, const ltxmps::ExecutionPlan& plan, const LoadOptions& options = {},
                        const ltxmps::DiagnosticSink& sink = ltxmps::null_sink());

/// @brief inspect_ltx_folder() then load_ltx_model().
LtxModel load_ltx_model(const std::filesystem::path& root, const ltxmps::ExecutionPlan& plan,
                        const LoadOptions& options = {}, const ltxmps::DiagnosticSink& sink = ltxmps::null_sink());

/// @brief A small deterministic random-weight LTX-Video model built in memory (no files); see
///        embedded_default.hpp for its sizes. For the CLI's embedded default.
LtxModel make_embedded_default_model(const ltxmps::ExecutionPlan& plan);

}  // namespace ltxmps::pipeline
