// The `ltxmps` command-line tool.
//
// Every subcommand is one entry of `commands()`: its path ("forward transformer"), a one-line help and
// a setup function that declares its options on a CLI11 subcommand and returns the function that runs
// it. To add a subcommand (forward vae-encode, forward t5, generate, plan), write those two functions
// and add a row to the table.
//
// Exit codes: 0 success, 2 usage error (bad or missing argument; the message names it), 128 + signal
// when SIGINT/SIGTERM stopped the run (130, 143), 1 any other error (message on stderr, through
// run_reporting_errors(): one formatter for every error a user can trigger).

#include "cli_common.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/transformer.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/plan.hpp"

#include <CLI/CLI.hpp>

#include <ATen/ATen.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <regex>
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
Runner setup_remove(CLI::App* cmd);            // cli/removal_commands.cpp
Runner setup_effects_mask(CLI::App* cmd);      // cli/removal_commands.cpp
Runner setup_synthetic_clip(CLI::App* cmd);    // cli/removal_commands.cpp
Runner setup_compose(CLI::App* cmd);           // cli/compose_commands.cpp

void add_runtime_options(CLI::App* cmd, RuntimeOptions& o) {
  o.device_option = cmd->add_option("--device", o.device,
                                    "auto, cpu, cuda, cuda:N, mps, xpu (default: $LTXMPS_DEVICE when set, else auto)")
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

void add_weight_check_option(CLI::App* cmd, RuntimeOptions& o) {
  cmd->add_flag("--skip-weight-check", o.skip_weight_check,
                "do not check loaded weights for NaN/Inf (one reduction per tensor; on by default)");
}

DeviceChoice requested_device(const RuntimeOptions& o) {
  if (o.device_option != nullptr && o.device_option->count() > 0) return {o.device, "--device"};
  const char* env = std::getenv(ltxmps::kDeviceEnvironmentVariable);
  if (env != nullptr && *env != '\0') return {env, ltxmps::kDeviceEnvironmentVariable};
  return {o.device, "--device"};
}

ltxmps::ExecutionPlan resolve_plan(const RuntimeOptions& o, ltxmps::LoaderSettings settings,
                                   const ltxmps::Capabilities& caps) {
  const auto choice = requested_device(o);
  settings.device = choice.text;
  ltxmps::ExecutionPlan plan;
  try {
    ltxmps::DeviceRequest::parse(choice.text);
    plan = ltxmps::resolve(settings, caps);
  } catch (const ltxmps::Error& e) {
    throw UsageError(choice.source + (choice.source == "--device" ? " " : "=") + choice.text + ": " + e.what());
  }
  if (choice.source != "--device")
    for (auto& d : plan.diagnostics)
      if (d.topic == "device") d.message += c10::str(" (from the environment variable ", choice.source, ")");
  return plan;
}

ltxmps::ExecutionPlan resolve_plan(const RuntimeOptions& o) {
  ltxmps::LoaderSettings settings;
  settings.precision = ltxmps::parse_precision(o.precision);
  auto plan = resolve_plan(o, settings, ltxmps::current_capabilities());
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

// ---------------------------------------------------------------------------------------------------
// Seeds, outputs, finiteness

namespace {

// Note [Seeds]
// CLI11 converts with strtoull, which clamps 2^64 and above to 2^64 - 1 and wraps "-1" to it: two different
// requests would silently give the same video. Seeds are therefore read digit by digit.
std::optional<uint64_t> parse_u64(const std::string& text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto digit = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    v = v * 10 + digit;
  }
  return v;
}

const char* const kSeedExpected = "expected an integer from 0 to 18446744073709551615 (2^64 - 1)";

}  // namespace

CLI::Validator seed_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return parse_u64(text) ? std::string() : c10::str(kSeedExpected, ", got '", text, "'");
      },
      "UINT64");
}

uint64_t parse_seed(const std::string& option, const std::string& text) {
  const auto v = parse_u64(text);
  if (!v) throw UsageError(c10::str(option, " ", text, ": ", kSeedExpected));
  return *v;
}

void check_outputs(const std::vector<ltxmps::pipeline::OutputPath>& outputs,
                   const std::vector<ltxmps::pipeline::InputPath>& inputs) {
  try {
    ltxmps::pipeline::check_output_paths(outputs, inputs);
  } catch (const ltxmps::Error& e) {
    throw UsageError(e.what());
  }
}

