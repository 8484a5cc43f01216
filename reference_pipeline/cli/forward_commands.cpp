// `ltxmps forward transformer`: one LTXVideoTransformer3DModel forward on saved inputs (parity and debugging).

#include "cli_common.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/plan.hpp"

#include <CLI/CLI.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fs = std::filesystem;

namespace ltxmps::cli {

namespace {

// ---------------------------------------------------------------------------------------------------
// ltxmps forward transformer

struct ForwardTransformerOptions {
  std::string model_dir, inputs, output;
  RuntimeOptions runtime;
  std::vector<std::string> args;
};

int run_forward_transformer(const ForwardTransformerOptions& o) {
  using namespace ltxmps::pipeline;
  const auto named = parse_named_args(o.args, {"num_frames", "height", "width"}, "forward transformer");
  TransformerInputs in;
  if (named.count("num_frames")) in.num_frames = positive_int_arg("num_frames", named.at("num_frames"));
  if (named.count("height")) in.height = positive_int_arg("height", named.at("height"));
  if (named.count("width")) in.width = positive_int_arg("width", named.at("width"));
  check_outputs({{"--output", o.output}}, {{"--inputs", o.inputs}, {"--model-dir", o.model_dir}});

  const auto plan = resolve_plan(o.runtime);
  const TransformerRuntime runtime = transformer_runtime(plan);

  Activity reading("reading --inputs " + o.inputs);
  for (auto& [name, tensor] : load_all(o.inputs)) {
    require_finite_input(tensor, "--inputs", o.inputs, name);
    if (name == "hidden_states") in.hidden_states = tensor;
    else if (name == "encoder_hidden_states") in.encoder_hidden_states = tensor;
    else if (name == "timestep") in.timestep = tensor;
    else if (name == "encoder_attention_mask") in.encoder_attention_mask = tensor;
    else if (name == "video_coords") in.video_coords = tensor;
    else if (name == "rope_interpolation_scale") {
      LTXMPS_CHECK(tensor.numel() == 3, o.inputs, ": rope_interpolation_scale must have 3 values, got shape ",
                   tensor.sizes());
      const auto s = tensor.to(at::kDouble).flatten();
      in.rope_interpolation_scale = {s[0].item<double>(), s[1].item<double>(), s[2].item<double>()};
    } else {
      throw ltxmps::Error(o.inputs + ": unknown tensor '" + name +
                          "' (expected hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, "
                          "video_coords, rope_interpolation_scale)");
    }
  }
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"hidden_states", &in.hidden_states},
                                {"encoder_hidden_states", &in.encoder_hidden_states},
                                {"timestep", &in.timestep}})
    LTXMPS_CHECK(t->defined(), o.inputs, ": missing tensor '", name, "'");

  // A folder is a diffusers transformer; a file is an original Lightricks single-file checkpoint.
  Activity loading("loading the transformer from " + o.model_dir);
  const ltxmps::pipeline::WeightCheckGuard weight_check(!o.runtime.skip_weight_check);
  const auto model = fs::is_regular_file(o.model_dir) ? load_lightricks_transformer(o.model_dir, runtime)
                                                       : load_transformer(o.model_dir, runtime);
  ltxmps::pipeline::throw_if_cancelled();
  Activity running("running the transformer");
  const auto sample = model.forward(in).to(at::kCPU).to(at::kFloat).contiguous();
  require_finite_output(sample, "transformer", "sample", runtime.dtype, o.runtime);
  Activity writing("writing --output " + o.output);
  save_safetensors(o.output, {{"sample", sample}},
                   {{"device", plan.device.str()},
                    {"dtype", c10::toString(runtime.dtype)},
                    {"attention", ltxmps::to_string(runtime.attention.kernel)}});
  std::cout << "sample " << sample.sizes() << " (" << plan.device << ", " << c10::toString(runtime.dtype) << ", "
            << ltxmps::to_string(runtime.attention.kernel) << " attention) -> " << o.output << "\n";
  return 0;
}

}  // namespace

Runner setup_forward_transformer(CLI::App* cmd) {
  auto o = std::make_shared<ForwardTransformerOptions>();
  cmd->add_option("--model-dir", o->model_dir,
                  "diffusers transformer folder (config.json + weights) or a Lightricks .safetensors file")
      ->required();
  cmd->add_option("--inputs", o->inputs, "safetensors file with the forward arguments by diffusers' names")->required();
  cmd->add_option("--output", o->output, "safetensors file to write; the output is 'sample' (float32)")->required();
  add_runtime_options(cmd, o->runtime);
  add_weight_check_option(cmd, o->runtime);
  cmd->add_option("--arg", o->args, "scalar argument NAME=VALUE: num_frames, height, width (repeatable)");
  return [o] { return run_forward_transformer(*o); };
}

}  // namespace ltxmps::cli
