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
Runner setup_forward_transformer(CLI::App* cmd);  // cli/forward_commands.cpp
Runner setup_upsample(CLI::App* cmd);             // cli/upsample_commands.cpp

}  // namespace ltxmps::cli

namespace {

using namespace ltxmps::cli;

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
      {{"upsample"}, "upsample LTX-Video latents (or a video) with the latent upsampler: latents or frames out",
       setup_upsample},
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
  // CLI11's wording differs between releases: "Value V not in range LO to HI" (Debian 12) and
  // "Value V not in range [LO - HI]" (newer releases).
  static const std::regex range(R"(Value (\S*) not in range \[?(\S+?)(?: to | - )(\S+?)\]?(?=\s|$))");
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
