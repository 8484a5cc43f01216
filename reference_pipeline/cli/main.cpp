// The `ltxmps` command-line tool.
//
// Every subcommand is one entry of `commands()`: its path ("forward transformer"), a one-line help and
// a setup function that declares its options on a CLI11 subcommand and returns the function that runs
// it. To add a subcommand (forward vae-encode, forward t5, generate, plan), write those two functions
// and add a row to the table.
//
// Exit codes: 0 success, 2 usage error (bad or missing argument; the message names it), 1 any other
// error (message on stderr).

#include "cli_common.hpp"

#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/plan.hpp"

#include <CLI/CLI.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------
// Options shared by subcommands (UsageError, Runner, RuntimeOptions and these helpers are declared in
// cli_common.hpp for the other cli/*.cpp files)

namespace ltxmps::cli {

Runner setup_forward_vae_encode(CLI::App* cmd);  // cli/vae_commands.cpp
Runner setup_forward_vae_decode(CLI::App* cmd);  // cli/vae_commands.cpp
Runner setup_forward_t5(CLI::App* cmd);        // cli/t5_commands.cpp
Runner setup_encode_prompt(CLI::App* cmd);     // cli/t5_commands.cpp
Runner setup_generate(CLI::App* cmd);          // cli/generate_commands.cpp
Runner setup_plan(CLI::App* cmd);              // cli/generate_commands.cpp

void add_runtime_options(CLI::App* cmd, RuntimeOptions& o) {
  cmd->add_option("--device", o.device, "auto, cpu, cuda, cuda:N, mps, xpu")
      ->capture_default_str()
      ->check([](const std::string& text) {
        try {
          ltxmps::DeviceRequest::parse(text);
          return std::string();
        } catch (const ltxmps::Error& e) {
          return std::string(e.what());
        }
      });
  cmd->add_option("--precision", o.precision, "auto, fp32, bf16, fp16")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "fp16"}));
}

ltxmps::ExecutionPlan resolve_plan(const RuntimeOptions& o) {
  ltxmps::LoaderSettings settings;
  settings.device = o.device;
  settings.precision = ltxmps::parse_precision(o.precision);
  auto plan = ltxmps::resolve(settings, ltxmps::current_capabilities());
  for (const auto& d : plan.diagnostics)
    if (d.severity == ltxmps::Severity::warning) std::cerr << "ltxmps: warning: " << d.message << "\n";
  return plan;
}

/// `--arg NAME=VALUE` pairs; every NAME must be in `allowed`.
std::map<std::string, std::string> parse_named_args(const std::vector<std::string>& args,
                                                    const std::set<std::string>& allowed, const std::string& command) {
  std::map<std::string, std::string> out;
  for (const auto& arg : args) {
    const auto eq = arg.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError("--arg '" + arg + "': expected NAME=VALUE");
    const auto name = arg.substr(0, eq);
    if (!allowed.count(name)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      throw UsageError("--arg " + name + ": unknown argument of '" + command + "' (expected one of " + list + ")");
    }
    if (!out.emplace(name, arg.substr(eq + 1)).second) throw UsageError("--arg " + name + " is given twice");
  }
  return out;
}

int64_t positive_int_arg(const std::string& name, const std::string& value) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || v <= 0)
    throw UsageError("--arg " + name + "=" + value + ": expected a positive integer");
  return v;
}

}  // namespace ltxmps::cli

namespace {

using namespace ltxmps::cli;

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

  const auto plan = resolve_plan(o.runtime);
  TransformerRuntime runtime;
  runtime.device = plan.device;
  runtime.dtype = plan.precision.transformer.compute;
  runtime.attention.kernel = plan.attention.kernel;

