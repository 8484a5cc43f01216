// The diffusers LTX-Video folder loader: model_index.json, transformer/, vae/, scheduler/, text_encoder/,
// tokenizer/ (as DiffusionPipeline.save_pretrained writes them).

#include "ltxmps_pipeline/model.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/fp8.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/t5_streaming.hpp"
#include "ltxmps_pipeline/weight_streaming.hpp"

#include "ltxmps/error.hpp"

namespace ltxmps::pipeline {

namespace fs = std::filesystem;

namespace {

void require_path(const fs::path& path, bool folder, const fs::path& root, const std::string& what) {
  std::error_code ec;
  const bool exists = fs::exists(fs::symlink_status(path, ec)) || fs::exists(path, ec);
  const bool ok = folder ? fs::is_directory(path, ec) : fs::is_regular_file(path, ec);
  if (ok) return;
  const auto name = fs::relative(path, root, ec).string();
  LTXMPS_CHECK(!exists, root.string(), ": '", name, "' is ", describe_file_type(path), ", expected a ",
               folder ? "folder" : "regular file", " (", what, ")");
  LTXMPS_CHECK(false, root.string(), ": missing ", folder ? "subfolder '" : "file '", name, folder ? "/'" : "'", " (",
               what, ")");
}

std::string read_pipeline_class(const fs::path& root) {
  const auto index_file = root / "model_index.json";
  require_path(index_file, false, root, "the diffusers pipeline index written by save_pretrained");
  const auto index = read_json_file(index_file);
  LTXMPS_CHECK(index.is_object() && index.contains("_class_name") && index.at("_class_name").is_string(),
               index_file.string(), ": no '_class_name'");
  const auto cls = index.at("_class_name").get<std::string>();
  LTXMPS_CHECK(cls == "LTXPipeline" || cls == "LTXImageToVideoPipeline" || cls == "LTXConditionPipeline",
               index_file.string(), ": _class_name is '", cls,
               "', expected LTXPipeline, LTXImageToVideoPipeline or LTXConditionPipeline");
  return cls;
}

}  // namespace

LtxFolder inspect_ltx_folder(const fs::path& root, const LoadOptions& options) {
  LTXMPS_CHECK(fs::is_directory(root), "load_ltx_model: ", root.string(),
               " is not a folder (expected a diffusers LTX-Video folder with model_index.json)");
  LtxFolder folder;
  folder.root = root;
  folder.pipeline_class = read_pipeline_class(root);
  for (const std::string component : {"transformer", "vae", "scheduler", "text_encoder", "tokenizer"}) {
    if (!options.load_text_encoder && (component == "text_encoder" || component == "tokenizer")) continue;
    require_path(root / component, true, root, "a component of the LTX-Video pipeline");
  }
  require_path(root / "scheduler" / "scheduler_config.json", false, root, "the FlowMatchEulerDiscreteScheduler config");
  require_path(root / "transformer" / "config.json", false, root, "the LTXVideoTransformer3DModel config");
  require_path(root / "vae" / "config.json", false, root, "the AutoencoderKLLTXVideo config");
  if (options.load_text_encoder)
    require_path(root / "text_encoder" / "config.json", false, root, "the T5EncoderModel config");
  folder.scheduler = FlowMatchSchedulerConfig::from_file(root / "scheduler" / "scheduler_config.json");
  folder.transformer = TransformerConfig::from_file(root / "transformer" / "config.json");
  folder.vae = VaeConfig::from_file(root / "vae" / "config.json");
  return folder;
}

LtxModel load_ltx_model(const LtxFolder& folder, const ltxmps::ExecutionPlan& plan, const LoadOptions& options,
                        const ltxmps::DiagnosticSink& sink) {
  const auto& root = folder.root;
  check_fp8_attention_heads(plan, folder.transformer);
  LtxModel model;
  model.root = root;
  model.pipeline_class = folder.pipeline_class;
  model.scheduler = folder.scheduler;
  if (const auto ahead = streamed_blocks_ahead(plan)) {
    model.transformer = load_streamed_transformer(root / "transformer", transformer_runtime(plan), execution_device(plan),
                                                  *ahead, options.variant, folder.transformer);
    sink(streaming_diagnostic(model.transformer));
  } else {
    model.transformer = load_transformer(root / "transformer", transformer_runtime(plan), options.variant, folder.transformer);
  }
  for (const auto& d : fp8_diagnostics(model.transformer)) sink(d);
  model.vae = load_vae(root / "vae", vae_runtime(plan), options.variant, folder.vae);
  model.vae.tiling = vae_tiling(plan);
  if (options.load_text_encoder) {
    model.tokenizer = T5Tokenizer::load(root / "tokenizer");
    if (plan.weights.planned && plan.weights.text_encoder.mode == ltxmps::WeightMode::streamed)
      model.text_encoder = load_streamed_t5_encoder(root / "text_encoder", t5_runtime(plan), execution_device(plan),
                                                    options.variant);
    else
      model.text_encoder = load_t5_encoder(root / "text_encoder", t5_runtime(plan), options.variant);
  }
  sink(ltxmps::Diagnostic{ltxmps::Severity::info, "pipeline", "pipeline.loaded",
                          c10::str("loaded ", folder.pipeline_class, " from ", root.string(), " on ",
                                   home_device(plan).str(),
                                   options.load_text_encoder ? "" : " (without the text encoder)")});
  return model;
}

LtxModel load_ltx_model(const fs::path& root, const ltxmps::ExecutionPlan& plan, const LoadOptions& options,
                        const ltxmps::DiagnosticSink& sink) {
  return load_ltx_model(inspect_ltx_folder(root, options), plan, options, sink);
}

}  // namespace ltxmps::pipeline
