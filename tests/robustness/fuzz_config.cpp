// libFuzzer entry point for the config readers (built where the compiler is clang):
//   ./ltxmps_fuzz_config -max_len=4096 corpus/
// Each input is parsed as JSON (duplicate keys rejected) and given to every config parser: the transformer's,
// the VAE's, T5's and the scheduler's. Any outcome other than success or ltxmps::Error aborts, which libFuzzer
// reports as a crash.
#include "ltxmps/error.hpp"
#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/scheduler.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ltxmps::pipeline;
  try {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const auto json = ltxmps::pipeline::detail::parse_json_strict(text, "fuzz/config.json", "");
    const auto parse = [&](auto&& fn) {
      try {
        fn();
      } catch (const ltxmps::Error&) {
      }
    };
    parse([&] { TransformerConfig::from_json(json); });
    parse([&] { VaeConfig::from_json(json); });
    parse([&] { T5Config::from_json(json); });
    parse([&] { FlowMatchSchedulerConfig::from_json(json); });
  } catch (const ltxmps::Error&) {
    // Rejected input: the expected outcome for most fuzz inputs.
  } catch (...) {
    std::abort();
  }
  return 0;
}
