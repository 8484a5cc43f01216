// Prints the plan this machine gets for the given loader settings.
//
//   ltxmps_print_plan [--json] [--device auto|cpu|cuda|cuda:N|mps] [--precision auto|fp32|fp16|bf16]
//                     [--no-vae-float32] [--cpu-offload] [--simulate cpu|cuda|mps|mps13]
#include <ltxmps/ltxmps.hpp>

#include <cstring>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  ltxmps::LoaderSettings settings;
  settings.device = ltxmps::DeviceRequest::from_environment().text;
  bool json = false;
  std::string simulate;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "ltxmps_print_plan: " << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--json") json = true;
    else if (arg == "--device") settings.device = value();
    else if (arg == "--precision") settings.precision = ltxmps::parse_precision(value());
    else if (arg == "--no-vae-float32") settings.vae_float32 = false;
    else if (arg == "--cpu-offload") settings.cpu_offload = true;
    else if (arg == "--simulate") simulate = value();
    else {
      std::cerr << "ltxmps_print_plan: unknown option '" << arg << "'\n";
      return 2;
    }
  }
  try {
    ltxmps::Capabilities caps = ltxmps::current_capabilities();
    if (simulate == "cpu") caps = ltxmps::Capabilities::cpu_only();
    else if (simulate == "cuda") caps = ltxmps::Capabilities::cuda(1, 9, 0);
    else if (simulate == "mps") caps = ltxmps::Capabilities::mps(15, 0);
    else if (simulate == "mps13") caps = ltxmps::Capabilities::mps(13, 0);
    else if (!simulate.empty()) {
      std::cerr << "ltxmps_print_plan: --simulate must be cpu, cuda, mps or mps13, got '" << simulate << "'\n";
      return 2;
    }
    const auto plan = ltxmps::resolve(settings, caps);
    std::cout << (json ? ltxmps::to_json(plan) + "\n" : ltxmps::to_text(plan));
  } catch (const ltxmps::Error& e) {
    std::cerr << "ltxmps_print_plan: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