  for (auto& [name, tensor] : load_all(o.inputs)) {
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
  const auto model = fs::is_regular_file(o.model_dir) ? load_lightricks_transformer(o.model_dir, runtime)
                                                       : load_transformer(o.model_dir, runtime);
  const auto sample = model.forward(in).to(at::kCPU).to(at::kFloat).contiguous();
  save_safetensors(o.output, {{"sample", sample}},
                   {{"device", plan.device.str()},
                    {"dtype", c10::toString(runtime.dtype)},
                    {"attention", ltxmps::to_string(runtime.attention.kernel)}});
  std::cout << "sample " << sample.sizes() << " (" << plan.device << ", " << c10::toString(runtime.dtype) << ", "
            << ltxmps::to_string(runtime.attention.kernel) << " attention) -> " << o.output << "\n";
  return 0;
}

Runner setup_forward_transformer(CLI::App* cmd) {
  auto o = std::make_shared<ForwardTransformerOptions>();
  cmd->add_option("--model-dir", o->model_dir,
                  "diffusers transformer folder (config.json + weights) or a Lightricks .safetensors file")
      ->required();
  cmd->add_option("--inputs", o->inputs, "safetensors file with the forward arguments by diffusers' names")->required();
  cmd->add_option("--output", o->output, "safetensors file to write; the output is 'sample' (float32)")->required();
  add_runtime_options(cmd, o->runtime);
  cmd->add_option("--arg", o->args, "scalar argument NAME=VALUE: num_frames, height, width (repeatable)");
  return [o] { return run_forward_transformer(*o); };
}

// ---------------------------------------------------------------------------------------------------
// The table of subcommands

struct Command {
  std::vector<std::string> path;  ///< groups then the command name
  std::string help;
  std::function<Runner(CLI::App*)> setup;
};

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {{"forward", "transformer"}, "run LTXVideoTransformer3DModel once on saved inputs", setup_forward_transformer},
      {{"forward", "vae-encode"}, "run AutoencoderKLLTXVideo.encode once on a saved video", setup_forward_vae_encode},
      {{"forward", "vae-decode"}, "run AutoencoderKLLTXVideo.decode once on saved latents", setup_forward_vae_decode},
      {{"forward", "t5"}, "run the T5 text encoder (T5EncoderModel) once on saved token ids", setup_forward_t5},
      {{"encode-prompt"}, "encode prompts with T5 as the LTX pipelines do and write a prompt cache", setup_encode_prompt},
      {{"generate"}, "generate a video (text-, image- or video-to-video); without --model-dir, a tiny random model",
       setup_generate},
      {{"plan"}, "print the execution plan this machine (or a simulated one) would get", setup_plan},
  };
  return table;
}

const std::map<std::string, std::string>& group_help() {
  static const std::map<std::string, std::string> help = {
      {"forward", "run one model component once on inputs saved as safetensors"}};
  return help;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ltxmps: the LTX-Video reference pipeline"};
  app.require_subcommand(1);
  std::map<std::string, CLI::App*> groups;
  std::vector<std::pair<CLI::App*, Runner>> runners;
  for (const auto& command : commands()) {
    CLI::App* parent = &app;
    std::string key;
    for (size_t i = 0; i + 1 < command.path.size(); ++i) {
      key += command.path[i] + " ";
      auto& group = groups[key];
      if (!group) {
        const auto help = group_help().find(command.path[i]);
        group = parent->add_subcommand(command.path[i], help == group_help().end() ? "" : help->second);
        group->require_subcommand(1);
      }
      parent = group;
    }
    auto* cmd = parent->add_subcommand(command.path.back(), command.help);
    runners.emplace_back(cmd, command.setup(cmd));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ltxmps: usage error: " << e.what() << "\nRun with --help for more information.\n";
    return 2;
  }

  try {
    for (const auto& [cmd, run] : runners)
      if (cmd->parsed()) return run();
    return 2;  // unreachable: require_subcommand
  } catch (const UsageError& e) {
    std::cerr << "ltxmps: usage error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ltxmps: error: " << e.what() << "\n";
    return 1;
  }
}