void require_finite_input(const at::Tensor& t, const std::string& option, const std::string& file,
                          const std::string& name) {
  ltxmps::pipeline::require_finite(t, c10::str(option, " ", file, ": tensor '", name, "'"));
}

void require_finite_output(const at::Tensor& t, const std::string& component, const std::string& name,
                           at::ScalarType dtype, const RuntimeOptions& o) {
  if (ltxmps::pipeline::all_finite(t)) return;
  const std::string why =
      o.skip_weight_check
          ? "; its inputs are finite, but its weights were not checked (--skip-weight-check): they may hold NaN/Inf"
          : c10::str("; its inputs and weights are finite, so the computation overflowed in ", c10::toString(dtype),
                     dtype == at::kFloat ? "" : " (try --precision fp32)");
  try {
    ltxmps::pipeline::require_finite(t, c10::str(component, " output '", name, "'"));
  } catch (const ltxmps::Error& e) {
    throw ltxmps::Error(e.what() + why);
  }
}

// ---------------------------------------------------------------------------------------------------
// Error reporting

namespace {

struct ActivityState {
  std::vector<std::pair<std::string, int>> stack;  // what, uncaught exceptions at entry
  std::string failed;  // the innermost activity an exception left (kept for the message)
};

ActivityState& activities() {
  static ActivityState state;
  return state;
}

bool debug_errors() {
  const char* v = std::getenv("LTXMPS_DEBUG");
  return v != nullptr && std::string(v) == "1";
}

// c10 appends "Exception raised from <function> at <file>:<line> (most recent call first):" or "frame #0: ..."
// lines (a backtrace) to its messages, also when they travel inside another exception's text; users get the
// message alone.
std::string without_backtrace(std::string text) {
  if (!debug_errors())
    for (const char* marker : {"Exception raised from ", "\nframe #0"}) {
      const auto pos = text.find(marker);
      if (pos != std::string::npos) text.erase(pos);
    }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

bool is_allocation_failure(const std::string& text) {
  for (const char* marker : {"Storage size calculation overflowed", "can't allocate memory", "not enough memory",
                             "out of memory", "Out of memory", "std::bad_alloc", "larger than max_size()"})
    if (text.find(marker) != std::string::npos) return true;
  return false;
}

std::string out_of_memory(const std::string& detail) {
  const auto& a = activities();
  const std::string what = !a.failed.empty() ? a.failed : a.stack.empty() ? "running the command" : a.stack.back().first;
  const std::string line = detail.substr(0, detail.find('\n'));
  return c10::str("out of memory while ", what, " (",
                  line, "): the request needs more memory than this machine has, or a size taken from the input or the "
                  "options is too large; make the request smaller");
}

}  // namespace

Activity::Activity(std::string what) { activities().stack.emplace_back(std::move(what), std::uncaught_exceptions()); }

Activity::~Activity() {
  auto& a = activities();
  // Unwinding: the exception is reported after every Activity is gone, so the innermost one is kept.
  if (std::uncaught_exceptions() > a.stack.back().second && a.failed.empty()) a.failed = a.stack.back().first;
  a.stack.pop_back();
}

std::string describe_exception(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const ltxmps::pipeline::Cancelled& e) {
    return e.what();
  } catch (const std::bad_alloc&) {
    return out_of_memory("std::bad_alloc");
  } catch (const std::length_error& e) {
    return out_of_memory(e.what());
  } catch (const c10::Error& e) {
    const auto text = debug_errors() ? std::string(e.what()) : without_backtrace(e.what_without_backtrace());
    if (!is_allocation_failure(text)) return text;
    return out_of_memory(without_backtrace(e.what_without_backtrace())) + (debug_errors() ? "\n" + text : "");
  } catch (const std::exception& e) {
    const auto text = without_backtrace(e.what());
    return is_allocation_failure(text) ? out_of_memory(text) : text;
  } catch (...) {
    return "an unknown error (not a C++ std::exception)";
  }
}

int run_reporting_errors(const std::function<int()>& run) {
  activities().failed.clear();
  try {
    return run();
  } catch (const UsageError& e) {
    std::cerr << "ltxmps: usage error: " << without_backtrace(e.what()) << "\n";
    return 2;
  } catch (const ltxmps::pipeline::Cancelled& e) {
    std::cerr << "ltxmps: " << e.what() << "\n";
    return 128 + e.signal();
  } catch (...) {
    std::cerr << "ltxmps: error: " << describe_exception(std::current_exception()) << "\n";
    return 1;
  }
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
  check_outputs({{"--output", o.output}}, {{"--inputs", o.inputs}, {"--model-dir", o.model_dir}});

  const auto plan = resolve_plan(o.runtime);
  TransformerRuntime runtime;
  runtime.device = plan.device;
  runtime.dtype = plan.precision.transformer.compute;
  runtime.attention.kernel = plan.attention.kernel;

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
      {{"remove"}, "remove an object (and its shadows, reflections) from a video: the background (OmnimatteZero)",
       setup_remove},
      {{"effects-mask"}, "grow an object's mask by its shadows and reflections from LTX-Video's attention",
       setup_effects_mask},
      {{"synthetic-clip"}, "draw a short clip with a moving object, its shadow and the object's mask (for trying remove)",
       setup_synthetic_clip},
      {{"compose"}, "an object and its effects as an RGBA layer, composed onto a new background", setup_compose},
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

namespace {

std::string subcommand_names(const CLI::App& level) {
  std::string names;
  for (const auto* sub : level.get_subcommands([](const CLI::App*) { return true; }))
    names += (names.empty() ? "" : ", ") + sub->get_name();
  return names;
}

// Note [Command words]
// CLI11 reports an unknown command as "A subcommand is required" (the word becomes an unexpected extra) and a
// missing one without naming the choices. The command words are checked here first: every word before the
// first option must name a command of the level reached so far.
void check_command_words(const CLI::App& app, int argc, char** argv) {
  const CLI::App* level = &app;
  std::string path;
  bool help = false;
  for (int i = 1; i < argc; ++i) help = help || std::string(argv[i]) == "-h" || std::string(argv[i]) == "--help";
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-' || subcommand_names(*level).empty()) break;
    const CLI::App* next = nullptr;
    for (const auto* sub : level->get_subcommands([](const CLI::App*) { return true; }))
      if (sub->get_name() == word) next = sub;
    if (next == nullptr)
      throw UsageError(c10::str("unknown command '", path, word, "' (", path.empty() ? "commands" : path + "commands",
                                ": ", subcommand_names(*level), ")"));
    level = next;
    path += word + " ";
  }
  if (!help && !subcommand_names(*level).empty())
    throw UsageError(c10::str(path.empty() ? "a command is required" : "'" + path.substr(0, path.size() - 1) +
                                                                           "' needs a command",
                              " (", subcommand_names(*level), "); ltxmps --help lists them"));
}

// CLI11's range validators print their bounds in full: "not in range 1.17549e-38 to 1.79769e+308", or 309 digits.
std::string reword_parse_error(std::string text) {
  static const std::regex range(R"(Value (\S*) not in range (\S+) to (\S+))");
  std::smatch m;
  if (!std::regex_search(text, m, range)) return text;
  double lo = 0, hi = 0;
  try {
    lo = std::stod(m[2].str());
    hi = std::stod(m[3].str());
  } catch (const std::exception&) {
    return text;
  }
  const bool open_top = hi > 1e18, positive = lo > 0 && lo < 1e-30;
  const std::string expected = open_top ? (positive ? std::string("a positive number") : c10::str("a number >= ", lo))
                                        : c10::str("a number from ", lo, " to ", hi);
  bool is_number = false;
  try {
    size_t used = 0;
    (void)std::stod(m[1].str(), &used);
    is_number = used == m[1].str().size();
  } catch (const std::exception&) {
  }
  return c10::str(m.prefix().str(), "'", m[1].str(), is_number ? "' is out of range" : "' is not a number",
                  ": expected ", expected, m.suffix().str());
}

}  // namespace

int main(int argc, char** argv) {
  ltxmps::pipeline::install_cancellation_handlers();
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
    check_command_words(app, argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ltxmps: usage error: " << reword_parse_error(e.what()) << "\nRun with --help for more information.\n";
    return 2;
  } catch (const UsageError& e) {
    std::cerr << "ltxmps: usage error: " << e.what() << "\n";
    return 2;
  }

  return run_reporting_errors([&] {
    for (const auto& [cmd, run] : runners) {
      if (!cmd->parsed()) continue;
      Activity activity("running '" + cmd->get_name() + "'");
      return run();
    }
    return 2;  // unreachable: require_subcommand
  });
}
